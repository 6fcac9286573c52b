"""Files appear whole or not at all: write to a temporary file beside the target, then rename.

The temporary file of ``DIR/NAME`` is always ``DIR/.NAME.tmp``: a run killed while writing leaves at
most that one file per target, and the next write of the same target reuses (truncates) it, so a
rerun of the same command leaves no stray file. :func:`remove_stale_temps` clears them up front.
Write failures for want of space or permission say so in words, naming the file
(docs/robustness.md).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
from pathlib import Path
from typing import Iterable, Iterator

TMP_SUFFIX = ".tmp"

# errnos of a full disk / quota, and of a location we may not write
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary file beside ``path`` that :func:`atomic_path` writes: ``.NAME.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def remove_stale_temps(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Remove the temporary files a killed run left in ``folder`` -- of the targets ``names``, or of
    every target when ``None`` -- including the ``.NAME.XXXXXXXX.tmp`` of earlier versions of this
    module. Returns what was removed. Call it only where no other process writes the same targets."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    wanted = None if names is None else set(names)
    removed = []
    for p in folder.iterdir():
        n = p.name
        if not (n.startswith(".") and n.endswith(TMP_SUFFIX)) or not p.is_file():
            continue
        stem = n[1 : -len(TMP_SUFFIX)]  # NAME or NAME.XXXXXXXX
        if wanted is not None and stem not in wanted and stem.rsplit(".", 1)[0] not in wanted:
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    return removed


# ---------------------------------------------------------------------------- kill points (tests)
_kill_counts: dict[str, int] = {}


def kill_point(name: str) -> None:
    """SIGKILL this process when ``FLAT_KILL_AT`` names this point: ``NAME`` (the first time it is
    reached) or ``NAME@N`` (the N-th time). For the tests of what a kill leaves behind; a no-op
    otherwise."""
    want = os.environ.get("FLAT_KILL_AT")
    if not want:
        return
    point, _, nth = want.partition("@")
    if point != name:
        return
    _kill_counts[name] = _kill_counts.get(name, 0) + 1
    if _kill_counts[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------- errors in words
class WriteError(OSError):
    """A write that failed for want of space or permission; the message names the file."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def describe_os_error(exc: BaseException, path: str | os.PathLike | None = None) -> str | None:
    """A one-line description of a full disk or a permission problem, naming the path; ``None`` if
    ``exc`` is neither."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    where = exc.filename if exc.filename is not None else path
    where = f"{where}: " if where is not None else ""
    if exc.errno in _FULL:
        return f"{where}disk full (no space left on device)"
    if exc.errno == errno.EROFS:
        return f"{where}read-only file system, cannot write here"
    if exc.errno in _DENIED:
        return f"{where}permission denied, cannot write here"
    return None


def _looks_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 64 * 2**20
    except OSError:
        return False


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was; a full disk or
    a permission problem is raised as :class:`WriteError` naming ``path``.

    >>> with atomic_path("out/vol.h5") as tmp:
    ...     with h5py.File(tmp, "w") as f: ...
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_TRUNC: a temp left by a killed run is reused; 0o666 & ~umask: ordinary permissions
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
        kill_point(f"open:{path.name}")
        yield tmp
        kill_point(f"write:{path.name}")
        with open(tmp, "rb+") as f:  # durable before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        # torch.save to a path reports a short write as RuntimeError("... unexpected pos ..."):
        # judge it by the free space left, before the temporary file gives it back
        full = isinstance(exc, RuntimeError) and "unexpected pos" in str(exc) and _looks_full(path.parent)
        with contextlib.suppress(OSError):
            tmp.unlink()
        if full:
            raise WriteError(errno.ENOSPC, f"{path}: disk full (no space left on device)") from None
        msg = describe_os_error(exc, path)
        if msg is not None and not isinstance(exc, WriteError):
            raise WriteError(exc.errno, msg) from None
        raise


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """One JSON object per line, written whole or not at all."""
    import json

    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def check_writable_dir(folder: str | os.PathLike, what: str) -> None:
    """Refuse, naming ``what`` (e.g. ``OUT``), a folder that cannot be created or written: checked
    before any work, and without creating anything."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: exists and is not a folder ({what})")
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{folder}: cannot be created, {probe} is a file, not a folder ({what})")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{folder}: permission denied, {probe} is not writable ({what})")
    if shutil.disk_usage(probe).free == 0:
        raise ValueError(f"{folder}: disk full (no space left on device) ({what})")


def check_writable_file(path: str | os.PathLike, what: str) -> None:
    """Refuse, naming ``what`` (e.g. ``--json``), a file that cannot be written (it is a folder,
    or its folder cannot be created or written), before any work and without creating anything."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path}: is a folder, expected a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{what} {path}: permission denied, the file is not writable")
    check_writable_dir(path.parent, f"the folder of {what} {path.name}")
