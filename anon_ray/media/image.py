"""Photo read/write with OpenCV: orientation applied to pixels, nothing personal written back.

Reading sniffs the container from its magic bytes (never the extension) and parses just enough of
the header to learn the size and the EXIF orientation, so that a decompression bomb is refused
before any pixel buffer exists. The decode itself is `cv2.imdecode(IMREAD_UNCHANGED)`, which keeps
alpha and 16-bit samples and ignores EXIF orientation; the orientation parsed here is then applied
with numpy (TIFF excepted: OpenCV's TIFF decoder applies its orientation tag itself).

Writing re-encodes in the detected format with `cv2.imencode`, which emits no EXIF, XMP, IPTC, ICC
or GPS data. A JPEG named `.png` is written back as JPEG under its original name: the bytes stay
what every reader sniffs them to be, and the output path mirrors the input path exactly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from anon_ray.config import ImageConfig
from anon_ray.io.files import atomic_write_bytes
from anon_ray.media import MediaError

__all__ = ["FORMATS", "ImageLike", "LoadedImage", "MediaError", "decode_image",
           "encode_image", "read_image", "sniff_format", "write_image"]

FORMATS = ("jpeg", "png", "webp", "bmp", "tiff")
_EXT = {"jpeg": ".jpg", "png": ".png", "webp": ".webp", "bmp": ".bmp", "tiff": ".tiff"}
_ALPHA_FORMATS = ("png", "webp", "tiff", "bmp")  # formats OpenCV reads and writes with alpha
_DEEP_FORMATS = ("png", "tiff")  # formats OpenCV reads and writes with 16-bit samples
_EXIF_PREFIX = b"Exif\x00\x00"

# JPEG start-of-frame markers (every SOFn except DHT C4, JPG C8 and DAC CC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])

_TAG_WIDTH, _TAG_HEIGHT, _TAG_ORIENTATION, _TAG_EXTRA_SAMPLES = 256, 257, 274, 338


@dataclass(frozen=True)
class LoadedImage:
    """Pixels as shown to a viewer. `bit_depth` is the source's sample depth (8 or 16)."""

    rgb: np.ndarray  # uint8 (h, w, 3)
    alpha: np.ndarray | None  # uint8 (h, w), re-attached on write for formats that carry it
    format: str  # one of FORMATS, from the magic bytes
    bit_depth: int
    # A 16-bit PNG or TIFF's own samples as shown (uint16 (h, w, 3), alpha (h, w)): masked like
    # `rgb` (core/mask.apply_deep) and written instead of it, so 16 bits stay 16 bits; None else.
    deep: np.ndarray | None = None
    deep_alpha: np.ndarray | None = None


class ImageLike(Protocol):
    """Anything with LoadedImage's pixels and format (read-only attributes are fine)."""

    @property
    def rgb(self) -> np.ndarray: ...

    @property
    def alpha(self) -> np.ndarray | None: ...

    @property
    def format(self) -> str: ...


@dataclass(frozen=True)
class _Header:
    format: str
    width: int
    height: int
    orientation: int  # EXIF 1..8, still to be applied to the decoded pixels
    tiff_extra_samples: int = 0  # TIFF tag 338: 1 = associated (premultiplied) alpha, 2 = unassociated


def sniff_format(head: bytes) -> str | None:
    """The container of a file from its first bytes (12 are enough), or None if unsupported."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def _ifd0(tiff: bytes) -> tuple[dict[int, int], int]:
    """Single-valued SHORT/LONG tags of a TIFF structure's first IFD, and the next IFD's offset."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        raise ValueError("not a TIFF structure")
    (offset,) = struct.unpack_from(order + "I", tiff, 4)
    (count,) = struct.unpack_from(order + "H", tiff, offset)
    tags: dict[int, int] = {}
    for i in range(count):
        tag, kind, n = struct.unpack_from(order + "HHI", tiff, offset + 2 + 12 * i)
        if n == 1 and kind in (3, 4):
            (tags[tag],) = struct.unpack_from(order + ("H" if kind == 3 else "I"), tiff, offset + 10 + 12 * i)
    (next_ifd,) = struct.unpack_from(order + "I", tiff, offset + 2 + 12 * count)
    return tags, next_ifd


def _exif_orientation(blob: bytes) -> int:
    """Orientation from an EXIF blob; a malformed one counts as upright, as viewers treat it."""
    if blob.startswith(_EXIF_PREFIX):
        blob = blob[len(_EXIF_PREFIX):]
    try:
        value = _ifd0(blob)[0].get(_TAG_ORIENTATION, 1)
    except (ValueError, struct.error):
        return 1
    return value if 1 <= value <= 8 else 1


def _jpeg_header(d: bytes) -> _Header:
    pos, size, orientation = 2, None, 1
    seen_exif = False
    while pos + 4 <= len(d):
        if d[pos] != 0xFF:
            raise MediaError("corrupt JPEG: marker expected")
        marker = d[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_STANDALONE:
            pos += 2
            continue
        if marker == 0xDA:  # start of scan: the header is over
            # libjpeg decodes a truncated file "successfully", padding the missing rows with
            # grey; only the end-of-image marker after the scan shows the data is complete.
            if d.find(b"\xff\xd9", pos) < 0:
                raise MediaError("truncated JPEG: no end-of-image marker")
            break
        if marker == 0xD9:
            break
        (length,) = struct.unpack_from(">H", d, pos + 2)
        segment = d[pos + 4:pos + 2 + length]
        if marker == 0xE1 and not seen_exif and segment.startswith(_EXIF_PREFIX):
            orientation, seen_exif = _exif_orientation(segment), True
        elif marker in _JPEG_SOF and size is None and len(segment) >= 5:
            height, width = struct.unpack_from(">HH", segment, 1)
            size = (width, height)
        pos += 2 + length
    if size is None:
        raise MediaError("corrupt JPEG: no frame header")
    return _Header("jpeg", size[0], size[1], orientation)


def _png_header(d: bytes) -> _Header:
    length, kind = struct.unpack_from(">I4s", d, 8)
    if kind != b"IHDR":
        raise MediaError("corrupt PNG: IHDR missing")
    width, height = struct.unpack_from(">II", d, 16)
    orientation, pos, seen_idat = 1, 8, False
    # Every chunk is walked (a few thousand at most, no data read): libpng takes seconds to give
    # up on a chunk whose length claims gigabytes, so a 200-byte file could stall a worker.
    while pos + 8 <= len(d):
        length, kind = struct.unpack_from(">I4s", d, pos)
        if pos + 12 + length > len(d):
            raise MediaError(f"truncated PNG: chunk {kind!r} claims {length} bytes, {len(d) - pos - 12} remain")
        if kind == b"IEND":
            # OpenCV's reader stops only at an empty IEND: past one with data it reads on, and a
            # following chunk claiming 4 GB is then allocated (a 120-byte file took 4 GB, 3.5 s).
            if length:
                raise MediaError(f"corrupt PNG: IEND chunk carries {length} bytes")
            break
        if kind == b"IDAT":
            seen_idat = True
        elif kind == b"acTL":
            raise MediaError("animated PNG is not supported (only its first frame would be kept)")
        elif kind == b"eXIf" and not seen_idat:
            orientation = _exif_orientation(d[pos + 8:pos + 8 + length])
        pos += 12 + length
    return _Header("png", width, height, orientation)


def _webp_header(d: bytes) -> _Header:
    size, orientation, pos = None, 1, 12
    while pos + 8 <= len(d):
        kind, length = struct.unpack_from("<4sI", d, pos)
        data = d[pos + 8:pos + 8 + length]
        if kind in (b"ANIM", b"ANMF"):
            raise MediaError("animated WebP is not supported (only its first frame would be kept)")
        if kind == b"VP8X" and len(data) >= 10:
            size = (1 + int.from_bytes(data[4:7], "little"), 1 + int.from_bytes(data[7:10], "little"))
        elif kind == b"VP8 " and size is None and len(data) >= 10 and data[3:6] == b"\x9d\x01\x2a":
            width, height = struct.unpack_from("<HH", data, 6)
            size = (width & 0x3FFF, height & 0x3FFF)
        elif kind == b"VP8L" and size is None and len(data) >= 5 and data[0] == 0x2F:
            (bits,) = struct.unpack_from("<I", data, 1)
            size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        elif kind == b"EXIF":
            orientation = _exif_orientation(data)
        pos += 8 + length + (length & 1)  # chunks are padded to an even size
    if size is None:
        raise MediaError("corrupt WebP: no image chunk")
    return _Header("webp", size[0], size[1], orientation)


def _bmp_header(d: bytes) -> _Header:
    (dib,) = struct.unpack_from("<I", d, 14)
    if dib == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack_from("<HH", d, 18)
    else:
        width, height = struct.unpack_from("<ii", d, 18)  # negative height = top-down rows
    return _Header("bmp", abs(width), abs(height), 1)


def _tiff_header(d: bytes) -> _Header:
    tags, next_ifd = _ifd0(d)
    if next_ifd:
        raise MediaError("multi-page TIFF is not supported (only its first page would be kept)")
    if _TAG_WIDTH not in tags or _TAG_HEIGHT not in tags:
        raise MediaError("corrupt TIFF: no image size")
    width, height = tags[_TAG_WIDTH], tags[_TAG_HEIGHT]
    # OpenCV's TIFF decoder applies tag 274 itself (for every bit depth), so report the size it
    # will return and leave nothing for us to turn.
    if tags.get(_TAG_ORIENTATION, 1) in (5, 6, 7, 8):
        width, height = height, width
    return _Header("tiff", width, height, 1, tags.get(_TAG_EXTRA_SAMPLES, 0))


_PARSERS = {"jpeg": _jpeg_header, "png": _png_header, "webp": _webp_header, "bmp": _bmp_header,
            "tiff": _tiff_header}


def _read_header(data: bytes) -> _Header:
    fmt = sniff_format(data[:16])
    if fmt is None and data[:6] in (b"GIF87a", b"GIF89a"):
        # Re-encoding would requantize to a palette and drop every frame after the first.
        raise MediaError("GIF images are not supported (animated or not)")
    if fmt is None:
        raise MediaError("unsupported or unrecognized image format (by content)")
    try:
        return _PARSERS[fmt](data)
    except struct.error as exc:
        raise MediaError(f"truncated {fmt} header") from exc
    except ValueError as exc:
        raise MediaError(f"corrupt {fmt} header: {exc}") from exc


def _orient(a: np.ndarray, orientation: int) -> np.ndarray:
    """Turn stored pixels (h, w, ...) into displayed pixels for an EXIF orientation value."""
    if orientation == 2:
        a = a[:, ::-1]
    elif orientation == 3:
        a = a[::-1, ::-1]
    elif orientation == 4:
        a = a[::-1]
    elif orientation == 5:
        a = a.swapaxes(0, 1)
    elif orientation == 6:
        a = np.rot90(a, -1)
    elif orientation == 7:
        a = a.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        a = np.rot90(a, 1)
    return np.ascontiguousarray(a)


def _to_8bit(a: np.ndarray) -> tuple[np.ndarray, int]:
    if a.dtype == np.uint8:
        return a, 8
    if a.dtype == np.uint16:
        # Exact round(x * 255 / 65535) in integers.
        return ((a.astype(np.uint32) + 128) // 257).astype(np.uint8), 16
    raise MediaError(f"unsupported sample type {a.dtype} (only 8- and 16-bit integer images)")


def _split_channels(a: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """OpenCV's gray / gray+alpha / BGR / BGRA layouts -> RGB and optional alpha."""
    if a.ndim == 2:
        return cv2.cvtColor(a, cv2.COLOR_GRAY2RGB), None
    channels = a.shape[2]
    if channels == 1:
        return cv2.cvtColor(a[..., 0], cv2.COLOR_GRAY2RGB), None
    if channels == 2:
        return cv2.cvtColor(np.ascontiguousarray(a[..., 0]), cv2.COLOR_GRAY2RGB), np.ascontiguousarray(a[..., 1])
    if channels == 3:
        return cv2.cvtColor(a, cv2.COLOR_BGR2RGB), None
    if channels == 4:
        return cv2.cvtColor(a, cv2.COLOR_BGRA2RGB), np.ascontiguousarray(a[..., 3])
    raise MediaError(f"unsupported channel count {channels}")


def _tiff_premultiplied(header: _Header, decoded: np.ndarray) -> bool:
    """Whether OpenCV handed back colour multiplied by alpha.

    Its 8-bit TIFF path goes through libtiff's RGBA interface, which premultiplies unassociated
    alpha; other depths come raw, premultiplied only if the file stores associated alpha. Output is
    always written with straight alpha (what OpenCV's encoders and PNG/WebP mean by alpha).
    """
    if header.format != "tiff":
        return False
    return header.tiff_extra_samples == 1 or (header.tiff_extra_samples == 2 and decoded.dtype == np.uint8)


def _unpremultiply(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float32)[..., None]
    straight = np.where(a > 0, rgb.astype(np.float32) * 255.0 / np.maximum(a, 1.0), 0.0)
    return np.clip(np.rint(straight), 0, 255).astype(np.uint8)


def decode_image(data: bytes, cfg: ImageConfig) -> LoadedImage:
    """Decode an in-memory photo; see `read_image`."""
    header = _read_header(data)
    pixels = header.width * header.height
    if pixels <= 0:
        raise MediaError(f"{header.format} header claims an empty image")
    if pixels > cfg.max_pixels:
        raise MediaError(f"{header.width}x{header.height} {header.format} exceeds max_pixels={cfg.max_pixels}")
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise MediaError(f"{header.format} decode failed: {exc}") from exc
    if decoded is None:
        raise MediaError(f"{header.format} decode failed (corrupt or truncated data)")
    if decoded.shape[:2] != (header.height, header.width):
        raise MediaError(f"{header.format} decoded size {decoded.shape[1]}x{decoded.shape[0]} "
                         f"disagrees with its header {header.width}x{header.height}")
    premultiplied = _tiff_premultiplied(header, decoded)
    deep = deep_alpha = None
    if decoded.dtype == np.uint16 and header.format in _DEEP_FORMATS and not premultiplied:
        deep, deep_alpha = _split_channels(decoded)
        deep = _orient(deep, header.orientation)
        deep_alpha = None if deep_alpha is None else _orient(deep_alpha, header.orientation)
    decoded, bit_depth = _to_8bit(decoded)
    rgb, alpha = _split_channels(decoded)
    if premultiplied and alpha is not None:
        rgb = _unpremultiply(rgb, alpha)
    rgb = _orient(rgb, header.orientation)
    if alpha is not None:
        alpha = _orient(alpha, header.orientation)
    return LoadedImage(rgb=rgb, alpha=alpha, format=header.format, bit_depth=bit_depth, deep=deep,
                       deep_alpha=deep_alpha)


def read_image(path: str, cfg: ImageConfig) -> LoadedImage:
    """Read a photo as displayed (EXIF orientation applied), 8-bit RGB plus optional alpha.

    Raises MediaError for anything unreadable, unsupported (including animated PNG/WebP and
    multi-page TIFF, whose extra frames would otherwise be dropped silently) or larger than
    `cfg.max_pixels` (checked from the header, before decoding).
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise MediaError(f"cannot read {path}: {exc.strerror}") from exc
    return decode_image(data, cfg)


def encode_image(img: ImageLike, cfg: ImageConfig) -> bytes:
    """Encode in `img.format` with no metadata at all; alpha is kept where the format has it, and
    16-bit samples (`deep`, when the image has them) where the format has them."""
    if img.format not in FORMATS:
        raise MediaError(f"cannot encode format {img.format!r}")
    deep = getattr(img, "deep", None)
    deep = deep if img.format in _DEEP_FORMATS else None
    rgb, alpha = (img.rgb, img.alpha) if deep is None else (deep, getattr(img, "deep_alpha", None))
    if rgb.dtype != (np.uint8 if deep is None else np.uint16) or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise MediaError(f"expected (h, w, 3) pixels of 8 or 16 bits, got {rgb.dtype} {rgb.shape}")
    pixels = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if alpha is not None and img.format in _ALPHA_FORMATS:
        if alpha.shape != rgb.shape[:2] or alpha.dtype != rgb.dtype:
            raise MediaError(f"alpha {alpha.dtype} {alpha.shape} does not match pixels {rgb.dtype} {rgb.shape}")
        pixels = np.dstack([pixels, alpha])
    params = {
        "jpeg": [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality],
        "webp": [cv2.IMWRITE_WEBP_QUALITY, cfg.webp_quality],
    }.get(img.format, [])
    try:
        ok, buf = cv2.imencode(_EXT[img.format], pixels, params)
    except cv2.error as exc:
        raise MediaError(f"{img.format} encode failed: {exc}") from exc
    if not ok:
        raise MediaError(f"{img.format} encode failed")
    return buf.tobytes()


def write_image(path: str, img: ImageLike, cfg: ImageConfig) -> None:
    """Encode (see `encode_image`) and write atomically: `path` is complete or untouched."""
    atomic_write_bytes(path, encode_image(img, cfg))
