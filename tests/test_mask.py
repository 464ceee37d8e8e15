import math
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
from skimage import data

from anon_ray.config import MaskConfig
from anon_ray.core.mask import METHODS, SHAPES, apply, dilate, mask_region, mask_weight
from anon_ray.tools.metrics import coverage
from anon_ray.types import FACE, PLATE, Detections

FACE_BOX = [178, 60, 268, 168]  # the astronaut's face, eyebrows to chin, in skimage.data.astronaut()
ALL = [(m, s) for m in METHODS for s in SHAPES]


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


def _dets(boxes, cls=FACE) -> Detections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Detections.build(0, boxes, np.ones(len(boxes)), cls)


def _core(shape_hw, dets, cfg) -> np.ndarray:
    return mask_weight(shape_hw, dets, cfg) == 1.0


def uniform(margin: float, **kw) -> MaskConfig:
    """A face margin equal on every side (the default grows faces less upwards: config.py)."""
    return MaskConfig(face_margin=margin, face_margin_top=None, face_margin_bottom=None, **kw)


def _block(dets: Detections, cfg: MaskConfig) -> int:
    """The documented strength rule: raw short side / blocks, rounded up, at least 2 px."""
    w, h = dets.xyxy[0, 2:] - dets.xyxy[0, :2]
    return max(2, math.ceil(min(w, h) / cfg.blocks))


def test_dilate_margin_per_side_and_per_class():
    cfg = uniform(0.3, plate_margin=0.15)
    dets = Detections.build(0, [[100, 100, 200, 150], [100, 100, 200, 150]], [1, 1], [FACE, PLATE])
    out = dilate(dets, cfg)
    np.testing.assert_allclose(out[0], [70, 85, 230, 165])  # (1 + 2 * 0.3) = 1.6 times as wide and tall
    np.testing.assert_allclose(out[1], [85, 92.5, 215, 157.5])
    assert out.dtype == np.float32


def test_face_top_and_bottom_margins_apart_from_the_sides():
    cfg = MaskConfig(face_margin=0.2, face_margin_top=0.05, face_margin_bottom=0.45, plate_margin=0.1)
    dets = Detections.build(0, [[100, 100, 200, 200], [100, 100, 200, 150]], [1, 1], [FACE, PLATE])
    out = dilate(dets, cfg)
    np.testing.assert_allclose(out[0], [80, 95, 220, 245])
    np.testing.assert_allclose(out[1], [90, 95, 210, 155])  # plates keep one margin on every side
    # Unset top and bottom follow the sides' margin.
    np.testing.assert_allclose(dilate(dets, MaskConfig(face_margin=0.2, face_margin_top=None, face_margin_bottom=0.45))[0], [80, 80, 220, 245])


def test_a_downward_margin_moves_the_masked_region_down(astronaut):
    box = [[150, 100, 250, 200]]
    down = mask_region((300, 400), _dets(box), MaskConfig(face_margin=0.2, face_margin_top=0.0, face_margin_bottom=0.4))
    rows = np.flatnonzero(down.any(axis=1))
    # Barely above the box (only the inner half of the feather), 40% of its height below it.
    assert 92 <= rows[0] < 100 and rows[-1] >= 240
    blurred = apply(astronaut[:300, :400].copy(), _dets(box), MaskConfig(face_margin=0.2, face_margin_top=0.0,
                                                                          face_margin_bottom=0.4, feather=0.0))
    changed = np.flatnonzero((blurred != astronaut[:300, :400]).any(axis=(1, 2)))
    assert changed[0] >= 100 and changed[-1] >= 235


def test_dilate_keeps_boxes_past_the_frame_edge():
    out = dilate(_dets([[-50, -10, 50, 90]]), uniform(0.5))
    np.testing.assert_allclose(out[0], [-100, -60, 100, 140])


def test_face_cut_by_the_frame_edge_is_fully_covered():
    # An ellipse inscribed in a box clipped to the frame would leave the frame-edge corners bare.
    cfg = uniform(0.3, face_shape="ellipse", feather=0.0)
    raw = np.array([[-40, 100, 60, 220], [450, -30, 540, 80]], np.float32)
    region = mask_region((512, 512), _dets(raw), cfg)
    np.testing.assert_array_equal(coverage(raw, region), [1.0, 1.0])


@pytest.mark.parametrize("method,shape", ALL)
def test_pixels_outside_the_weighted_region_are_untouched(astronaut, method, shape):
    cfg = MaskConfig(method=method, face_shape=shape, feather=0.2)
    dets = _dets([FACE_BOX, [400, 300, 470, 340]])
    out = apply(astronaut.copy(), dets, cfg)
    weight = mask_weight(astronaut.shape[:2], dets, cfg)
    changed = (out != astronaut).any(axis=2)
    assert changed.any()
    assert not changed[weight == 0].any()


@pytest.mark.parametrize("method,shape", ALL)
def test_region_is_covered_and_core_is_not_weakened_by_feathering(astronaut, method, shape):
    sharp = MaskConfig(method=method, face_shape=shape, feather=0.0)
    soft = MaskConfig(method=method, face_shape=shape, feather=0.3)
    dets = _dets([FACE_BOX])
    core_sharp = mask_region(astronaut.shape[:2], dets, sharp)
    core_soft = _core(astronaut.shape[:2], dets, soft)
    np.testing.assert_array_equal(core_sharp, core_soft)
    # The soft region is the core plus half its ramp: a strict superset of the sharp one.
    soft_region = mask_region(astronaut.shape[:2], dets, soft)
    assert (soft_region >= core_sharp).all() and soft_region.sum() > core_sharp.sum()
    # Inside the core both settings write exactly the same pixels.
    a, b = apply(astronaut.copy(), dets, sharp), apply(astronaut.copy(), dets, soft)
    np.testing.assert_array_equal(a[core_sharp], b[core_sharp])


def test_fill_changes_exactly_the_region_without_feather(astronaut):
    cfg = MaskConfig(method="fill", face_shape="ellipse", feather=0.0, fill_color=[255, 0, 255])
    dets = _dets([FACE_BOX, [300, 400, 380, 430]])
    out = apply(astronaut.copy(), dets, cfg)
    region = mask_region(astronaut.shape[:2], dets, cfg)
    np.testing.assert_array_equal((out != astronaut).any(axis=2), region)
    assert (out[region] == [255, 0, 255]).all()


def test_fill_with_feather_region_is_at_least_half_fill(astronaut):
    colour = np.array([255, 0, 255])
    cfg = MaskConfig(method="fill", face_shape="box", feather=0.25, fill_color=colour.tolist())
    dets = _dets([FACE_BOX])
    out = apply(astronaut.copy(), dets, cfg).astype(float)
    region = mask_region(astronaut.shape[:2], dets, cfg)
    core = _core(astronaut.shape[:2], dets, cfg)
    assert (out[core] == colour).all()
    moved = np.abs(out - astronaut).sum(axis=2) / np.maximum(np.abs(colour - astronaut.astype(float)).sum(axis=2), 1)
    assert moved[region].min() >= 0.5 - 0.02  # rounding to uint8
    ring = ~region & (mask_weight(astronaut.shape[:2], dets, cfg) > 0)
    assert ring.any() and moved[ring].max() <= 0.5 + 0.02


def test_box_feather_half_width_sets_the_region_edge():
    cfg = uniform(0.0, face_shape="box", feather=0.2)
    region = mask_region((200, 300), _dets([[100, 50, 200, 100]]), cfg)
    # feather = 0.2 * 50 = 10 px, so the region reaches 5 px past each side (pixel centres).
    rows, cols = np.nonzero(region)
    assert (cols.min(), cols.max(), rows.min(), rows.max()) == (95, 204, 45, 104)


def test_ellipse_ramp_has_the_asked_width_on_both_axes():
    cfg = uniform(0.0, face_shape="ellipse", feather=0.2)
    box = np.array([[100.0, 50.0, 300.0, 150.0]])  # short side 100: ramp 20 px
    weight = mask_weight((300, 400), _dets(box), cfg)
    # Pixel centres 10 px outside the ellipse on the long and on the short axis: weight 0.5.
    assert weight[99, 309] == pytest.approx(0.5, abs=0.03) and weight[159, 199] == pytest.approx(0.5, abs=0.03)
    assert weight[99, 320] == 0.0 and weight[99, 250] == 1.0
    # Box corners lie outside the ellipse and its ramp.
    assert weight[50, 100] == 0.0 and weight[149, 299] == 0.0
    area = mask_region((300, 400), _dets(box), uniform(0.0, face_shape="ellipse", feather=0.0)).sum()
    assert area == pytest.approx(math.pi * 100 * 50, rel=0.01)


def test_pixelate_core_holds_only_block_means(astronaut):
    cfg = MaskConfig(method="pixelate", face_shape="box", feather=0.1, blocks=6)
    dets = _dets([FACE_BOX])
    out = apply(astronaut.copy(), dets, cfg)
    core = _core(astronaut.shape[:2], dets, cfg)
    block = _block(dets, cfg)
    assert block == 15
    # Every core pixel equals the mean of its cell on the frame-wide grid of step `block`.
    grid_h, grid_w = 512 // block * block, 512 // block * block
    cells = astronaut[:grid_h, :grid_w].reshape(grid_h // block, block, grid_w // block, block, 3)
    means = np.rint(cells.mean(axis=(1, 3)))
    expect = np.repeat(np.repeat(means, block, 0), block, 1)
    ys, xs = np.nonzero(core)
    np.testing.assert_allclose(out[ys, xs], expect[ys, xs], atol=1)
    # So the face box is at most `blocks` (+1 for the grid offset) blocks across its short side.
    face = out[60:168, 178:268].reshape(-1, 3)
    assert len(np.unique(face, axis=0)) <= (cfg.blocks + 1) * (math.ceil(108 / block) + 1)


def test_cells_cut_by_the_frame_edge_repeat_its_edge_pixels(astronaut):
    """On a frame whose size is not a multiple of the block, the last row and column of cells
    (and the corner) are averaged with the frame's edge pixels repeated into them."""
    frame = np.ascontiguousarray(astronaut[:500, :490])  # 500 = 33 * 15 + 5, 490 = 32 * 15 + 10
    cfg = MaskConfig(method="pixelate", face_shape="box", feather=0.0, blocks=6, face_margin=0.0,
                     face_margin_top=None, face_margin_bottom=None)
    dets = _dets([[400, 410, 490, 500]])  # a 90 px box in the corner: 15 px blocks
    assert _block(dets, cfg) == 15
    out = apply(frame.copy(), dets, cfg)
    padded = cv2.copyMakeBorder(frame, 0, 10, 0, 5, cv2.BORDER_REPLICATE)  # to 510 x 495
    cells = padded.reshape(34, 15, 33, 15, 3).astype(np.float64).mean(axis=(1, 3))
    for (y, x), cell in {(497, 487): (33, 32), (497, 450): (33, 30), (450, 487): (30, 32), (450, 450): (30, 30)}.items():
        np.testing.assert_allclose(out[y, x], cells[cell], atol=0.5 + 1e-9)


def _shuffle_within_cells(rgb: np.ndarray, block: int) -> np.ndarray:
    """A different image with the same mean in every cell of the grid: each cell is mirrored."""
    out = rgb.copy()
    h, w = rgb.shape[0] // block * block, rgb.shape[1] // block * block
    cells = out[:h, :w].reshape(h // block, block, w // block, block, 3)
    out[:h, :w] = cells[:, ::-1, :, ::-1].reshape(h, w, 3)
    return out


@pytest.mark.parametrize("method", ["blur", "pixelate"])
def test_masked_core_depends_only_on_block_means(astronaut, method):
    # Irreversibility: two images that differ everywhere inside each block but share the block
    # means mask to the same core pixels, so no inversion can recover more than the block means.
    cfg = MaskConfig(method=method, face_shape="ellipse", blocks=6)
    dets = _dets([FACE_BOX])
    other = _shuffle_within_cells(astronaut, _block(dets, cfg))
    core = _core(astronaut.shape[:2], dets, cfg)
    assert np.abs(other[core].astype(int) - astronaut[core]).mean() > 10  # the inputs really differ
    a, b = apply(astronaut.copy(), dets, cfg), apply(other, dets, cfg)
    np.testing.assert_array_equal(a[core], b[core])


@pytest.mark.parametrize("method", ["blur", "pixelate"])
def test_a_small_box_inside_a_face_brings_back_no_detail(astronaut, method):
    # A small box in the face's core (an eye found as a face, in either order) has finer blocks;
    # the face's core must still hold only the face's block means.
    cfg = MaskConfig(method=method, face_shape="ellipse", blocks=2)
    face, eye = _dets([FACE_BOX]), [200, 95, 220, 110]
    other = _shuffle_within_cells(astronaut, _block(face, cfg))
    core = _core(astronaut.shape[:2], face, cfg)
    for boxes in ([FACE_BOX, eye], [eye, FACE_BOX]):
        a, b = apply(astronaut.copy(), _dets(boxes), cfg), apply(other.copy(), _dets(boxes), cfg)
        np.testing.assert_array_equal(a[core], b[core])


@pytest.mark.parametrize("method", ["blur", "pixelate"])
def test_high_frequencies_are_gone_from_the_face(astronaut, method):
    cfg = MaskConfig(method=method, face_shape="box", blocks=6)
    dets = _dets([FACE_BOX])
    out = apply(astronaut.copy(), dets, cfg)
    grey = lambda im: cv2.cvtColor(im, cv2.COLOR_RGB2GRAY).astype(np.float32)  # noqa: E731
    lap_in = cv2.Laplacian(grey(astronaut), cv2.CV_32F)[60:168, 178:268]
    lap_out = cv2.Laplacian(grey(out), cv2.CV_32F)[60:168, 178:268]
    if method == "blur":
        assert lap_out.var() < 0.01 * lap_in.var()
    else:  # block edges are the only structure left: zero away from the grid lines
        block = _block(dets, cfg)
        ys, xs = np.arange(60, 168)[:, None] % block, np.arange(178, 268)[None, :] % block
        inner = (ys > 0) & (ys < block - 1) & (xs > 0) & (xs < block - 1)
        assert (lap_out[inner] == 0).all() and (lap_in[inner] != 0).mean() > 0.9


def test_small_box_still_gets_blocks_of_two_pixels():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    cfg = uniform(0.0, method="pixelate", face_shape="box", feather=0.0)
    out = apply(rgb.copy(), _dets([[20, 20, 24, 24]]), cfg)
    patch = out[20:24, 20:24]
    assert (patch[0::2, 0::2] == patch[1::2, 1::2]).all() and (patch[0::2, 0::2] == patch[0::2, 1::2]).all()
    assert (out[:20] == rgb[:20]).all()


def test_in_place_empty_and_offscreen_boxes(astronaut):
    rgb = astronaut.copy()
    assert apply(rgb, Detections.empty(), MaskConfig()) is rgb
    apply(rgb, _dets([[600, 600, 700, 700], [-300, 10, -200, 90]]), MaskConfig())
    np.testing.assert_array_equal(rgb, astronaut)
    assert not mask_region(rgb.shape[:2], Detections.empty(), MaskConfig()).any()


def test_overlapping_boxes_mask_their_union(astronaut):
    cfg = MaskConfig(method="fill", face_shape="ellipse", feather=0.15)
    dets = _dets([FACE_BOX, [220, 100, 320, 200]])
    out = apply(astronaut.copy(), dets, cfg)
    union = mask_region(astronaut.shape[:2], dets.select(np.array([True, False])), cfg)
    union |= mask_region(astronaut.shape[:2], dets.select(np.array([False, True])), cfg)
    np.testing.assert_array_equal(mask_region(astronaut.shape[:2], dets, cfg), union)
    core = _core(astronaut.shape[:2], dets, cfg)
    assert (out[core] == 0).all()


def test_many_boxes_on_a_video_frame_run_roi_only():
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    xy = rng.uniform(0, 1200, (20, 2)) * [1, 0.55]
    dets = Detections.build(0, np.concatenate([xy, xy + rng.uniform(12, 120, (20, 1))], 1), np.ones(20),
                            rng.integers(0, 2, 20))
    for method in METHODS:
        cfg = MaskConfig(method=method)
        out = apply(frame.copy(), dets, cfg)
        weight = mask_weight(frame.shape[:2], dets, cfg)
        assert ((out != frame).any(axis=2) <= (weight > 0)).all()


def test_boxes_far_apart_on_a_large_bright_photo_mask_as_each_alone():
    # Two corners of a 9-megapixel near-white photo: one summed-area table spans both, and its
    # sums pass what int32 holds; each box must still mask exactly as it does alone.
    rng = np.random.default_rng(5)
    photo = rng.integers(240, 256, (2200, 4000, 3), dtype=np.uint8)
    corners = [[40, 50, 200, 230], [3700, 1900, 3900, 2150]]
    both = apply(photo.copy(), _dets(corners), MaskConfig())
    for box in corners:
        alone = apply(photo.copy(), _dets([box]), MaskConfig())
        x0, y0, x1, y1 = box
        np.testing.assert_array_equal(both[y0 - 60:y1 + 60, x0 - 60:x1 + 60], alone[y0 - 60:y1 + 60, x0 - 60:x1 + 60])
        assert (alone[y0:y1, x0:x1] != photo[y0:y1, x0:x1]).any()


def test_a_frame_masks_as_alone_after_another_frame(astronaut):
    # The summed-area table is this thread's from its last frame (arrays.py): the astronaut masked
    # after other pixels with a larger box comes out as in a thread that masked nothing before.
    dets, cfg = _dets([FACE_BOX]), MaskConfig()
    with ThreadPoolExecutor(1) as fresh:
        alone = fresh.submit(apply, astronaut.copy(), dets, cfg).result()
    other = np.random.default_rng(7).integers(0, 256, astronaut.shape, dtype=np.uint8)
    apply(other, _dets([[20, 10, 480, 500]]), cfg)
    np.testing.assert_array_equal(apply(astronaut.copy(), dets, cfg), alone)
    assert (alone != astronaut).any()


def test_unknown_method_is_refused(astronaut):
    with pytest.raises(ValueError):
        apply(astronaut.copy(), _dets([FACE_BOX]), MaskConfig(method="swirl"))
