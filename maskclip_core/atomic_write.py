"""Writing output files atomically and never through a symlink.

A file is written to a temporary name in its own folder and renamed over the target: a reader sees the old
file or the whole new one, and a target that is a symlink is replaced by a regular file instead of having its
outside target overwritten (``rename`` replaces the link itself, never what it points at). Every writer of
the project goes through here: checkpoints, run logs, configs, records, the feature cache, exports, ablation
markers and tables.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; done once, at import, while single-threaded
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def default_file_mode() -> int:
    """Permissions a plainly created file gets: 0666 minus the process's umask (read at import)."""
    return 0o666 & ~_UMASK


@contextmanager
def written_temp(folder: str | os.PathLike[str], prefix: str,
                 write: Callable[[BinaryIO], None]) -> Iterator[Path]:
    """A temporary file in `folder` holding what ``write(file)`` wrote, flushed and fsynced, with open()'s mode.

    The caller moves it into place inside the ``with`` block (rename, or link when it must not overwrite);
    whatever is still there afterwards, on success or failure, is removed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())  # mkstemp makes 0600 files; outputs are for sharing
        yield Path(tmp)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, and rename it onto ``path``."""
    path = Path(path)
    with written_temp(path.parent, f".{path.name}.", write) as tmp:
        os.replace(tmp, path)
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; a symlink at ``path`` is replaced, not followed."""
    return write_bytes_atomic(path, lambda f: f.write(text.encode("utf-8")))
