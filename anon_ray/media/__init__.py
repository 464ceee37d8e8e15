"""Media I/O: photos (image), videos (packets, video), orientation (rotation).

Submodules are imported explicitly (`from anon_ray.media import video`) so that image-only users
never load PyAV. Everything written here lands under its final name only once it is complete
(invariant I1): bytes go to a hidden temporary file beside the target, are fsynced, then renamed.
"""

from __future__ import annotations

import os
import secrets

TMP_MARKER = ".anon-tmp-"


class MediaError(Exception):
    """A file cannot be read or written faithfully; the asset must get no output."""


def temp_path_beside(path: str) -> str:
    """A unique hidden name in the target's directory, keeping its extension.

    The same directory makes os.replace atomic (one filesystem); the extension lets muxers pick
    the container format from the name; the marker lets cleanup find leftovers of a crash.
    """
    folder, name = os.path.split(os.path.abspath(path))
    ext = os.path.splitext(name)[1]
    return os.path.join(folder, f".{name}{TMP_MARKER}{secrets.token_hex(6)}{ext}")


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


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the complete new one."""
    tmp = temp_path_beside(path)
    try:
        # O_EXCL: never follow or clobber something planted under the temporary name.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        commit_file(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
