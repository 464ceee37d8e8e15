"""A labelled video made from labelled photos: a camera panning across each photo in turn, with
per-frame ground truth in the MOT form anon-ray-eval reads (tools/evaluate.py, load_mot).

../shared/data/eval has labelled video for faces (videos_gt) but none for plates, and a video
frame gets other passes than a photo (no tiles, the frame shrunk to the plate model's 640 px), so
the photo figures say little about a plate in 720p footage. Each photo is enlarged to cover the
frame `zoom` times over and crossed from side to side (alternate photos the other way, with a
vertical sway), so plates move, enter and leave across the frame edges as in a drive-by.

    python -m anon_ray.tools.pan_video ../shared/data/eval/plates_openimages /tmp/plates_pan
    anon-ray-eval dataset=/tmp/plates_pan target=plate

Writes OUT/pan.mp4 (H.264, CRF 18), OUT/pan_gt.txt (frame from 1, id, x, y, w, h, 1, 1, 1), its
sidecar OUT/pan_gt.json (the rows a frame edge cuts) and OUT/annotations.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import av
import cv2
import numpy as np

NAME = "pan"


@dataclass(frozen=True)
class PanConfig:
    photos: int = 16  # every len/photos-th photo of the set, in file-name order
    frames_per_photo: int = 36
    width: int = 1280
    height: int = 720
    zoom: float = 1.25  # the enlarged photo is this many times the size that just covers the frame
    fps: int = 25


def pick(rows: list[dict], count: int) -> list[dict]:
    """Photos with at least one label, spread evenly over the set in file-name order."""
    labelled = sorted((r for r in rows if r["boxes"]), key=lambda r: r["file"])
    step = max(1, len(labelled) // max(count, 1))
    return labelled[::step][:count]


def frames_of(rgb: np.ndarray, boxes: np.ndarray, k: int, cfg: PanConfig
              ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(frame, the indices of the `boxes` in it, those boxes clipped to the frame (float64 (n, 4)),
    bool (n,) cut by an edge) for the pan over photo number `k`; a box less than 2 px wide or tall
    once clipped is left out."""
    h, w = rgb.shape[:2]
    scale = max(cfg.width / w, cfg.height / h) * cfg.zoom
    big = cv2.resize(rgb, (max(cfg.width, round(w * scale)), max(cfg.height, round(h * scale))),
                     interpolation=cv2.INTER_CUBIC)
    sx, sy = big.shape[1] / w, big.shape[0] / h
    for t in range(cfg.frames_per_photo):
        a = t / max(cfg.frames_per_photo - 1, 1)
        a = 1.0 - a if k % 2 else a
        x = round(a * (big.shape[1] - cfg.width))
        y = round((0.5 + 0.5 * math.sin(3.0 * a)) * (big.shape[0] - cfg.height))
        moved = boxes * [sx, sy, sx, sy] - [x, y, x, y]
        clipped = np.clip(moved, 0, [cfg.width, cfg.height, cfg.width, cfg.height])
        keep = (clipped[:, 2] - clipped[:, 0] >= 2) & (clipped[:, 3] - clipped[:, 1] >= 2)
        cut = np.any(clipped != moved, axis=1)
        frame = np.ascontiguousarray(big[y:y + cfg.height, x:x + cfg.width])
        yield frame, np.flatnonzero(keep), clipped[keep], cut[keep]


def make(dataset: str, out: str, cfg: PanConfig = PanConfig()) -> int:
    """Write the pan over `dataset`'s photos into `out`; returns the number of labelled rows."""
    with open(os.path.join(dataset, "annotations.jsonl"), encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    os.makedirs(out, exist_ok=True)
    photos = pick(rows, cfg.photos)
    truth, cuts = [], []
    with av.open(os.path.join(out, f"{NAME}.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=cfg.fps)
        stream.width, stream.height, stream.pix_fmt = cfg.width, cfg.height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        number = 0
        for k, row in enumerate(photos):
            bgr = cv2.imread(os.path.join(dataset, row["file"]), cv2.IMREAD_COLOR)
            boxes = np.asarray(row["boxes"], np.float64).reshape(-1, 4)
            for frame, index, shown, cut in frames_of(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), boxes, k, cfg):
                number += 1
                for box_id, box, edge in zip(k * 1000 + 1 + index, shown, cut):
                    truth.append(f"{number},{box_id},{box[0]:.2f},{box[1]:.2f},{box[2] - box[0]:.2f},"
                                 f"{box[3] - box[1]:.2f},1,1,1")
                    cuts.append([number, int(box_id), bool(edge)])
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    with open(os.path.join(out, f"{NAME}_gt.txt"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(truth) + "\n")
    with open(os.path.join(out, f"{NAME}_gt.json"), "w", encoding="utf-8") as fh:
        json.dump({"columns": ["frame", "id", "truncated"], "rows": cuts}, fh)
    with open(os.path.join(out, "annotations.jsonl"), "w", encoding="utf-8") as fh:
        meta = {"mot": f"{NAME}_gt.txt", "flags": f"{NAME}_gt.json", "photos": [r["file"] for r in photos]}
        fh.write(json.dumps({"file": f"{NAME}.mp4", "boxes": [], "source": dataset, "meta": meta}) + "\n")
    return len(truth)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="a labelled photo folder (annotations.jsonl)")
    parser.add_argument("out", help="where the video, its ground truth and annotations.jsonl go")
    parser.add_argument("--photos", type=int, default=PanConfig.photos)
    parser.add_argument("--frames-per-photo", type=int, default=PanConfig.frames_per_photo)
    args = parser.parse_args(argv)
    rows = make(args.dataset, args.out, PanConfig(photos=args.photos, frames_per_photo=args.frames_per_photo))
    print(f"{args.out}/{NAME}.mp4: {rows} labelled rows")


if __name__ == "__main__":
    main()
