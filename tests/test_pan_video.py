"""The labelled pan video (tools/pan_video.py): its ground truth lies on the pixels it labels."""

from __future__ import annotations

import json

import av
import cv2
import numpy as np
from conftest import annotations

from anon_ray.tools.evaluate import load_items, load_mot
from anon_ray.tools.pan_video import PanConfig, make, pick


def test_pan_ground_truth_lies_on_the_labelled_pixels(eval_data, tmp_path):
    cfg = PanConfig(photos=2, frames_per_photo=6, width=640, height=360)
    rows = make(str(eval_data / "plates_openimages"), str(tmp_path), cfg)
    (item,) = load_items(str(tmp_path))
    truth = load_mot(item.mot, item.flags)
    assert sum(len(t.ids) for t in truth.values()) == rows > 0
    frames = [f.to_ndarray(format="rgb24") for f in av.open(item.file).decode(video=0)]
    assert len(frames) == 12 and frames[0].shape == (360, 640, 3)
    photos = {r["file"]: r for r in annotations(eval_data / "plates_openimages")}
    chosen = pick(list(photos.values()), 2)
    assert json.loads((tmp_path / "annotations.jsonl").read_text())["meta"]["photos"] == [r["file"] for r in chosen]
    checked = 0
    for f, t in truth.items():
        photo = chosen[t.ids[0] // 1000]
        bgr = cv2.imread(str(eval_data / "plates_openimages" / photo["file"]))
        for box_id, box, cut in zip(t.ids, t.boxes, t.truncated):
            x0, y0, x1, y1 = np.round(box).astype(int)
            touches = x0 <= 0 or y0 <= 0 or x1 >= 640 or y1 >= 360
            assert touches or not cut  # a cut box ends on the frame's edge
            if cut or min(x1 - x0, y1 - y0) < 12:
                continue
            label = np.asarray(photo["boxes"][box_id % 1000 - 1], float)
            want = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[round(label[1]):round(label[3]),
                                                                   round(label[0]):round(label[2])], (x1 - x0, y1 - y0))
            got = frames[f][y0:y1, x0:x1]
            near = np.abs(got.astype(float) - want).mean()
            # The same patch but 25% of its width along: a box that is off would look like this.
            dx = max(1, (x1 - x0) // 4) * (1 if x0 < 320 else -1)
            off = np.abs(frames[f][y0:y1, x0 + dx:x1 + dx].astype(float) - want).mean()
            assert near < 20 and near < 0.5 * off, (f, box_id, near, off)
            checked += 1
    assert checked >= 6 and any(t.truncated.any() for t in truth.values())  # plates cross the edges
