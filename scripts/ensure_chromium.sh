#!/usr/bin/env bash
# Make sure Debian's chromium is there for the browser test (tests/test_serve_browser.py).
# Installed with apt when we are root; otherwise we only say so, and the test itself fails
# loudly under CI (and skips, loudly, elsewhere).
set -uo pipefail
CHROMIUM="${GLIPV2_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "installing Debian's chromium for the browser test (apt-get) ..."
    if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/tmp/glipv2-chromium-install.log 2>&1; then
        exit 0
    fi
    echo "WARNING: apt-get install chromium failed (log: /tmp/glipv2-chromium-install.log)" >&2
else
    echo "WARNING: no $CHROMIUM and not root: install Debian's chromium (apt-get install chromium)" \
        "or set GLIPV2_CHROMIUM; the browser test cannot run without it" >&2
fi
exit 0
