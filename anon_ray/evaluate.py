"""anon-ray-eval: run the job's detect + mask path on a labelled folder and score protection.

The masks scored are exactly those the job applies (every enabled class, dilated, `mask_region`),
so a face under a plate mask counts as protected and a plate mask over a face image counts as
over-masking. Recall and precision at IoU >= 0.5 use the raw boxes of the labelled class only.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from . import mask, metrics
from .config import EvalConfig
from .detect import Detector
from .media.image import read_image
from .types import FACE, PLATE, Detections

CURVE_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7)
# Kaggle face-mask labels: a face wearing a medical mask is where the model struggles most.
MASKED_FACE_LABELS = {"con_mascarilla", "with_mask", "mask_weared_incorrect"}


@dataclass(frozen=True)
class Item:
    file: str
    gt: np.ndarray  # float64 (n, 4)
    tags: dict[str, np.ndarray]


def load_items(dataset: str) -> Iterator[Item]:
    with open(os.path.join(dataset, "annotations.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            gt = np.asarray(row["boxes"], np.float64).reshape(-1, 4)
            meta = row.get("meta") or {}
            n = len(gt)
            tags = {f"source:{meta.get('dataset', 'unknown')}": np.ones(n, bool)}
            labels = meta.get("classes")
            if isinstance(labels, list) and len(labels) == n:
                tags["masked_face"] = np.array([lab in MASKED_FACE_LABELS for lab in labels])
            yield Item(os.path.join(dataset, row["file"]), gt, tags)


def target_class(cfg: EvalConfig) -> int:
    target = cfg.target
    if target == "auto":
        target = "plate" if "plate" in os.path.basename(os.path.normpath(cfg.dataset)).lower() else "face"
    return PLATE if target == "plate" else FACE


def _mask(shape_hw: tuple[int, int], dets: Detections, cfg: EvalConfig) -> np.ndarray:
    return mask.mask_region(shape_hw, dets, cfg.mask)


def _write_curve(rows: list[dict], report_dir: str, cls: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(report_dir, exist_ok=True)
    name = "plate" if cls == PLATE else "face"
    with open(os.path.join(report_dir, f"curve_{name}.csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([r["over_masking"] for r in rows], [r["protected"] for r in rows], marker="o")
    for r in rows:
        ax.annotate(f"{r['threshold']:.2f}", (r["over_masking"], r["protected"]), fontsize=7)
    ax.set_xlabel("over-masking (share of image)")
    ax.set_ylabel("protected share")
    ax.set_title(f"{name}: protection vs over-masking by threshold")
    fig.tight_layout()
    fig.savefig(os.path.join(report_dir, f"curve_{name}.png"), dpi=120)
    plt.close(fig)


def evaluate(cfg: EvalConfig, out=sys.stderr) -> dict:
    cls = target_class(cfg)
    curve_cfg = cfg.detect
    if cfg.curve:
        # Detect once at the curve's lowest threshold; each threshold then filters the cache.
        low = min(CURVE_THRESHOLDS)
        face = type(cfg.detect.face)(**{**cfg.detect.face.__dict__, "threshold": min(low, cfg.detect.face.threshold)})
        plate = type(cfg.detect.plate)(**{**cfg.detect.plate.__dict__, "threshold": min(low, cfg.detect.plate.threshold)})
        curve_cfg = type(cfg.detect)(face=face, plate=plate, session=cfg.detect.session)
    detector = Detector(curve_cfg, cfg.models)
    agg = metrics.Aggregate()
    cache: list[tuple[np.ndarray, tuple[tuple[int, int], Detections]]] = []

    def configured(found: Detections) -> np.ndarray:
        return np.where(found.cls == PLATE, cfg.detect.plate.threshold, cfg.detect.face.threshold)

    started = time.perf_counter()
    n = 0
    for item in load_items(cfg.dataset):
        if cfg.limit and n >= cfg.limit:
            break
        rgb = read_image(item.file, cfg.image).rgb
        found = detector.detect([rgb])
        dets = found.select(found.score >= configured(found))
        region = _mask(rgb.shape[:2], dets, cfg)
        agg.add(metrics.score_image(item.gt, region, dets.xyxy[dets.cls == cls], item.tags))
        if cfg.curve:
            cache.append((item.gt, (rgb.shape[:2], found)))
        n += 1
    seconds = time.perf_counter() - started
    summary = agg.summary()
    summary["images_per_second"] = n / seconds if seconds else float("nan")
    summary["target"] = "plate" if cls == PLATE else "face"
    if cfg.curve:
        def build(c, threshold: float) -> np.ndarray:
            shape, found = c
            # The swept threshold applies to the labelled class; the other keeps its configured one.
            keep = np.where(found.cls == cls, found.score >= threshold, found.score >= configured(found))
            return _mask(shape, found.select(keep), cfg)

        rows = metrics.threshold_curve(cache, CURVE_THRESHOLDS, build)
        _write_curve(rows, cfg.report_dir or os.path.join(os.getcwd(), "eval_report"), cls)
        summary["curve"] = rows
    return summary


def _fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def main(cfg: EvalConfig) -> None:
    summary = evaluate(cfg)
    print(f"dataset: {cfg.dataset} ({summary['target']}s, {summary['n_images']} images, {summary['n_boxes']} boxes)")
    for key in ("protected", "leak_rate", "leak_rate_ge16", "recall_iou50", "precision_iou50", "over_masking",
                "images_per_second"):
        print(f"  {key:18s} {_fmt(summary[key])}")
    print("  by box height (protected share, boxes):")
    for bucket, share in summary["by_height"].items():
        print(f"    {bucket:6s} {_fmt(share)}  n={summary['by_height_n'][bucket]}")
    for tag, row in summary["by_tag"].items():
        print(f"  {tag}: protected {_fmt(row['protected'])} n={row['n']}")
    print(json.dumps(summary, sort_keys=True, default=float))
