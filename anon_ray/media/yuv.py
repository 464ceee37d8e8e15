"""8-bit YUV 4:2:0 <-> RGB for every decoded and encoded video frame, in OpenCV where it is exact.

swscale is exact only with full chroma interpolation and accurate rounding (`TO_RGB`), and then
slow: ~4.5 ms a 720p frame each way here, three conversions per frame (two decodes, one encode);
its fast paths darken by about one level per decode/encode cycle. For the usual 8-bit 4:2:0
frames of an even size one affine transform per pixel (SIMD in OpenCV) does the same in about half
the time: reading, chroma upsampled bilinearly; writing, luma at full resolution and chroma
from the 2x2 means of RGB (chroma is linear in RGB, so that is the mean of the chroma). A
decode/encode cycle round-trips with no bias (limited range 68 dB PSNR on the eval clips, full
range 73 dB, where swscale's loses 0.2 levels). Anything else goes through swscale as before.

Matrices follow swscale's table, so both paths agree (within 0.1 level on average): an
unspecified or reserved matrix is BT.601's.
"""

from __future__ import annotations

import av
import cv2
import numpy as np
from av.video.reformatter import Interpolation

from anon_ray.arrays import scratch

TO_RGB = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT \
    | Interpolation.FULL_CHR_H_INP
FROM_RGB = Interpolation.BILINEAR | Interpolation.ACCURATE_RND
# AVColorSpace -> the swscale matrix name PyAV's reformat expects (None: swscale's BT.601).
SWS_MATRIX = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}
# AVColorSpace -> (Kr, Kb) as swscale's coefficients table has them (0 and 2/3 fall back to BT.601).
_KR_KB = {0: (0.299, 0.114), 1: (0.2126, 0.0722), 2: (0.299, 0.114), 3: (0.299, 0.114), 4: (0.30, 0.11),
          5: (0.299, 0.114), 6: (0.299, 0.114), 7: (0.212, 0.087), 9: (0.2627, 0.0593), 10: (0.2627, 0.0593)}
RANGE_JPEG = 2  # AVCOL_RANGE_JPEG: full range


def _scales(full: bool) -> tuple[float, float, float]:
    """(luma scale, chroma scale, luma offset) from [0, 255] RGB-normalised values to code values."""
    return (1.0, 1.0, 0.0) if full else (219 / 255, 224 / 255, 16.0)


def _to_yuv_matrix(colorspace: int, full: bool) -> np.ndarray:
    """3x4 affine map from RGB to Y, Cb, Cr code values."""
    kr, kb = _KR_KB[colorspace]
    ys, cs, y0 = _scales(full)
    luma = np.array([kr, 1.0 - kr - kb, kb])
    rows = [ys * luma, cs * (np.array([0.0, 0.0, 1.0]) - luma) / (2 * (1 - kb)),
            cs * (np.array([1.0, 0.0, 0.0]) - luma) / (2 * (1 - kr))]
    return np.c_[np.stack(rows), [y0, 128.0, 128.0]].astype(np.float32)


def _to_rgb_matrix(colorspace: int, full: bool) -> np.ndarray:
    """3x4 affine map from Y, Cb, Cr code values to RGB: the inverse of `_to_yuv_matrix`."""
    m = _to_yuv_matrix(colorspace, full).astype(np.float64)
    inv = np.linalg.inv(m[:, :3])
    return np.c_[inv, -inv @ m[:, 3]].astype(np.float32)


def _fast(pix_fmt: str, colorspace: int, width: int, height: int) -> bool:
    return pix_fmt in ("yuv420p", "yuvj420p") and colorspace in _KR_KB and width % 2 == 0 and height % 2 == 0


def _plane(frame: av.VideoFrame, i: int, width: int, height: int, writeable: bool = False) -> np.ndarray:
    plane = frame.planes[i]
    # By stride, not by reshape: a plane's buffer need not pad its last line to the line size.
    return np.lib.stride_tricks.as_strided(np.frombuffer(plane, np.uint8), (height, width), (plane.line_size, 1),
                                           writeable=writeable)


def to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """HxWx3 uint8 RGB of a decoded frame, with its own matrix and range."""
    w, h = frame.width, frame.height
    if not _fast(frame.format.name, frame.colorspace, w, h):
        return frame.to_ndarray(format="rgb24", interpolation=TO_RGB)
    full = frame.format.name == "yuvj420p" or frame.color_range == RANGE_JPEG
    uv = cv2.merge([_plane(frame, 1, w // 2, h // 2), _plane(frame, 2, w // 2, h // 2)])
    # The two frame-sized temporaries are this thread's from the last frame (arrays.py); the
    # returned frame is new, since it outlives the call.
    uv = cv2.resize(uv, (w, h), dst=scratch("yuv.chroma", (h, w, 2), np.uint8), interpolation=cv2.INTER_LINEAR)
    yuv = cv2.merge([_plane(frame, 0, w, h), uv], dst=scratch("yuv.pixels", (h, w, 3), np.uint8))
    return cv2.transform(yuv, _to_rgb_matrix(frame.colorspace, full))


def from_rgb(rgb: np.ndarray, pix_fmt: str, colorspace: int, color_range: int,
             reuse: av.VideoFrame | None = None) -> av.VideoFrame:
    """A frame in the encoder's `pix_fmt`, `colorspace` matrix and `color_range` from HxWx3 uint8 RGB.

    `reuse`: a frame this function returned before, to write into instead of a new one (a fresh
    frame's buffers are mapped afresh: arrays.py); it is copied first if anything, an encoder
    holding on to it, still references its buffers."""
    h, w = rgb.shape[:2]
    if not _fast(pix_fmt, colorspace, w, h):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        return frame.reformat(format=pix_fmt, dst_colorspace=SWS_MATRIX.get(colorspace), dst_color_range=color_range,
                              interpolation=FROM_RGB)
    m = _to_yuv_matrix(colorspace, color_range == RANGE_JPEG)
    if reuse is not None and (reuse.width, reuse.height, reuse.format.name) == (w, h, "yuv420p"):
        frame = reuse
        frame.make_writable()
    else:
        frame = av.VideoFrame(w, h, "yuv420p")
    cv2.transform(rgb, m[:1], dst=_plane(frame, 0, w, h, writeable=True))
    half = cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    for i in (1, 2):
        cv2.transform(half, m[i:i + 1], dst=_plane(frame, i, w // 2, h // 2, writeable=True))
    # Tagged as swscale tags what it converts (an unnamed matrix stays unspecified).
    frame.colorspace, frame.color_range = colorspace if colorspace in SWS_MATRIX else 2, color_range
    return frame
