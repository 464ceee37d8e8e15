"""List the input into assets, lazily, and decide what kind each one is from its bytes."""

from __future__ import annotations

import os
from collections.abc import Iterator

from .types import Asset

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".3gp"}
INTERNAL_DIR = "_anon_ray"


def sniff_kind(head: bytes, name: str) -> str:
    """Kind from magic bytes first: a JPEG named .mp4 is an image. Extension only as a fallback."""
    if head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"BM"):
        return "image"
    if head[:4] in (b"II*\x00", b"MM\x00*") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if head[4:8] == b"ftyp" or head.startswith(b"\x1a\x45\xdf\xa3") or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return "video"
    if head[:1] == b"\x47" and len(head) > 188 and head[188:189] == b"\x47":
        return "video"
    if not head:
        return "unknown"
    ext = os.path.splitext(name)[1].lower()
    return "video" if ext in VIDEO_EXTS else "unknown"


def local_kind(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return sniff_kind(fh.read(512), path)
    except OSError:
        return "unknown"


def _is_candidate(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTS | VIDEO_EXTS


def list_local(root: str, exclude: str = "") -> Iterator[Asset]:
    """Walk `root` in sorted order, streaming; skip hidden files, our own output and its audit dir.

    Files whose extension is not media are not assets (sidecars, notes); media files that turn out
    unreadable become failed assets downstream.
    """
    root = os.path.abspath(root)
    exclude = os.path.abspath(exclude) if exclude else ""
    if os.path.isfile(root):
        st = os.stat(root)
        name = os.path.basename(root)
        yield Asset(root, name, st.st_size, f"{st.st_size}-{st.st_mtime_ns}", local_kind(root))
        return
    if not os.path.isdir(root):
        raise FileNotFoundError(f"input not found: {root}")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames
            if d != INTERNAL_DIR and not d.startswith(".") and os.path.join(dirpath, d) != exclude
        )
        for name in sorted(filenames):
            if not _is_candidate(name):
                continue
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except OSError:
                st = None
            rel = os.path.relpath(path, root)
            if st is None:
                yield Asset(path, rel, 0, "", "unknown")
            else:
                yield Asset(path, rel, st.st_size, f"{st.st_size}-{st.st_mtime_ns}", local_kind(path))
