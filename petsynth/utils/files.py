"""Atomic writes: a reader, a killed process or a full disk never leaves a half-written file or folder.

- :func:`atomic_file`: one file, all or nothing ("w": a temporary file renamed into place; "x": the same, but
  never replacing an existing file; "a": appended to, cut back to its old length on failure).
- :func:`atomic_write_text`: one text file.
- :func:`atomic_directory`: a folder built under a temporary name and renamed into place.

An OSError raised while writing (no space left, no permission) names the final path that failed, never a
temporary name: a file inside a folder being built is named by its place in the finished folder, and an
error that names nothing (a full disk reports ENOSPC on a write, without a file name) names the file or folder
being written.

The temporary files and folders ``tempfile`` makes are private (0600 / 0700); what is moved into place gets
the permissions a plain ``open`` or ``mkdir`` would have given it (0666 / 0777 less the process umask), so
a dataset or an output folder is as readable as the user's umask says; ``private=True`` keeps a file 0600
(the pseudonym key)."""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

#: The temporary folders :func:`atomic_directory` is building in this thread: a file written inside one is
#: synced to disk when the folder is moved into place, not once more on its own.
_BUILDING: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("building", default=())


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _renamed(err: OSError, path: Path, tmp: Path | None = None) -> OSError:
    """``err``, raised while writing ``path`` under the temporary name ``tmp``, as an error naming the final
    path (a new OSError, whose class follows the errno: PermissionError for EACCES): a temporary file or
    folder (under ``tmp``, or one of ``path``'s ``.NAME.*.tmp`` names) by its place under ``path``, no name at
    all by ``path``. ``err`` itself when it names anything else (an input read meanwhile)."""
    if err.errno is None or not isinstance(err.filename, str | bytes | os.PathLike | None):
        return err
    name = None if err.filename is None else Path(os.fsdecode(err.filename))
    if name is None:
        final = path
    elif tmp is not None and name.is_relative_to(tmp):
        final = path / name.relative_to(tmp)
    elif name.parent == path.parent and name.name.startswith(f".{path.name}.") and name.name.endswith(".tmp"):
        final = path
    else:
        return err
    return OSError(err.errno, err.strerror, str(final)).with_traceback(err.__traceback__)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb", *, private: bool = False) -> Iterator:
    """Open ``path`` for writing, all or nothing (module docstring). ``mode``: "w"/"wb" (replace), "x"/"xb"
    (create; FileExistsError if ``path`` exists when the file is complete), "a"/"ab" (append); text is UTF-8.
    ``private``: the file stays readable by its owner only (0600)."""
    path = Path(path)
    synced_later = any(path.is_relative_to(folder) for folder in _BUILDING.get())
    if mode.startswith("a"):
        with _appending(path, mode, sync=not synced_later) as fh:
            yield fh
        return
    if mode[0] not in "wx":
        raise ValueError(f"atomic_file writes ('w', 'x' or 'a' modes), got mode {mode!r}")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w" + mode[1:], encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            if not synced_later:
                os.fsync(fh.fileno())
        if not private:
            os.chmod(tmp, 0o666 & ~current_umask())
        if mode[0] == "x":
            os.link(tmp, path)  # FileExistsError rather than replacing a file made meanwhile
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
        if not synced_later:
            _fsync_dir(path.parent)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(err, OSError):
            raise _renamed(err, path, Path(tmp) if tmp else None) from None
        raise


@contextlib.contextmanager
def _appending(path: Path, mode: str, sync: bool) -> Iterator:
    """:func:`atomic_file` in append mode: ``path`` itself, cut back to its old length (or removed, if it was
    new) when anything fails."""
    size = path.stat().st_size if path.exists() else None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            if sync:
                os.fsync(fh.fileno())
    except BaseException as err:
        with contextlib.suppress(OSError):
            if size is None:
                path.unlink()
            else:
                os.truncate(path, size)
        if isinstance(err, OSError):
            raise _renamed(err, path) from None
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text to ``path`` atomically."""
    with atomic_file(path, "w") as fh:
        fh.write(text)


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``path`` and move it into place on success.

    A killed process leaves at most a hidden ``.NAME.*.tmp`` folder, never a partial ``path``; the next build
    of the same ``path`` removes it. Any failure removes the temporary folder; an OSError names the final path
    of what failed (module docstring). Files written inside with :func:`atomic_file` are synced to disk once,
    here, when the folder is complete.
    With ``overwrite``, an existing ``path`` is replaced (moved aside, then deleted).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a killed earlier build of this folder
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        token = _BUILDING.set((*_BUILDING.get(), tmp))
        try:
            yield tmp
        finally:
            _BUILDING.reset(token)
        os.chmod(tmp, 0o777 & ~current_umask())
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.{os.getpid()}.old")
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise _renamed(err, path, tmp) from None
        raise
