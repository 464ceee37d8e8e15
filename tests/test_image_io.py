"""Photo I/O on real encoded files: orientation, colour models, metadata stripping, bombs, atomicity.

Pillow only builds the inputs and inspects the outputs; the library reads and writes with OpenCV.
"""

from __future__ import annotations

import io
import os
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps, TiffImagePlugin
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio

from anon_ray.config import ImageConfig
from anon_ray.io.files import TMP_MARKER, atomic_write_bytes
from anon_ray.media import MediaError
from anon_ray.media.image import LoadedImage, encode_image, read_image, sniff_format, write_image

CFG = ImageConfig()
XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="Phone of Jane Doe"/>'
       b"</rdf:RDF></x:xmpmeta>")


def _pattern(h: int = 60, w: int = 80) -> np.ndarray:
    """Asymmetric blocks, so every flip and rotation gives a different array."""
    a = np.zeros((h, w, 3), np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[h // 2:, w // 2:] = (0, 0, 255)
    a[: h // 6, w - w // 8:] = (0, 255, 0)
    a[h - 5:, :7] = (250, 250, 0)
    return a


def _photo() -> np.ndarray:
    return skdata.astronaut()[::2, ::2].copy()  # 256x256 natural image


def _exif(orientation: int = 1, gps: bool = False) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "ACME"  # Make
    exif[0x0110] = "Phone 12 Pro"  # Model
    if gps:
        exif[0x8825] = {1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)}
    return exif


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _write(tmp_path, name: str, payload: bytes) -> str:
    path = os.path.join(tmp_path, name)
    with open(path, "wb") as fh:
        fh.write(payload)
    return path


def _encoded_with_orientation(fmt: str, orientation: int, rgb: np.ndarray) -> bytes:
    img = Image.fromarray(rgb)
    if fmt == "TIFF":
        return _save(img, fmt, tiffinfo={0x0112: orientation})
    extra = {"lossless": True} if fmt == "WEBP" else {"quality": 100} if fmt == "JPEG" else {}
    return _save(img, fmt, exif=_exif(orientation).tobytes(), **extra)


def _no_metadata(payload: bytes) -> None:
    assert b"Exif" not in payload
    assert b"http://ns.adobe.com/xap" not in payload
    assert b"Jane Doe" not in payload and b"ACME" not in payload and b"Phone 12" not in payload
    assert b"ICC_PROFILE" not in payload and b"iCCP" not in payload
    img = Image.open(io.BytesIO(payload))
    for key in ("exif", "xmp", "icc_profile", "XML:com.adobe.xmp"):
        assert key not in img.info, key
    exif = img.getexif()
    if img.format == "TIFF":  # baseline TIFF tags live in IFD0 too; nothing beyond them may
        assert not set(exif) & {0x010F, 0x0110, 0x8825, 0x8769, 0x02BC, 0x83BB, 0x8773}
    else:
        assert len(exif) == 0


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_every_exif_orientation_matches_pillow(tmp_path, fmt):
    rgb = _pattern()
    for orientation in range(1, 9):
        payload = _encoded_with_orientation(fmt, orientation, rgb)
        got = read_image(_write(tmp_path, f"o{orientation}", payload), CFG)
        want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(payload)).convert("RGB")))
        assert got.rgb.shape == want.shape, (fmt, orientation)
        assert np.abs(got.rgb.astype(int) - want).max() <= (2 if fmt == "JPEG" else 0), (fmt, orientation)


def test_orientation_6_is_a_clockwise_turn(tmp_path):
    rgb = _pattern()
    got = read_image(_write(tmp_path, "six.png", _encoded_with_orientation("PNG", 6, rgb)), CFG)
    np.testing.assert_array_equal(got.rgb, np.rot90(rgb, -1))  # the top-left corner lands top-right
    assert got.format == "png" and got.bit_depth == 8 and got.alpha is None


def test_jpeg_with_gps_xmp_icc_is_written_without_any_of_it(tmp_path):
    icc = b"\x00" * 128 + b"fake-icc-profile-of-a-calibrated-device"
    rgb = _photo()
    payload = _save(Image.fromarray(rgb), "JPEG", quality=95, exif=_exif(6, gps=True).tobytes(),
                    icc_profile=icc, xmp=XMP)
    assert b"Exif" in payload and b"http://ns.adobe.com/xap" in payload  # the input does carry them
    src = _write(tmp_path, "gps.jpg", payload)
    loaded = read_image(src, CFG)
    dst = os.path.join(tmp_path, "out.jpg")
    write_image(dst, loaded, CFG)
    out = open(dst, "rb").read()
    _no_metadata(out)
    assert sniff_format(out) == "jpeg"
    back = read_image(dst, CFG)  # no orientation tag any more: pixels are already upright
    assert back.rgb.shape == (256, 256, 3)
    assert peak_signal_noise_ratio(np.rot90(rgb, -1), back.rgb) > 33


@pytest.mark.parametrize("fmt,kwargs", [
    ("PNG", {}),
    ("WEBP", {"quality": 90}),
    ("TIFF", {}),
])
def test_other_formats_drop_metadata(tmp_path, fmt, kwargs):
    img = Image.fromarray(_photo())
    if fmt == "TIFF":
        info = TiffImagePlugin.ImageFileDirectory_v2()
        info[0x010F] = "ACME"
        info[0x0110] = "Phone 12 Pro"
        info[0x02BC] = XMP
        payload = _save(img, fmt, tiffinfo=info)
    else:
        payload = _save(img, fmt, exif=_exif(1, gps=True).tobytes(), xmp=XMP, **kwargs)
    assert b"ACME" in payload
    loaded = read_image(_write(tmp_path, "in", payload), CFG)
    _no_metadata(encode_image(loaded, CFG))


@pytest.mark.parametrize("fmt,ext,min_psnr", [
    ("jpeg", ".jpg", 38.0), ("webp", ".webp", 34.0), ("png", ".png", None), ("tiff", ".tif", None),
    ("bmp", ".bmp", None),
])
def test_round_trip_fidelity(tmp_path, fmt, ext, min_psnr):
    rgb = _photo()
    pil_fmt = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG", "tiff": "TIFF", "bmp": "BMP"}[fmt]
    extra = {"quality": 100} if fmt == "jpeg" else {"lossless": True} if fmt == "webp" else {}
    first = read_image(_write(tmp_path, "in" + ext, _save(Image.fromarray(rgb), pil_fmt, **extra)), CFG)
    dst = os.path.join(tmp_path, "out" + ext)
    write_image(dst, first, CFG)
    second = read_image(dst, CFG)
    assert second.format == fmt
    if min_psnr is None:
        np.testing.assert_array_equal(second.rgb, first.rgb)
    else:
        assert peak_signal_noise_ratio(first.rgb, second.rgb) > min_psnr


def test_sixteen_bit_png_and_tiff_keep_16_bits(tmp_path):
    """Detection and masking get an 8-bit copy; the 16-bit samples are kept and written back."""
    import cv2  # the test builds 16-bit colour files with OpenCV; Pillow cannot write them

    rng = np.random.default_rng(1)
    rgb16 = rng.integers(0, 65536, size=(40, 50, 3), dtype=np.uint16)
    want = np.rint(rgb16 / 257.0).astype(np.uint8)
    for ext in (".png", ".tiff"):
        ok, buf = cv2.imencode(ext, rgb16[..., ::-1].copy())
        assert ok
        got = read_image(_write(tmp_path, "deep" + ext, buf.tobytes()), CFG)
        assert got.bit_depth == 16 and got.rgb.dtype == np.uint8
        np.testing.assert_array_equal(got.rgb, want)
        np.testing.assert_array_equal(got.deep, rgb16)
        again = cv2.imdecode(np.frombuffer(encode_image(got, CFG), np.uint8), cv2.IMREAD_UNCHANGED)
        assert again.dtype == np.uint16
        np.testing.assert_array_equal(again[..., ::-1], rgb16)
    gray16 = rng.integers(0, 65536, size=(40, 50), dtype=np.uint16)
    got = read_image(_write(tmp_path, "gray16.png", _save(Image.fromarray(gray16), "PNG")), CFG)
    assert got.bit_depth == 16
    np.testing.assert_array_equal(got.rgb, np.repeat(np.rint(gray16 / 257.0).astype(np.uint8)[..., None], 3, 2))
    np.testing.assert_array_equal(got.deep, np.repeat(gray16[..., None], 3, 2))


def test_sixteen_bit_masks_leave_no_source_bits_under_them():
    from anon_ray.config import MaskConfig
    from anon_ray.core import mask
    from anon_ray.types import FACE, Detections

    rng = np.random.default_rng(2)
    deep = rng.integers(0, 65536, size=(120, 160, 3), dtype=np.uint16)
    rgb = ((deep.astype(np.uint32) + 128) // 257).astype(np.uint8)
    dets = Detections.build([0], [[40, 30, 90, 90]], [0.9], FACE)
    masked = mask.apply(rgb.copy(), dets, MaskConfig())
    out = mask.apply_deep(deep, masked, dets, MaskConfig())
    reach = mask.mask_weight((120, 160), dets, MaskConfig()) > 0
    assert reach.any() and not reach.all()
    np.testing.assert_array_equal(out[~reach], deep[~reach])  # untouched: every bit of the source
    np.testing.assert_array_equal(out[reach], masked[reach].astype(np.uint16) * 257)  # only the mask's


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    payload = _save(Image.fromarray(_photo()).convert("CMYK"), "JPEG", quality=100)
    got = read_image(_write(tmp_path, "cmyk.jpg", payload), CFG)
    want = np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))
    assert got.rgb.shape == want.shape and got.alpha is None
    assert np.abs(got.rgb.astype(int) - want).max() <= 3


def test_grayscale_and_palette_become_rgb(tmp_path):
    rgb = _pattern()
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    got = read_image(_write(tmp_path, "g.png", _save(Image.fromarray(gray), "PNG")), CFG)
    np.testing.assert_array_equal(got.rgb, np.repeat(gray[..., None], 3, 2))
    pal = Image.fromarray(rgb).convert("P")
    got = read_image(_write(tmp_path, "p.png", _save(pal, "PNG")), CFG)
    np.testing.assert_array_equal(got.rgb, np.asarray(pal.convert("RGB")))
    payload = _save(pal, "PNG", transparency=0)
    got = read_image(_write(tmp_path, "pt.png", payload), CFG)
    want = np.asarray(Image.open(io.BytesIO(payload)).convert("RGBA"))
    assert 0 < np.count_nonzero(want[..., 3] == 0) < want[..., 3].size
    np.testing.assert_array_equal(got.alpha, want[..., 3])
    np.testing.assert_array_equal(got.rgb, want[..., :3])


@pytest.mark.parametrize("fmt,ext,rgb_tol", [("PNG", ".png", 0), ("WEBP", ".webp", 0), ("TIFF", ".tif", 2)])
def test_alpha_is_kept_and_reattached(tmp_path, fmt, ext, rgb_tol):
    rgba = np.dstack([_pattern(), np.tile(np.linspace(0, 255, 80).astype(np.uint8), (60, 1))])
    rgba[..., 3][:, :3] = 255
    extra = {"lossless": True} if fmt == "WEBP" else {}
    src = read_image(_write(tmp_path, "a" + ext, _save(Image.fromarray(rgba, "RGBA"), fmt, **extra)), CFG)
    np.testing.assert_array_equal(src.alpha, rgba[..., 3])
    visible = rgba[..., 3] > 64  # premultiplied TIFF storage loses colour precision under low alpha
    assert np.abs(src.rgb.astype(int) - rgba[..., :3])[visible].max() <= rgb_tol
    dst = os.path.join(tmp_path, "out" + ext)
    write_image(dst, LoadedImage(rgb=src.rgb, alpha=src.alpha, format=src.format, bit_depth=8), CFG)
    back = Image.open(dst)
    assert back.mode in ("RGBA", "RGBa")
    np.testing.assert_array_equal(np.asarray(back.convert("RGBA"))[..., 3], rgba[..., 3])


def test_format_comes_from_content_not_name(tmp_path):
    src = _write(tmp_path, "photo.png", _save(Image.fromarray(_photo()), "JPEG", quality=90))
    loaded = read_image(src, CFG)
    assert loaded.format == "jpeg"
    write_image(src, loaded, CFG)  # same name, still JPEG inside
    assert sniff_format(open(src, "rb").read(16)) == "jpeg"


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_decompression_bomb_is_refused_from_the_header(tmp_path):
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 4096)) \
        + _png_chunk(b"IEND", b"")
    path = _write(tmp_path, "bomb.png", bomb)
    tracemalloc.start()
    t0 = time.perf_counter()
    with pytest.raises(MediaError, match="max_pixels"):
        read_image(path, CFG)
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 0.5 and peak < 10_000_000
    small = _write(tmp_path, "ok.png", _save(Image.fromarray(_pattern()), "PNG"))
    with pytest.raises(MediaError, match="max_pixels"):
        read_image(small, ImageConfig(max_pixels=60 * 80 - 1))
    assert read_image(small, ImageConfig(max_pixels=60 * 80)).rgb.shape == (60, 80, 3)


def test_png_with_data_in_its_iend_is_refused_before_decoding(tmp_path):
    # OpenCV reads on past an IEND that carries data; the next chunk's 4 GB claim was allocated.
    good = _save(Image.fromarray(_pattern()), "PNG")
    head = good[:good.index(b"IEND") - 4]
    forged = head + _png_chunk(b"IEND", b"x" * 26) + struct.pack(">I", 0xFFFFFFFF) + b"IEND" + b"\0" * 4
    tracemalloc.start()
    with pytest.raises(MediaError, match="IEND"):
        read_image(_write(tmp_path, "forged.png", forged), CFG)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 10_000_000
    trailing = good + struct.pack(">I", 0xFFFFFFFF) + b"IEND" + b"\0" * 4  # bytes after a proper IEND: read
    assert read_image(_write(tmp_path, "trailing.png", trailing), CFG).rgb.shape == (60, 80, 3)


@pytest.mark.parametrize("name,payload", [
    ("empty.jpg", b""),
    ("text.png", b"hello, this is not an image at all"),
    ("anim.gif", _save(Image.fromarray(_pattern()), "GIF")),
    ("cut.jpg", _save(Image.fromarray(_photo()), "JPEG", quality=90)[:3000]),
    ("cut.png", _save(Image.fromarray(_photo()), "PNG")[:5000]),
    ("cut.webp", _save(Image.fromarray(_photo()), "WEBP", quality=90)[:2000]),
    ("cut.tif", _save(Image.fromarray(_photo()), "TIFF")[:5000]),
    ("header.png", b"\x89PNG\r\n\x1a\n\x00\x00"),
])
def test_unreadable_input_raises_media_error(tmp_path, name, payload):
    with pytest.raises(MediaError):
        read_image(_write(tmp_path, name, payload), CFG)


def test_missing_file_raises_media_error(tmp_path):
    with pytest.raises(MediaError):
        read_image(os.path.join(tmp_path, "nope.jpg"), CFG)


def test_multi_frame_inputs_are_refused_not_truncated(tmp_path):
    frames = [Image.fromarray(_pattern()), Image.fromarray(_pattern()[::-1].copy())]
    anim = io.BytesIO()
    frames[0].save(anim, "PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(MediaError, match="animated"):
        read_image(_write(tmp_path, "a.png", anim.getvalue()), CFG)
    pages = io.BytesIO()
    frames[0].save(pages, "TIFF", save_all=True, append_images=frames[1:])
    with pytest.raises(MediaError, match="multi-page"):
        read_image(_write(tmp_path, "p.tif", pages.getvalue()), CFG)


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = os.path.join(tmp_path, "x.jpg")
    atomic_write_bytes(path, b"old")
    loaded = LoadedImage(rgb=_pattern(), alpha=None, format="jpeg", bit_depth=8)

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_image(path, loaded, CFG)
    monkeypatch.undo()
    assert open(path, "rb").read() == b"old"
    with pytest.raises(MediaError):
        write_image(path, LoadedImage(rgb=_pattern().astype(np.float32), alpha=None, format="jpeg", bit_depth=8),
                    CFG)
    assert open(path, "rb").read() == b"old"
    write_image(path, loaded, CFG)
    assert sniff_format(open(path, "rb").read(16)) == "jpeg"
    assert [n for n in os.listdir(tmp_path) if TMP_MARKER in n] == []
