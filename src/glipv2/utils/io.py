"""File I/O shared by every layer: atomic writes (a crash leaves the previous file or none, never
half a file) and JSON reading with one-line errors that name the file.

An atomic write goes to a hidden temporary file in the destination folder (same file system, so
the final `os.replace` is atomic) whose name carries the process id and a random token (two
processes, or two threads, writing the same file never share a temporary file); the parent folder
is created; when writing fails the temporary file is removed and the destination is left as it was.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def temporary_sibling(path: str | os.PathLike[str]) -> Path:
    """A fresh hidden name beside `path`: `.NAME.PID.TOKEN.tmp` (nothing is created)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path` for a writer that takes a path (`torch.save`,
    `safetensors.torch.save_file`, `PIL.Image.save`); on a normal exit the file written there
    replaces `path` in one `os.replace`, on an exception it is removed and `path` is untouched.
    The parent folder is created first.

        with atomic_path(out / "model.safetensors") as tmp:
            save_file(state, str(tmp))
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write `data` to `path` atomically (flushed to disk before the rename); returns `path`."""
    # "xb": the temporary name is fresh, so creating it exclusively is a check, not a race; unlike
    # tempfile.mkstemp (mode 0600) the file gets the usual umask permissions
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically, encoded with `encoding`; "\\n" is written as is on every
    platform (same text, same bytes). Returns `path`."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike[str], data: Any, *, end: str = "", **dumps: Any) -> Path:
    """Write `json.dumps(data, **dumps) + end` to `path` atomically: each caller keeps its own
    formatting (`indent=1`, `sort_keys=True, separators=(",", ":")`, ...; `end="\\n"` for a
    trailing newline). Returns `path`."""
    return atomic_write_text(path, json.dumps(data, **dumps) + end)


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """A JSON file's content, with one-line errors naming the file (`what`: e.g. "annotation").

    A missing file is a `FileNotFoundError` ("PATH: no such annotation file"); a file that is not
    JSON, or cannot be read (a folder, no permission), a `ValueError`. The bytes are decoded as
    JSON allows (UTF-8, -16 or -32, with or without a byte order mark)."""
    try:
        return json.loads(Path(path).read_bytes())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such {what} file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: {what} file is not a JSON file ({err})") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read the {what} file ({err.strerror or err})") from None
