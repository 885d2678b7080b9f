"""File I/O shared by every layer: atomic writes (a crash leaves the previous file or none, never
half a file) and JSON reading with one-line errors that name the file.

An atomic write goes to a hidden temporary file in the destination folder (same file system, so
the final `os.replace` is atomic) whose name carries the process id and a random token (two
processes, or two threads, writing the same file never share a temporary file); the parent folder
is created; when writing fails the temporary file is removed and the destination is left as it was.

`check_destination` is what every command that writes runs before any work: a destination that is,
or would overwrite, one of the command's own inputs, a symlink / FIFO / device where a regular file
or folder should go, or a folder that cannot be written is refused with a one-line `DestinationError`.
`interruptible` turns SIGINT and SIGTERM into an `Interrupted` exception, so a long command can write
what it finished before it exits.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import stat
import threading
from collections.abc import Callable, Iterable, Iterator
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
    # os.replace would swap a symlink, FIFO or device for a regular file: refuse, the user put it there
    check_not_special(path)
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


# --- destinations ----------------------------------------------------------------------------------
class DestinationError(ValueError):
    """A destination a command must not write to (one line, naming the path and why)."""


class MissingPath(FileNotFoundError, ValueError):
    """A local path that does not exist (a `ValueError` too, for callers that catch those)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def looks_like_path(name: str) -> bool:
    """Whether a model name is meant as a local path rather than a hub id `owner/name` or a preset:
    it starts with `.`, `/` or `~`, has a backslash or more than one `/`, or its first component
    exists here (`runs/model` with a folder `runs/`). Hub ids never start with a dot."""
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1:
        return True
    return "/" in name and Path(name.split("/", 1)[0]).exists()


def check_not_special(path: str | os.PathLike[str], what: str = "") -> None:
    """Refuse a symlink (even a dangling one), FIFO, socket or device at `path`: writing there would
    replace the link, block on the FIFO, or write to the device. A missing path is fine."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    kind = (
        "a symlink"
        if stat.S_ISLNK(mode)
        else "a FIFO"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else None
    )
    if kind is not None:
        raise DestinationError(f"{what + ' ' if what else ''}{path}: is {kind}; refusing to write there")


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(os.path.expanduser(path)))


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_destination(
    path: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]] = (),
    what: str = "",
    *,
    folder: bool = False,
) -> Path:
    """Refuse, before any work, a destination that would destroy something; returns `path`.

    File destination (`folder=False`): refused when it is a folder, a symlink, FIFO, socket or
    device, the same file as one of `inputs` after resolving symlinks (an input folder stands for
    the files under it that exist), or in a folder that cannot be written (probed by creating and
    removing a hidden file in the nearest existing folder above it; nothing else is created).
    Folder destination (`folder=True`, e.g. `--viz DIR`): refused when it is an existing non-folder,
    a symlink, when an input lies inside it or is it, or when it cannot be written.
    `what` names the option in the message (`--out`). Raises `DestinationError`."""
    path = Path(path)
    label = f"{what} {path}" if what else str(path)
    try:
        mode: int | None = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:  # e.g. a component that is a file: "Not a directory"
        raise DestinationError(f"{label}: cannot write there ({err.strerror or err})") from None
    if mode is not None:
        if stat.S_ISLNK(mode):
            raise DestinationError(f"{label}: is a symlink; refusing to write through or replace it")
        check_not_special(path, what)
        if folder and not stat.S_ISDIR(mode):
            raise DestinationError(f"{label}: exists and is not a folder")
        if not folder and stat.S_ISDIR(mode):
            raise DestinationError(f"{label}: is a folder; give a file name")
    target = _resolved(path)
    for source in inputs:
        resolved = _resolved(source)
        if folder:
            if _within(resolved, target):
                raise DestinationError(f"{label}: holds the input {source}; choose another folder")
        elif resolved == target or (mode is not None and resolved.is_dir() and _within(target, resolved)):
            raise DestinationError(f"{label}: is the input {source}; refusing to overwrite it")
    check_writable_folder(path if folder else path.parent, label)
    return path


def check_writable_folder(folder: str | os.PathLike[str], label: str) -> None:
    """Raise `DestinationError` unless a file can be created in `folder` or, when it does not exist
    yet, in the nearest existing folder above it (where it would be created)."""
    probe_in = Path(folder)
    while not probe_in.exists() and not probe_in.is_symlink() and probe_in != probe_in.parent:
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise DestinationError(f"{label}: cannot write there ({probe_in} is not a folder)")
    probe = temporary_sibling(probe_in / "probe")
    try:
        with open(probe, "xb"):
            pass
        probe.unlink()
    except OSError as err:
        raise DestinationError(f"{label}: cannot write there ({err.strerror or err})") from None


# --- interruptions ---------------------------------------------------------------------------------
class Interrupted(BaseException):
    """SIGINT or SIGTERM inside `interruptible()`: a BaseException like KeyboardInterrupt, so that
    the `except Exception` of per-item error handling lets it through. `exit_code` is the shell's
    128 + signal number (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum


@contextmanager
def stop_signals_handled_by(handler: Callable[[int, object], None]) -> Iterator[None]:
    """Inside, SIGINT and SIGTERM call `handler(signum, frame)`; the previous handlers are back on
    exit. Outside the main thread, where handlers cannot be set, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def interruptible() -> Iterator[None]:
    """Inside, SIGINT and SIGTERM raise `Interrupted` (at the next Python bytecode: a forward pass
    in progress finishes first)."""

    def handler(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    with stop_signals_handled_by(handler):
        yield
