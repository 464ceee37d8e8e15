"""List the input into assets, lazily, and decide what kind each one is from its bytes.

Only regular files are ever opened: a FIFO or device named `x.mp4` would block the reader
forever (a hung job), so such entries and anything that cannot be stat-ed or read become assets
of kind "unknown", which the engine turns into error rows; `unusable_reason` says why. Symlinks
to files are followed, links to folders are not (a link to an ancestor would loop).

File names are kept exactly as the OS gives them, undecodable bytes included (surrogate escapes,
so the output mirrors the input name byte for byte); `display_path` is the form for manifests and
logs, whose text must be valid UTF-8.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator

from anon_ray.types import Asset

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".3gp"}
INTERNAL_DIR = "_anon_ray"
_SNIFF_BYTES = 512

log = logging.getLogger("anon_ray")


def sniff_kind(head: bytes, name: str) -> str:
    """Kind from magic bytes first: a JPEG named .mp4 is an image. Extension only as a fallback."""
    if head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"BM"):
        return "image"
    if head[:4] in (b"II*\x00", b"MM\x00*") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image"  # unsupported by the reader, which says so in the asset's error row
    if head[4:8] == b"ftyp" or head.startswith(b"\x1a\x45\xdf\xa3") or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return "video"
    if head[:1] == b"\x47" and len(head) > 188 and head[188:189] == b"\x47":
        return "video"
    if not head:
        return "unknown"
    ext = os.path.splitext(name)[1].lower()
    return "video" if ext in VIDEO_EXTS else "unknown"


def _read_head(path: str) -> bytes:
    """The first bytes of a regular file; OSError for anything else, without ever blocking."""
    # O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer that never comes.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return os.read(fd, _SNIFF_BYTES)
    finally:
        os.close(fd)


def local_kind(path: str) -> str:
    try:
        return sniff_kind(_read_head(path), path)
    except OSError:
        return "unknown"


_FILE_TYPES = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
               (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def unusable_reason(path: str) -> str:
    """Why a listed path of kind "unknown" gets no output, in words for its error row."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if exc.errno == errno.ENOENT:
            return "dangling symbolic link" if os.path.islink(path) else "file disappeared"
        return f"cannot stat: {exc.strerror}"
    for test, what in _FILE_TYPES:
        if test(mode):
            return f"not a regular file: {what}"
    try:
        head = _read_head(path)
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    if not head:
        return "empty file (0 bytes)"
    return "content is not a supported image or video (format sniffed from the bytes, not the name)"


def display_path(path: str) -> str:
    """`path` as valid UTF-8 text: undecodable name bytes shown as \\xNN, everything else unchanged."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _is_candidate(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTS | VIDEO_EXTS


def local_asset(path: str, rel: str) -> Asset:
    try:
        st = os.stat(path)
    except OSError:
        return Asset(path, rel, 0, "", "unknown")
    kind = local_kind(path) if stat.S_ISREG(st.st_mode) else "unknown"
    return Asset(path, rel, st.st_size, f"{st.st_size}-{st.st_mtime_ns}", kind)


def _unlistable(exc: OSError) -> None:
    # A folder that cannot be listed has no assets to give error rows to; say so loudly instead.
    log.warning("cannot list folder %s (%s): the files in it are not processed",
                display_path(str(exc.filename)), exc.strerror)


def list_local(root: str, exclude: str = "") -> Iterator[Asset]:
    """Walk `root` in sorted order, streaming; skip hidden files, our own output and its audit dir.

    Files whose extension is not media are not assets (sidecars, notes); media names that turn
    out unreadable or not regular files become failed assets downstream. A folder named like a
    media file (`clips.mp4/`) is a folder: walked, not listed.
    """
    root = os.path.abspath(root)
    exclude = os.path.abspath(exclude) if exclude else ""
    if os.path.isfile(root):
        yield local_asset(root, os.path.basename(root))
        return
    if not os.path.isdir(root):
        raise FileNotFoundError(f"input not found: {display_path(root)}")
    for dirpath, dirnames, filenames in os.walk(root, onerror=_unlistable):
        dirnames[:] = sorted(
            d for d in dirnames
            if d != INTERNAL_DIR and not d.startswith(".") and os.path.join(dirpath, d) != exclude
        )
        for name in sorted(filenames):
            if _is_candidate(name):
                path = os.path.join(dirpath, name)
                yield local_asset(path, os.path.relpath(path, root))
