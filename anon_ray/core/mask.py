"""Turn boxes into unrecoverable pixels: blur, pixelate or fill, box or ellipse, feathered edges.

Geometry (shared by `apply` and `mask_region`, so the evaluator scores exactly what is written):

- A detection box is grown by `margin` of its width and height on EACH side (`dilate`), so margin m
  makes it (1 + 2m) times as wide and as tall; faces may set their top and bottom margins apart.
  Dilated boxes are NOT clipped to the frame: an ellipse inscribed in a clipped box would leave the
  part of a face that touches the frame edge uncovered. Rasterization clips to the frame instead.
- The *core* is the ellipse inscribed in the dilated box (or the box itself); its weight is 1.
- Feathering adds a ramp OUTSIDE the core, from weight 1 at the core edge to 0 at a distance of
  `feather` x the dilated box's short side, so it never weakens the core.
- Pixels are sampled at their centres (x + 0.5, y + 0.5) in the xyxy pixel frame.
- The *masked region* (coverage) is where the weight is >= 0.5: the core plus the inner half of the
  ramp. Pixels with weight 0 are never touched.

Strength rule: see `_block_size`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from anon_ray.arrays import KEEP_BYTES, scratch
from anon_ray.config import MaskConfig, MaskMethod, MaskShape
from anon_ray.types import FACE, PLATE, Detections

METHODS = tuple(MaskMethod)
SHAPES = tuple(MaskShape)
_BLUR_SUBSTEPS = 4  # samples per block where the smoothing of the block means happens
_BLUR_CONTEXT = 3  # cells beyond the ROI that the smoothing can reach (kernel 1 block + 2 interpolations)


def dilate(dets: Detections, cfg: MaskConfig) -> np.ndarray:
    """Boxes (n, 4) float32 grown by the class margins on each side; deliberately not clipped."""
    side, top, bottom = (
        np.where(dets.cls == PLATE, cfg.plate_margin, np.where(dets.cls == FACE, face, 0.0)).astype(np.float32)
        for face in face_margins(cfg)
    )
    xyxy = dets.xyxy.astype(np.float32)
    w, h = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
    return np.stack([xyxy[:, 0] - w * side, xyxy[:, 1] - h * top, xyxy[:, 2] + w * side, xyxy[:, 3] + h * bottom], axis=1)


def face_margins(cfg: MaskConfig) -> tuple[float, float, float]:
    """The face margins (sides, top, bottom), top and bottom defaulting to the sides' margin."""
    top = cfg.face_margin if cfg.face_margin_top is None else cfg.face_margin_top
    bottom = cfg.face_margin if cfg.face_margin_bottom is None else cfg.face_margin_bottom
    return cfg.face_margin, top, bottom


def mask_weight(shape_hw: tuple[int, int], dets: Detections, cfg: MaskConfig) -> np.ndarray:
    """float32 HxW: for each pixel the largest weight any of the raw boxes gives it once dilated."""
    _check(cfg)
    out = np.zeros(shape_hw[:2], np.float32)
    for box, shape in zip(dilate(dets, cfg), _shapes(dets, cfg)):
        roi = _roi(box, cfg, shape_hw)
        if roi is not None:
            y0, y1, x0, x1 = roi
            np.maximum(out[y0:y1, x0:x1], _weight(box, roi, cfg, shape), out=out[y0:y1, x0:x1])
    return out


def mask_region(shape_hw: tuple[int, int], dets: Detections, cfg: MaskConfig) -> np.ndarray:
    """bool HxW: the region `apply` masks for these raw boxes, i.e. where `mask_weight` >= 0.5."""
    return mask_weight(shape_hw, dets, cfg) >= 0.5


def apply(rgb: np.ndarray, dets: Detections, cfg: MaskConfig) -> np.ndarray:
    """Mask raw (undilated) boxes IN PLACE in a writable HxWx3 uint8 frame; returns the same array.

    Every row of `dets` is taken as a box of this frame (select the frame first). Only the boxes'
    regions of interest (and, for blur and pixelate, the block grids around them) are read, and
    only the regions of interest written. Block means are those of the frame as it came in, and
    boxes are blended one after another, those with the smallest blocks first: where boxes overlap,
    a pixel ends as a blend of means over blocks no smaller than those of any box whose core holds
    it (a small box inside a face cannot bring back detail the face's blocks took away).
    """
    _check(cfg)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 frame, got {rgb.dtype} {rgb.shape}")
    raw_short = np.minimum(dets.xyxy[:, 2] - dets.xyxy[:, 0], dets.xyxy[:, 3] - dets.xyxy[:, 1])
    boxes = sorted(((box, roi, _block_size(float(short), cfg.blocks), shape)
                    for box, short, shape in zip(dilate(dets, cfg), raw_short, _shapes(dets, cfg))
                    if (roi := _roi(box, cfg, rgb.shape)) is not None), key=lambda b: b[2])
    smooth = cfg.method == "blur"
    grids = [_grid(roi, block, smooth, rgb.shape) for _, roi, block, _ in boxes]
    sums = None if cfg.method == "fill" or not boxes else _CellSums(rgb, grids)
    for (box, roi, block, shape), grid in zip(boxes, grids):
        y0, y1, x0, x1 = roi
        weight = _weight(box, roi, cfg, shape)
        if sums is None:
            anon = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
            anon[:] = np.asarray(cfg.fill_color, np.uint8)
        else:
            anon = _coarse(sums.means(grid, block), roi, grid, block, smooth)
        # Weight 0 leaves the pixel bit-exact, weight 1 replaces it; one pass in native code.
        rgb[y0:y1, x0:x1] = cv2.blendLinear(anon, rgb[y0:y1, x0:x1], weight, 1.0 - weight)
    return rgb


def apply_deep(deep: np.ndarray, masked: np.ndarray, dets: Detections, cfg: MaskConfig) -> np.ndarray:
    """The 16-bit samples `deep` (h, w, 3) of a photo whose 8-bit copy `masked` went through
    `apply` with these boxes: the masked value scaled to 16 bits wherever a mask reaches (weight
    > 0, feather included), the photo's own sample elsewhere. No pixel under a mask keeps any of
    the source's bits, the low ones included."""
    reach = mask_weight(deep.shape[:2], dets, cfg) > 0
    out = deep.copy()
    out[reach] = masked[reach].astype(np.uint16) * 257
    return out


def _check(cfg: MaskConfig) -> None:
    if cfg.method not in METHODS or cfg.face_shape not in SHAPES or cfg.plate_shape not in SHAPES:
        raise ValueError(f"unknown mask method {cfg.method!r} or shape {cfg.face_shape!r}/{cfg.plate_shape!r}")


def _shapes(dets: Detections, cfg: MaskConfig) -> list[str]:
    return [cfg.plate_shape if c == PLATE else cfg.face_shape if c == FACE else MaskShape.box for c in dets.cls]


def _block_size(raw_short_side: float, blocks: int) -> int:
    """Side in px of the blocks a box is reduced to, for both `pixelate` and `blur`.

    The block is the raw box's short side / `blocks`, rounded up and at least 2 px, so a face spans
    at most `blocks` blocks across its short side. Everything written inside the box is a function
    of those block means only (pixelate repeats them, blur interpolates and smooths them), so no
    deconvolution can bring back detail finer than a block: a plain Gaussian blur would only
    attenuate high frequencies, which can be partly undone.
    """
    return max(2, math.ceil(raw_short_side / max(blocks, 1)))


def _roi(box: np.ndarray, cfg: MaskConfig, shape_hw: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1): the dilated box plus its feather, in whole pixels inside the frame."""
    pad = _feather_px(box, cfg)
    h, w = shape_hw[:2]
    x0, y0 = max(0, math.floor(box[0] - pad)), max(0, math.floor(box[1] - pad))
    x1, y1 = min(w, math.ceil(box[2] + pad)), min(h, math.ceil(box[3] + pad))
    if x1 <= x0 or y1 <= y0 or box[2] <= box[0] or box[3] <= box[1]:
        return None
    return y0, y1, x0, x1


def _feather_px(box: np.ndarray, cfg: MaskConfig) -> float:
    return max(cfg.feather, 0.0) * float(min(box[2] - box[0], box[3] - box[1]))


def _weight(box: np.ndarray, roi: tuple[int, int, int, int], cfg: MaskConfig, shape: str) -> np.ndarray:
    """float32 weight of one dilated box over its ROI: 1 in the core, a linear ramp outside it."""
    y0, y1, x0, x1 = roi
    xs = np.arange(x0, x1, dtype=np.float32) + 0.5
    ys = np.arange(y0, y1, dtype=np.float32) + 0.5
    # A zero feather still needs a finite ramp: this makes the weight exactly 1 in and 0 out.
    feather = np.float32(max(_feather_px(box, cfg), 1e-6))
    if shape == "box":
        dx = np.maximum(np.maximum(box[0] - xs, xs - box[2]), 0.0) / feather
        dy = np.maximum(np.maximum(box[1] - ys, ys - box[3]), 0.0) / feather
        dist = np.hypot(dy[:, None], dx[None, :])
    else:
        dist = _ellipse_distance(xs, ys, box, feather)
    # In place: this runs over every masked pixel of every frame.
    np.subtract(np.float32(1.0), dist, out=dist)
    return np.clip(dist, 0.0, 1.0, out=dist)


def _ellipse_distance(xs: np.ndarray, ys: np.ndarray, box: np.ndarray, unit: np.float32) -> np.ndarray:
    """float32 (len(ys), len(xs)): distance outside the inscribed ellipse (<= 0 inside) in units of
    `unit` px, to first order: (r - 1) / |grad r|.

    r is the normalised radius. Along each ray from the centre |grad r| is constant, so the estimate
    grows linearly outward; it is exact on both axes and close in between, so the ramp is about as
    wide as asked all round. |grad r| = g / r with g = |(u / ax, v / ay)|, so the distance is
    (r - 1) r / g = (r^2 - r) / g; whole arrays in place, as outer sums of per-column and per-row
    terms (the unit folded into g's), in as few passes as it takes: this runs on every masked pixel.
    """
    ax, ay = np.float32((box[2] - box[0]) / 2), np.float32((box[3] - box[1]) / 2)
    u, v = (xs - (box[0] + ax)) / ax, (ys - (box[1] + ay)) / ay
    dist = np.add.outer(v * v, u * u)
    dist -= np.sqrt(dist)
    # + 1e-30: g > 0 at the centre pixel too, where r = 0 and any g gives 0.
    g = np.add.outer((unit * v / ay) ** 2 + np.float32(1e-30), (unit * u / ax) ** 2)
    dist /= np.sqrt(g, out=g)
    return dist


def _grid(roi: tuple[int, int, int, int], block: int, smooth: bool,
          shape_hw: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(gy0, gy1, gx0, gx1): the cells of the frame-wide grid of step `block` that the ROI's masked
    pixels are computed from (with blur, `_BLUR_CONTEXT` cells around it as well, so a pixel's value
    does not depend on how far the ROI reaches: the same core for any feather, no seams); the last
    row and column may run past the frame by less than a block."""
    y0, y1, x0, x1 = roi
    h, w = shape_hw[:2]
    ctx = _BLUR_CONTEXT if smooth else 0
    gy0, gx0 = max(y0 // block - ctx, 0) * block, max(x0 // block - ctx, 0) * block
    gy1 = min(-(-y1 // block) + ctx, -(-h // block)) * block
    gx1 = min(-(-x1 // block) + ctx, -(-w // block)) * block
    return gy0, gy1, gx0, gx1


def _coarse(means: np.ndarray, roi: tuple[int, int, int, int], grid: tuple[int, int, int, int], block: int,
            smooth: bool) -> np.ndarray:
    """uint8 ROI rebuilt from the grid's block means only: repeated (pixelate) or interpolated (blur).

    Blocks lie on a frame-wide grid of step `block`, so a box moving by a pixel does not reshuffle
    them (less shimmer in video).
    """
    y0, y1, x0, x1 = roi
    gy0, _, gx0, _ = grid
    ny, nx = means.shape[:2]
    if not smooth:
        full = cv2.resize(means, (nx * block, ny * block), interpolation=cv2.INTER_NEAREST_EXACT)
        return full[y0 - gy0:y1 - gy0, x0 - gx0:x1 - gx0]
    # Smoothing the means at a few samples per block costs the same for any box size; the final
    # bilinear upscale only interpolates, so it adds no information.
    k = _BLUR_SUBSTEPS
    fine = cv2.resize(means.astype(np.float32), (nx * k, ny * k), interpolation=cv2.INTER_LINEAR)
    fine = cv2.GaussianBlur(fine, (2 * k + 1, 2 * k + 1), sigmaX=0.5 * k, borderType=cv2.BORDER_REPLICATE)
    fine = np.rint(fine).astype(np.uint8)
    # The upscale runs on the fine samples around the ROI alone (the grid with its context is
    # several times larger), cut where a fine sample falls on a whole pixel: cv2.resize then puts
    # every pixel where the whole grid's upscale would, (p + 0.5) k / block - 0.5 in absolute fine
    # samples, so a pixel's value does not depend on where the ROI or the grid starts.
    ox, oy = gx0 // block * k, gy0 // block * k  # the grid's first fine sample, absolute
    j0x, j1x = _fine_span(x0, x1, block, k, ox, nx * k)
    j0y, j1y = _fine_span(y0, y1, block, k, oy, ny * k)
    px, py = (ox + j0x) * block // k, (oy + j0y) * block // k
    full = cv2.resize(fine[j0y:j1y, j0x:j1x], ((j1x - j0x) * block // k, (j1y - j0y) * block // k),
                      interpolation=cv2.INTER_LINEAR)
    return full[y0 - py:y1 - py, x0 - px:x1 - px]


def _fine_span(p0: int, p1: int, block: int, k: int, origin: int, n: int) -> tuple[int, int]:
    """(j0, j1): the fine samples (relative to `origin`, the grid's first, of `n`) that pixels
    p0..p1-1 interpolate between, widened to start and end on whole pixels (j block / k an
    integer; `origin` is one) and clipped to the grid, whose edges cv2.resize replicates as the
    whole grid's upscale would."""
    step = k // math.gcd(block, k)
    # Pixel p lies at fine sample s = (p + 0.5) k / block - 0.5, between floor(s) and floor(s) + 1.
    first = ((2 * p0 + 1) * k - block) // (2 * block) - origin
    last = ((2 * p1 - 1) * k - block) // (2 * block) + 1 - origin
    j0 = max(first // step * step, 0)
    j1 = min(-(-(last + 1) // step) * step, n)
    return j0, j1


class _CellSums:
    """Sums of the frame's pixels over any cells of the grids, from one summed-area table of the
    region all the grids cover (read before any box is masked).

    Crowded frames' grids overlap several times over (a 100 px face's blur grid is ~8x its ROI),
    and averaging each grid apart cost ~30% of masking on a crowded 720p clip; one table costs
    about one pass over the region, then each cell is four lookups.
    """

    def __init__(self, rgb: np.ndarray, grids: list[tuple[int, int, int, int]]) -> None:
        h, w = rgb.shape[:2]
        self.h, self.w = h, w
        self.y0, self.x0 = min(g[0] for g in grids), min(g[2] for g in grids)
        y1, x1 = min(max(g[1] for g in grids), h), min(max(g[3] for g in grids), w)
        # int32 sums up to ~8.4 million pixels a channel (a 4K frame); float64 is exact past any
        # photo, but ~1.7x slower to build.
        depth = cv2.CV_32S if (y1 - self.y0) * (x1 - self.x0) <= (2**31 - 1) // 255 else cv2.CV_64F
        # Into this thread's frame-sized table from the last frame (arrays.py: a fresh one costs a
        # 720p frame ~1.5 ms of page faults), its corner as large as the region.
        reused = depth == cv2.CV_32S and (h + 1) * (w + 1) * 3 * 4 <= KEEP_BYTES
        table = scratch("mask.sums", (h + 1, w + 1, 3), np.int32)[:y1 - self.y0 + 1, :x1 - self.x0 + 1] \
            if reused else None
        self.table = cv2.integral(rgb[self.y0:y1, self.x0:x1], table, sdepth=depth)

    def _rect(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """int64 (len(ys) - 1, len(xs) - 1, 3): the sums between consecutive frame rows `ys` and
        columns `xs` (inside the table)."""
        t = self.table[(ys - self.y0)[:, None], (xs - self.x0)[None, :]].astype(np.int64)
        return t[1:, 1:] - t[:-1, 1:] - t[1:, :-1] + t[:-1, :-1]

    def means(self, grid: tuple[int, int, int, int], block: int) -> np.ndarray:
        """uint8 (ny, nx, 3) means of the `block`-px cells of `grid` (y0, y1, x0, x1), rounded half
        to even; cells the frame edge cuts count its edge pixels as repeated into them (as
        BORDER_REPLICATE would pad the frame)."""
        gy0, gy1, gx0, gx1 = grid
        ys, xs = np.arange(gy0, gy1 + 1, block), np.arange(gx0, gx1 + 1, block)
        ysc, xsc = np.minimum(ys, self.h), np.minimum(xs, self.w)
        sums = self._rect(ysc, xsc)
        if gy1 > self.h:  # the last row of cells: the frame's last row repeated below it
            sums[-1] += (gy1 - self.h) * self._rect(np.array([self.h - 1, self.h]), xsc)[0]
        if gx1 > self.w:  # the last column likewise, the corner's pixel filling the corner
            sums[:, -1] += (gx1 - self.w) * self._rect(ysc, np.array([self.w - 1, self.w]))[:, 0]
            if gy1 > self.h:
                sums[-1, -1] += (gy1 - self.h) * (gx1 - self.w) * self._rect(
                    np.array([self.h - 1, self.h]), np.array([self.w - 1, self.w]))[0, 0]
        return np.rint(sums / float(block * block)).astype(np.uint8)
