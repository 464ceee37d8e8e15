import math

import numpy as np
import pytest

from anon_ray.tools.metrics import (
    HEIGHT_BUCKETS,
    Aggregate,
    box_pixels,
    coverage,
    height_bucket,
    iou_matrix,
    match_count,
    score_image,
    threshold_curve,
)

NO_DETS = np.zeros((0, 4))


def _mask(shape=(100, 200), *rects):
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in rects:
        mask[y0:y1, x0:x1] = True
    return mask


def test_coverage_exact_shares():
    mask = _mask((100, 200), (10, 10, 30, 20))  # rows 10-19, columns 10-29
    gt = np.array([
        [10, 10, 30, 30],  # top half covered
        [10, 10, 30, 20],  # exactly covered
        [50, 50, 60, 60],  # untouched
        [20, 10, 40, 20],  # left half covered
        [10, 15, 20, 25],  # quarter: 10x10 box, 10 columns x 5 rows under the mask
    ])
    np.testing.assert_allclose(coverage(gt, mask), [0.5, 1.0, 0.0, 0.5, 0.5])


def test_coverage_matches_brute_force_on_random_boxes():
    rng = np.random.default_rng(1)
    mask = rng.random((60, 80)) < 0.3
    xs, ys = np.sort(rng.uniform(-5, 85, (50, 2)), axis=1), np.sort(rng.uniform(-5, 65, (50, 2)), axis=1)
    gt = np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], axis=1)
    px = box_pixels(gt, mask.shape)
    expected = [mask[y0:y1, x0:x1].mean() if (x1 > x0 and y1 > y0) else 1.0 for x0, y0, x1, y1 in px]
    np.testing.assert_allclose(coverage(gt, mask), expected)


def test_box_pixels_centres_and_thin_boxes():
    px = box_pixels(np.array([[10.4, 0, 12.5, 5], [10.6, 0, 10.9, 5], [-5, -5, 3, 500]]), (100, 200))
    assert px[0].tolist() == [10, 0, 12, 5]  # centres 10.5, 11.5 inside; 12.5 is the open edge
    assert px[1].tolist() == [10, 0, 11, 5]  # too thin for a centre: the pixel its centre is in
    assert px[2].tolist() == [0, 0, 3, 100]  # clipped to the frame


def test_box_outside_frame_counts_as_covered():
    assert coverage(np.array([[300, 300, 310, 310]]), np.zeros((100, 200), bool)).tolist() == [1.0]


def test_height_buckets_on_boundaries():
    labels = height_bucket(np.array([0, 15.9, 16, 31.99, 32, 95.9, 96, 500]))
    assert labels.tolist() == ["<16", "<16", "16-32", "16-32", "32-96", "32-96", ">=96", ">=96"]


def test_over_masking_exact_share():
    mask = _mask((100, 200), (0, 0, 40, 10))  # 400 px
    gt = np.array([[0, 0, 20, 10]])  # 200 of them inside ground truth
    score = score_image(gt, mask, NO_DETS)
    assert score.over_masked == 200 and score.area == 20000
    summary = Aggregate()
    summary.add(score)
    summary.add(score_image(gt, np.zeros((100, 200), bool), NO_DETS))  # second image: no over-masking
    assert summary.summary()["over_masking"] == pytest.approx((200 / 20000 + 0) / 2)


def test_iou_and_greedy_one_to_one_matching():
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [100, 100, 110, 110]], float)
    det = np.array([
        [0, 0, 10, 10],  # exact match of gt 0
        [0, 0, 10, 11],  # duplicate of gt 0: must not count twice
        [21, 0, 31, 10],  # IoU 9/11 with gt 1
        [50, 50, 60, 60],  # false positive
        [100, 100, 120, 120],  # IoU 0.25 with gt 2: a miss
    ], float)
    assert iou_matrix(gt, det)[1, 2] == pytest.approx(90 / 110)
    assert match_count(gt, det) == 2
    agg = Aggregate()
    agg.add(score_image(gt, np.zeros((200, 200), bool), det))
    s = agg.summary()
    assert s["recall_iou50"] == pytest.approx(2 / 3)
    assert s["precision_iou50"] == pytest.approx(2 / 5)


def test_greedy_matching_prefers_highest_iou():
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 12]], float)
    det = np.array([[0, 0, 10, 12]], float)  # IoU 10/12 with gt 0, 1.0 with gt 1
    assert match_count(gt, det) == 1
    assert match_count(gt, np.array([[0, 0, 10, 10], [0, 0, 10, 12]], float)) == 2


def test_summary_keys_leak_rate_heights_and_tags():
    mask = _mask((200, 200), (0, 0, 100, 200))  # left half of the image
    gt = np.array([
        [0, 0, 10, 10],  # 10 px tall, protected
        [150, 0, 160, 10],  # 10 px tall, leaked
        [0, 50, 20, 70],  # 20 px, protected
        [95, 100, 105, 140],  # 40 px, half covered: leaked
        [0, 0, 50, 100],  # 100 px, protected
    ], float)
    tags = {"masked_face": np.array([True, True, False, False, True])}
    agg = Aggregate()
    agg.add(score_image(gt, mask, gt[:3], tags))
    agg.add(score_image(gt[:1], mask, NO_DETS))  # no tags given: counts as untagged
    s = agg.summary()
    assert set(s) == {"leak_rate", "protected", "recall_iou50", "precision_iou50", "over_masking", "n_boxes",
                      "n_images", "by_height", "leak_by_height", "by_height_n", "by_tag", "leak_rate_ge16",
                      "n_apart", "leak_ge16_not_detected", "leak_ge16_under_covered", "leak_causes_by_height"}
    assert s["n_boxes"] == 6 and s["n_images"] == 2
    assert s["protected"] == pytest.approx(4 / 6)
    assert s["leak_rate"] == pytest.approx(2 / 6)
    assert s["leak_rate_ge16"] == pytest.approx(1 / 3)
    assert s["by_height_n"] == {"<16": 3, "16-32": 1, "32-96": 1, ">=96": 1}
    assert s["by_height"]["<16"] == pytest.approx(2 / 3)
    assert s["by_height"]["32-96"] == 0.0 and s["by_height"][">=96"] == 1.0
    assert s["leak_by_height"]["<16"] == pytest.approx(1 / 3) and s["leak_by_height"]["32-96"] == 1.0
    # The hard subset: boxes 0 (tiny, protected), 1 (tiny, leaked), 4 (large, protected); the untagged
    # second image's box is not in it.
    masked = s["by_tag"]["masked_face"]
    assert masked["n"] == 3 and masked["protected"] == pytest.approx(2 / 3) and masked["leak_rate"] == pytest.approx(1 / 3)
    assert masked["leak_by_height"]["<16"] == 0.5 and masked["leak_by_height"][">=96"] == 0.0
    assert math.isnan(masked["leak_by_height"]["16-32"])
    assert s["recall_iou50"] == pytest.approx(3 / 6) and s["precision_iou50"] == 1.0
    assert list(s["by_height"]) == list(HEIGHT_BUCKETS)


def test_leaks_split_into_not_detected_and_under_covered_and_apart_boxes_are_not_counted():
    mask = _mask((200, 200), (0, 0, 100, 200))  # left half of the image
    gt = np.array([
        [90, 0, 110, 20],  # 20 px, half covered, a detection on it: under-covered
        [150, 0, 170, 20],  # 20 px, no detection: not detected
        [150, 50, 190, 90],  # 40 px, detected only by a box a third its size (IoU 0.11): not detected
        [0, 100, 40, 140],  # 40 px, covered
        [150, 150, 190, 190],  # 40 px, leaked but flagged invalid: scored apart
    ], float)
    det = np.array([[88, 0, 108, 20], [150, 50, 163, 70]], float)
    agg = Aggregate()
    agg.add(score_image(gt, mask, det, {"invalid": np.array([False, False, False, False, True])}))
    s = agg.summary()
    assert s["n_boxes"] == 4 and s["n_apart"] == 1
    assert s["leak_rate_ge16"] == pytest.approx(3 / 4)
    assert s["leak_ge16_under_covered"] == pytest.approx(1 / 4) and s["leak_ge16_not_detected"] == pytest.approx(2 / 4)
    assert s["leak_causes_by_height"]["16-32"] == {"not_detected": 0.5, "under_covered": 0.5}
    assert s["leak_causes_by_height"]["32-96"] == {"not_detected": 0.5, "under_covered": 0.0}  # invalid one apart
    assert s["by_tag"]["invalid"]["n"] == 1 and s["by_tag"]["invalid"]["leak_rate"] == 1.0


def test_empty_aggregate_is_nan_not_an_error():
    s = Aggregate().summary()
    assert s["n_boxes"] == 0 and math.isnan(s["leak_rate"]) and math.isnan(s["over_masking"])


def test_threshold_curve_trades_protection_for_over_masking():
    shape = (50, 50)
    gt = np.array([[0, 0, 10, 10], [30, 30, 40, 40]], float)
    cached = [(np.array([[0, 0, 12, 12], [30, 30, 40, 40]]), np.array([0.9, 0.4]))]

    def build(cache, threshold):
        boxes, scores = cache
        return _mask(shape, *boxes[scores >= threshold])

    rows = threshold_curve([(gt, cached[0])], [0.3, 0.5, 0.95], build)
    assert [r["protected"] for r in rows] == [1.0, 0.5, 0.0]
    assert rows[0]["over_masking"] == pytest.approx(44 / 2500)
    assert rows[2]["over_masking"] == 0.0 and rows[1]["threshold"] == 0.5
