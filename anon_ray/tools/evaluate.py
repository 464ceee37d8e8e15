"""anon-ray-eval: run the job's detect + mask path on a labelled folder and score protection.

The masks scored are exactly those the job applies (every enabled class, dilated, `mask_region`),
so a face under a plate mask counts as protected and a plate mask over a face image counts as
over-masking. Recall and precision at IoU >= 0.5 use the raw boxes of the labelled class only.

Videos in the folder go through the job's video path (segments with context, tracking, gap fill,
padding, stitching) without encoding. A video whose row names per-frame ground truth in
`meta.mot` (a MOT-style `frame,id,x,y,w,h,...` text file, frames from 1, relative to the folder)
is scored frame by frame like a photo; every video reports flicker (DESIGN.md section 5).
A video's `meta.flags` (a JSON sidecar with `columns` and `rows`, one row per MOT row) marks faces
cut by the frame edge (`truncated`); faces in `meta.heavy_occlusion_ids` are labelled but hidden
and scored apart. Each clip reports leaked face-frames by height and leaked faces per minute
(distinct faces with at least one leaked frame >= 16 px: one frame is enough for a screenshot).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from anon_ray.config import EvalConfig
from anon_ray.core import consistency, mask
from anon_ray.detect import Detector, cutoffs
from anon_ray.io.inventory import VIDEO_EXTS, local_asset
from anon_ray.media.image import read_image
from anon_ray.media.probe import probe
from anon_ray.run import lifecycle
from anon_ray.run.pipeline import Worker
from anon_ray.tools import metrics
from anon_ray.types import FACE, PLATE, Detections, VideoInfo

CURVE_THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7)
CURVE_MARGINS = (0.0, 0.1, 0.2, 0.3, 0.4)  # the same on every side, a share of the box (MaskConfig margins)
# Kaggle face-mask labels: a face wearing a medical mask is where the model struggles most.
MASKED_FACE_LABELS = {"con_mascarilla", "with_mask", "mask_weared_incorrect"}


@dataclass(frozen=True)
class Item:
    file: str
    gt: np.ndarray  # float64 (n, 4)
    tags: dict[str, np.ndarray]
    mot: str = ""  # per-frame ground truth of a video, "" when it has none
    flags: str = ""  # the video's per-row JSON sidecar (truncated faces), "" when it has none
    hidden_ids: frozenset[int] = frozenset()  # labelled faces of a video that are hidden

    @property
    def is_video(self) -> bool:
        return os.path.splitext(self.file)[1].lower() in VIDEO_EXTS


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
            # Any other per-box flag list (e.g. "profile": [true, false, ...]) is a hard subset too.
            for key, value in meta.items():
                if isinstance(value, list) and len(value) == n and n and all(isinstance(v, bool) for v in value):
                    tags[key] = np.array(value)
            mot = os.path.join(dataset, meta["mot"]) if meta.get("mot") else ""
            flags = os.path.join(dataset, meta["flags"]) if meta.get("flags") else ""
            hidden = frozenset(int(i) for i in meta.get("heavy_occlusion_ids") or ())
            yield Item(os.path.join(dataset, row["file"]), gt, tags, mot, flags, hidden)


@dataclass(frozen=True)
class FrameTruth:
    """One frame's labelled faces: ids, float64 (n, 4) xyxy boxes, and whether a frame edge cuts each."""

    ids: np.ndarray
    boxes: np.ndarray
    truncated: np.ndarray


def load_mot(path: str, flags: str = "") -> dict[int, FrameTruth]:
    """MOT-style ground truth: frame index (from 0) -> its faces; `flags` (the JSON sidecar) adds
    which rows a frame edge cuts."""
    rows = np.loadtxt(path, delimiter=",", ndmin=2, usecols=range(6))
    boxes = np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], axis=1)
    frames = rows[:, 0].astype(np.int64) - 1
    ids = rows[:, 1].astype(np.int64)
    cut = np.zeros(len(rows), bool)
    if flags:
        with open(flags, encoding="utf-8") as fh:
            side = json.load(fh)
        col = {name: k for k, name in enumerate(side["columns"])}
        truncated = {(int(r[col["frame"]]) - 1, int(r[col["id"]])) for r in side["rows"] if r[col["truncated"]]}
        cut = np.array([(int(f), int(i)) in truncated for f, i in zip(frames, ids)], bool)
    return {int(f): FrameTruth(ids[frames == f], boxes[frames == f], cut[frames == f]) for f in np.unique(frames)}


def edge_boxes(gt: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """bool (n,): boxes that reach within a pixel of the image border (faces the frame cuts)."""
    h, w = shape_hw
    return (gt[:, 0] <= 1) | (gt[:, 1] <= 1) | (gt[:, 2] >= w - 1) | (gt[:, 3] >= h - 1)


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
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for key in sorted({_margin_key(r) for r in rows}):
        line = [r for r in rows if _margin_key(r) == key]
        side, top, bottom = key
        label = f"margin {side:g}" if side == top == bottom else f"margin {side:g}, top {top:g}, bottom {bottom:g}"
        ax.plot([r["over_masking"] for r in line], [r["protected"] for r in line], marker="o", label=label)
        for r in line:
            ax.annotate(f"{r['threshold']:.2f}", (r["over_masking"], r["protected"]), fontsize=6)
    ax.set_xlabel("over-masking (share of image)")
    ax.set_ylabel("protected share")
    ax.set_title(f"{name}: protection vs over-masking by threshold and margin")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(report_dir, f"curve_{name}.png"), dpi=120)
    plt.close(fig)


def _margin_key(row: dict) -> tuple[float, float, float]:
    return row["margin"], row["margin_top"], row["margin_bottom"]


def _curve_margins(cfg: EvalConfig, cls: int) -> list[tuple[float, float, float]]:
    """(sides, top, bottom) per curve line: the same margin on every side, then the configured
    face margins when they differ by side, so the chosen geometry is compared with the uniform ones."""
    lines = [(m, m, m) for m in CURVE_MARGINS]
    configured = mask.face_margins(cfg.mask)
    if cls == FACE and len(set(configured)) > 1:
        lines.append(configured)
    return lines


def _low_threshold(cfg: EvalConfig) -> EvalConfig:
    """The config with both classes' thresholds lowered to the curve's lowest, so one detection
    run serves every threshold of the sweep."""
    low = min(CURVE_THRESHOLDS)
    face = replace(cfg.detect.face, threshold=min(low, cfg.detect.face.threshold),
                   photo_threshold=min(low, cfg.detect.face.photo_threshold))
    plate = replace(cfg.detect.plate, threshold=min(low, cfg.detect.plate.threshold),
                    photo_threshold=min(low, cfg.detect.plate.photo_threshold))
    return replace(cfg, detect=replace(cfg.detect, face=face, plate=plate))


def evaluate(cfg: EvalConfig, out=sys.stderr) -> dict:
    cls = target_class(cfg)
    detector = Detector((_low_threshold(cfg) if cfg.curve else cfg).detect, cfg.models)
    agg = metrics.Aggregate()
    cache: list[tuple[np.ndarray, tuple[tuple[int, int], Detections]]] = []

    started = time.perf_counter()
    n = 0
    videos = []
    worker = None  # the job's video path, at the configured thresholds; built on the first video
    for item in load_items(cfg.dataset):
        if cfg.limit and n >= cfg.limit:
            break
        n += 1
        if item.is_video:
            worker = worker or Worker(cfg)
            videos.append(score_video(item, worker, cfg, cls, agg))
            continue
        rgb = read_image(item.file, cfg.image).rgb
        found = detector.detect([rgb], photo=True)
        # With `curve` the detector cut at the sweep's lowest threshold: the configured cut-offs here.
        dets = found.select(found.score >= cutoffs(cfg.detect, found.cls, photo=True))
        region = _mask(rgb.shape[:2], dets, cfg)
        tags = {**item.tags, "edge": edge_boxes(item.gt, rgb.shape[:2])}
        agg.add(metrics.score_image(item.gt, region, dets.xyxy[dets.cls == cls], tags))
        if cfg.curve:
            cache.append((item.gt, (rgb.shape[:2], found)))
    seconds = time.perf_counter() - started
    summary = agg.summary()
    summary["images_per_second"] = (n - len(videos)) / seconds if seconds else float("nan")
    summary["target"] = "plate" if cls == PLATE else "face"
    if videos:
        summary["videos"] = videos
        summary["flicker"] = sum(v["flicker"] for v in videos)
        scored = [v for v in videos if v["ground_truth"] == "mot"]
        minutes = sum(v["minutes"] for v in scored)
        if minutes:
            summary["leaked_faces_per_minute"] = sum(v["leaked_faces"] for v in scored) / minutes
            summary["edge_leaked_faces_per_minute"] = sum(v["edge_leaked_faces"] for v in scored) / minutes
    if cfg.curve and cache:
        rows = []
        for side, top, bottom in _curve_margins(cfg, cls):
            margins = ({"plate_margin": side} if cls == PLATE else
                       {"face_margin": side, "face_margin_top": top, "face_margin_bottom": bottom})
            swept = replace(cfg, mask=replace(cfg.mask, **margins))

            def build(c, threshold: float) -> np.ndarray:
                shape, found = c
                # The swept threshold applies to the labelled class; the other keeps its configured one.
                keep = np.where(found.cls == cls, found.score >= threshold,
                                found.score >= cutoffs(cfg.detect, found.cls, photo=True))
                return _mask(shape, found.select(keep), swept)

            rows += [{"margin": side, "margin_top": top, "margin_bottom": bottom, **r}
                     for r in metrics.threshold_curve(cache, CURVE_THRESHOLDS, build)]
        _write_curve(rows, cfg.report_dir or os.path.join(os.getcwd(), "eval_report"), cls)
        summary["curve"] = rows
    return summary


def video_masks(src: str, worker: Worker) -> tuple[Detections, VideoInfo]:
    """The boxes the job masks a video with (owned frames, global track ids): the job's own
    lifecycle (plan, segments with context, finalize's stitching), without encoding anything."""
    result = lifecycle.run_video(worker, local_asset(src, os.path.basename(src)), None, None)
    if result.failure:
        raise RuntimeError(f"{src}: {result.failure.error_class}: {result.failure.error}")
    return result.tracks, probe(src)


def score_video(item: Item, worker: Worker, cfg: EvalConfig, cls: int, agg: metrics.Aggregate) -> dict:
    """Flicker of one video; with MOT ground truth, each frame is also scored into `agg` and the
    clip's own leak figures are returned beside it."""
    masks, info = video_masks(item.file, worker)
    row = {"file": os.path.basename(item.file), "frames": info.n_frames, "masks": len(masks),
           "tracks": int(len(np.unique(masks.track[masks.track >= 0]))), "flicker": consistency.flicker(masks),
           "ground_truth": "mot" if item.mot else "none"}
    if item.mot:
        truth = load_mot(item.mot, item.flags)
        clip = metrics.Aggregate()
        leaked_ids, edge_leaked_ids = set(), set()
        for f in range(info.n_frames):
            shown = masks.for_frame(f)
            faces = truth.get(f, FrameTruth(np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, bool)))
            hidden = np.isin(faces.ids, list(item.hidden_ids))
            region = _mask((info.height, info.width), shown, cfg)
            score = metrics.score_image(faces.boxes, region, shown.xyxy[shown.cls == cls],
                                        {"truncated": faces.truncated, "hidden": hidden})
            agg.add(score)
            clip.add(score)
            leak = ~score.protected & ~hidden & (score.heights >= metrics.HEIGHT_EDGES[0])
            leaked_ids.update(faces.ids[leak].tolist())
            edge_leaked_ids.update(faces.ids[leak & faces.truncated].tolist())
        s = clip.summary()
        minutes = info.n_frames / (info.fps[0] / info.fps[1]) / 60
        row.update(face_frames=s["n_boxes"], leaked_face_frames_ge16=s["leak_rate_ge16"],
                   leak_by_height=s["leak_by_height"], leak_ge16_not_detected=s["leak_ge16_not_detected"],
                   leak_ge16_under_covered=s["leak_ge16_under_covered"],
                   truncated_leak=s["by_tag"].get("truncated", {}).get("leak_rate", float("nan")),
                   hidden_leak=s["by_tag"].get("hidden", {}).get("leak_rate", float("nan")),
                   minutes=minutes, leaked_faces=len(leaked_ids), edge_leaked_faces=len(edge_leaked_ids),
                   leaked_faces_per_minute=len(leaked_ids) / minutes,
                   edge_leaked_faces_per_minute=len(edge_leaked_ids) / minutes)
    return row


def _fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def main(cfg: EvalConfig) -> None:
    summary = evaluate(cfg)
    print(f"dataset: {cfg.dataset} ({summary['target']}s, {summary['n_images']} images or frames, "
          f"{summary['n_boxes']} boxes)")
    if summary["n_images"]:
        for key in ("protected", "leak_rate", "leak_rate_ge16", "leak_ge16_not_detected", "leak_ge16_under_covered",
                    "recall_iou50", "precision_iou50", "over_masking", "images_per_second", "n_apart"):
            print(f"  {key:18s} {_fmt(summary[key])}")
        print("  by box height (leak rate, boxes; of them not detected / under-covered):")
        for bucket, leak in summary["leak_by_height"].items():
            causes = summary["leak_causes_by_height"][bucket]
            print(f"    {bucket:6s} {_fmt(leak)}  n={summary['by_height_n'][bucket]}  "
                  f"({_fmt(causes['not_detected'])} / {_fmt(causes['under_covered'])})")
        print("  hard and per-source subsets (leak rate overall, by box height):")
        for tag, row in summary["by_tag"].items():
            heights = " ".join(f"{b}:{_fmt(v)}" for b, v in row["leak_by_height"].items())
            print(f"    {tag}: leak {_fmt(row['leak_rate'])} n={row['n']}  [{heights}]")
    for v in summary.get("videos", []):
        print(f"  video {v['file']}: {v['frames']} frames, {v['tracks']} tracks, {v['masks']} masks, "
              f"flicker {v['flicker']}, ground truth: {v['ground_truth']}")
        if v["ground_truth"] == "mot":
            heights = " ".join(f"{b}:{_fmt(x)}" for b, x in v["leak_by_height"].items())
            print(f"    leaked face-frames >= 16 px {_fmt(v['leaked_face_frames_ge16'])} of {v['face_frames']} "
                  f"(not detected {_fmt(v['leak_ge16_not_detected'])}, under-covered "
                  f"{_fmt(v['leak_ge16_under_covered'])}) [{heights}]; leaked faces per minute "
                  f"{_fmt(v['leaked_faces_per_minute'])}, cut by the edge {_fmt(v['edge_leaked_faces_per_minute'])}")
    print(json.dumps(summary, sort_keys=True, default=float))
