"""Local file primitives: the one atomic writer, hashing, quiet removal.

Everything the job writes to a local disk lands under its final name only once it is complete
(invariant I1): bytes go to a hidden temporary file beside the target, are fsynced, then renamed,
and the rename is fsynced too. Object-store writes have their own atomicity (io/storage.py).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
from typing import BinaryIO

TMP_MARKER = ".anon-tmp-"


def temp_path_beside(path: str) -> str:
    """A unique hidden name in the target's directory, keeping its extension.

    The same directory makes os.replace atomic (one filesystem); the extension lets muxers pick
    the container format from the name; the marker lets cleanup find leftovers of a crash.
    """
    return f"{temp_prefix(path)}{secrets.token_hex(6)}{os.path.splitext(path)[1]}"


def temp_prefix(path: str) -> str:
    """What every temporary name for `path` begins with, to find a killed writer's leftovers."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name[:100]}{TMP_MARKER}")


def fsync_dir(folder: str) -> None:
    """Persist a rename: without this a crash can forget the new directory entry."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms/filesystems cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_file(tmp: str, path: str) -> None:
    """fsync a finished temporary file and move it onto `path` atomically."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def atomic_write(path: str, write: Callable[[BinaryIO], None], mode: int | None = None) -> None:
    """Call `write` on a new file so that readers of `path` see the old file or the complete new one.

    Permissions follow the umask unless `mode` is given (models shared read-only with other users).
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_path_beside(path)
    try:
        # O_EXCL: never follow or clobber something planted under the temporary name.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            if mode is not None:
                os.fchmod(fh.fileno(), mode)
        commit_file(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes, mode: int | None = None) -> None:
    atomic_write(path, lambda fh: fh.write(data), mode)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
