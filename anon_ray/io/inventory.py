"""List every file under the input, lazily, and decide what each one is from its bytes.

Every file gets an asset, so that every file gets a manifest row: one the job can process (kind
"image" or "video"), one that cannot be read or does not hold what its media name says (kind
"unknown": the engine turns it into an error row; `unusable_reason` says why), or one it skips
with a reason (`Asset.skip`): a format recognised but not processed, content that is not media,
or a link leading outside the input. A data-protection officer must be able to tell an archive
that is done from one that is silently incomplete.

Only regular files are ever opened: a FIFO or device named `x.mp4` would block the reader
forever (a hung job). Symlinks to files inside the input are followed, links to folders are not
(a link to an ancestor would loop; a folder linked from inside is listed at its own path).

File names are kept exactly as the OS gives them, undecodable bytes included (surrogate escapes,
so the output mirrors the input name byte for byte); `display_path` is the form for manifests and
logs, whose text must be valid UTF-8.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import stat
from collections.abc import Iterator

from anon_ray.types import Asset

IMAGE_EXTS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff"}
VIDEO_EXTS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".3gp"}
# Names of media formats told by their content (processed, remuxed or skipped): content that is
# not recognised under such a name is an error (a broken file), not "not media".
UNSUPPORTED_EXTS = {".gif", ".heic", ".heif", ".avif", ".jp2", ".jxl", ".mpg", ".mpeg", ".vob", ".m2v",
                    ".wmv", ".asf", ".flv", ".mxf", ".ogv", ".rm", ".rmvb", ".dng", ".cr2", ".cr3", ".nef", ".arw"}
INTERNAL_DIR = "_anon_ray"
SNIFF_BYTES = 512

# Asset.skip classes: the manifest's error_class of a row with status "skipped".
UNSUPPORTED_FORMAT, NOT_MEDIA, LINK_OUTSIDE_INPUT = "unsupported_format", "not_media", "link_outside_input"

# ISO base media brands of still pictures: an `ftyp` box alone does not make a video.
_FTYP_PICTURES = {b"heic": "HEIF/HEIC image", b"heix": "HEIF/HEIC image", b"heim": "HEIF/HEIC image",
                  b"heis": "HEIF/HEIC image", b"hevc": "HEIF/HEIC image sequence", b"hevx": "HEIF/HEIC image sequence",
                  b"mif1": "HEIF image", b"msf1": "HEIF image sequence", b"avif": "AVIF image",
                  b"avis": "AVIF image sequence", b"crx ": "Canon CR3 raw photo"}
# Leading bytes of media formats recognised but not processed: no reader or no writer for them yet.
_UNSUPPORTED_MAGIC = (
    (b"GIF87a", "GIF image"), (b"GIF89a", "GIF image"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000 image"), (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL image"), (b"\xff\x0a", "JPEG XL image"),
    (b"\x00\x00\x01\xb3", "MPEG-1/2 video elementary stream"),
    (b"OggS", "Ogg"), (b".RMF", "RealMedia"),
)
# Videos read and masked, but written as Matroska under the input's name + REMUX_SUFFIX: their own
# containers have no writer here (MPEG-PS) or hold no H.264 (ASF, FLV's own codecs; MXF's muxer
# takes only broadcast codecs), and Matroska holds their audio (MP2, AC-3, WMA, MP3, PCM) as it is. The manifest's output_changes says so.
_REMUXED_MAGIC = (
    (b"\x00\x00\x01\xba", "MPEG program stream (MPG, VOB)"),
    (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "ASF (WMV)"), (b"FLV\x01", "Flash video (FLV)"),
    (b"\x06\x0e\x2b\x34\x02\x05\x01\x01", "MXF"),
)
_REMUXED_FORMATS = frozenset(fmt for _, fmt in _REMUXED_MAGIC)
REMUX_SUFFIX = ".mkv"

log = logging.getLogger("anon_ray")


def sniff(head: bytes, name: str) -> tuple[str, str]:
    """(kind, format) from magic bytes first: a JPEG named .mp4 is an image. Kind "unsupported"
    names its format; the extension decides only for content no magic matches ("video" for a
    video name, which the probe then judges, else "unknown")."""
    if head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n") or head.startswith(b"BM"):
        return "image", ""
    if head[:4] in (b"II*\x00", b"MM\x00*") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image", ""
    for magic, fmt in _UNSUPPORTED_MAGIC:
        if head.startswith(magic):
            return "unsupported", fmt
    for magic, fmt in _REMUXED_MAGIC:
        if head.startswith(magic):
            return "video", fmt
    if head[4:8] == b"ftyp":
        picture = _FTYP_PICTURES.get(head[8:12])
        return ("unsupported", picture) if picture else ("video", "")
    if head.startswith(b"\x1a\x45\xdf\xa3") or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return "video", ""
    if head[:1] == b"\x47" and len(head) > 188 and head[188:189] == b"\x47":
        return "video", ""
    if head and extension(name) in VIDEO_EXTS:
        return "video", ""
    return "unknown", ""


def extension(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def media_name(name: str) -> bool:
    """The name says image or video, supported or not."""
    return extension(name) in IMAGE_EXTS | VIDEO_EXTS | UNSUPPORTED_EXTS


def _read_head(path: str) -> bytes:
    """The first bytes of a regular file; OSError for anything else, without ever blocking."""
    # O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer that never comes.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        return os.read(fd, SNIFF_BYTES)
    finally:
        os.close(fd)


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


def sorted_out(asset: Asset, fmt: str, not_media: str) -> Asset:
    """`asset` with its skip set from its sniffed kind: an unsupported format is skipped, content
    that is no media under a name that is no media name too (`not_media`: why, in words); a video
    in a container written as Matroska gets REMUX_SUFFIX."""
    if asset.kind == "video" and fmt in _REMUXED_FORMATS:
        return dataclasses.replace(asset, output_suffix=REMUX_SUFFIX)
    if asset.kind == "unsupported":
        return dataclasses.replace(asset, skip=UNSUPPORTED_FORMAT, skip_detail=fmt)
    if asset.kind == "unknown" and not media_name(asset.relpath):
        return dataclasses.replace(asset, skip=NOT_MEDIA, skip_detail=not_media)
    return asset


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def local_asset(path: str, rel: str, root: str = "") -> Asset:
    """`root`: the real path of the input folder; a link whose target lies outside it is skipped."""
    if root and os.path.islink(path) and not _inside(os.path.realpath(path), root):
        what = "folder" if os.path.isdir(path) else "file"
        return Asset(path, rel, 0, "", "unknown", skip=LINK_OUTSIDE_INPUT,
                     skip_detail=f"symbolic link to a {what} outside the input folder")
    try:
        st = os.stat(path)
    except OSError:
        return sorted_out(Asset(path, rel, 0, "", "unknown"), "", unusable_reason(path))
    try:
        kind, fmt = sniff(_read_head(path), path) if stat.S_ISREG(st.st_mode) else ("unknown", "")
    except OSError:  # a file that cannot be read keeps its size and version, as one that can
        kind, fmt = "unknown", ""
    asset = Asset(path, rel, st.st_size, f"{st.st_size}-{st.st_mtime_ns}", kind)
    return sorted_out(asset, fmt, unusable_reason(path) if kind == "unknown" else "")


def _unlistable(exc: OSError) -> None:
    # A folder that cannot be listed has no assets to give error rows to; say so loudly instead.
    log.warning("cannot list folder %s (%s): the files in it are not processed",
                display_path(str(exc.filename)), exc.strerror)


def list_local(root: str, exclude: str = "") -> Iterator[Asset]:
    """Walk `root` in sorted order, streaming: every file, hidden ones included, but our own
    output and its audit dir. A folder named like a media file (`clips.mp4/`) is a folder: walked,
    not listed; a link to a folder outside the input is listed (skipped), one inside is not (its
    files are listed at their own path)."""
    root = os.path.abspath(root)
    exclude = os.path.abspath(exclude) if exclude else ""
    if os.path.isfile(root):
        yield local_asset(root, os.path.basename(root))
        return
    if not os.path.isdir(root):
        raise FileNotFoundError(f"input not found: {display_path(root)}")
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root, onerror=_unlistable):
        links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))
                 and not _inside(os.path.realpath(os.path.join(dirpath, d)), real_root)]
        dirnames[:] = sorted(
            d for d in dirnames
            if d != INTERNAL_DIR and d not in links and os.path.join(dirpath, d) != exclude
        )
        for name in sorted(filenames + links):
            path = os.path.join(dirpath, name)
            yield local_asset(path, os.path.relpath(path, root), real_root)
