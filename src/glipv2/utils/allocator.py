"""glibc's allocator told to keep freed memory for reuse: a CPU forward allocates and frees
activation buffers of 50–140 MB (fusion scores, Swin's MLP, DyConv maps) per layer. By default glibc
hands every block above its mmap threshold (dynamic, at most 32 MiB) to the kernel on free, so the
next layer's buffer is page-faulted in and zeroed again; on `glip_t` at 800×1333 that was about a
tenth of the forward (`docs/cpu_speed.md`). With a 1 GiB threshold and no trimming those blocks stay
in the heap and are reused. The numbers computed do not change; the process keeps its peak heap
instead of returning it between layers (the high-water RSS measured the same).

A process-wide setting, so the library never applies it on import: the commands (`glipv2 predict`,
`eval`, `serve`, `train`) and the benchmarks call `reuse_freed_memory()` at start; a Python caller may
call it once too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt(3) parameters
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 30  # blocks above this still come from (and go back to) the kernel
OLD_GLIBC_MMAP_THRESHOLD_MAX = 32 << 20
TRIM_THRESHOLD_BYTES = (1 << 31) - 1  # mallopt takes an int: the largest it accepts

_applied = False


def reuse_freed_memory() -> bool:
    """Apply the setting (once per process). Returns whether it is in effect: False off Linux or
    where the C library is not glibc (musl, macOS), which are left as they are."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no libc to load, or one without mallopt (musl)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # glibc before 2.35 refuses thresholds above 32 MiB (half its heap size): take that then
    threshold = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) or bool(
        mallopt(M_MMAP_THRESHOLD, OLD_GLIBC_MMAP_THRESHOLD_MAX)
    )
    trim = bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    _applied = threshold and trim
    return _applied
