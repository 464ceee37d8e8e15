"""A reviewer's corrections to one asset's masks, as data: parsed, checked, applied to its boxes.

An overrides file is JSON (UTF-8), one per asset; coordinates are pixels of the frame as it is
shown (upright: rotation applied), frame numbers count displayed frames from 0, ranges are
inclusive. Every key is checked: a misspelt key fails the file instead of dropping a correction.

    {
      "version": 1,
      "boxes_run": "20261205T120000Z-1a2b3c4d",   # optional: the run whose boxes these refer to
      "exclude": false,                          # true: the asset gets no output at all
      "add": [
        {"box": [x1, y1, x2, y2]},                            # every frame (a screen, an overlay)
        {"box": [x1, y1, x2, y2], "frames": [10, 80]},        # frames 10 to 80
        {"box": [x1, y1, x2, y2], "track": 3, "at": 40,       # follows track 3: `box` as drawn on
         "frames": [0, 120], "cls": "face"}                   # frame 40, moved and scaled with it
      ],
      "suppress": [
        {"track": 3},                                         # every box of a track
        {"frame": 12, "box": [x1, y1, x2, y2]}                # the boxes of frame 12 it overlaps
      ]
    }

`cls` of an added box: "region" (default: masked as drawn, a rectangle, no margin), "face" or
"plate" (the class's margins and shape, as a detection of it). Suppression applies to the stored
boxes before anything is added, and a followed track may be one that is suppressed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from anon_ray.types import CLASS_NAMES, REGION, Detections

VERSION = 1
SUPPRESS_IOU = 0.5  # a suppression box names the stored boxes of its frame it overlaps this much
_ADD_KEYS = {"box", "frames", "track", "at", "cls"}
_TOP_KEYS = {"version", "boxes_run", "exclude", "add", "suppress"}


class OverridesError(ValueError):
    """The file does not follow the schema (the message names the entry, never its content)."""


@dataclass(frozen=True)
class Overrides:
    """Columns per added box (`add_*`) and per suppression (`sup_*`); boxes in shown pixels.

    add_first/add_last: inclusive frame range (-1/-1: every frame); add_track: the followed track
    (-1: none) and add_at the frame `add_xyxy` was drawn on. sup_track: a track (-1: a box
    instead); sup_frame/sup_xyxy: that box's frame and box.
    """

    exclude: bool
    boxes_run: str
    add_xyxy: np.ndarray  # float32 (a, 4)
    add_first: np.ndarray  # int64 (a,)
    add_last: np.ndarray
    add_track: np.ndarray
    add_at: np.ndarray
    add_cls: np.ndarray  # int8 (a,)
    sup_track: np.ndarray  # int64 (s,)
    sup_frame: np.ndarray
    sup_xyxy: np.ndarray  # float32 (s, 4)

    def mapped(self, fn) -> "Overrides":
        """The same overrides with every box passed through `fn` ((n, 4) -> (n, 4)), e.g. shown ->
        stored pixels of a rotated video."""
        return Overrides(self.exclude, self.boxes_run, _boxes(fn(self.add_xyxy)), self.add_first, self.add_last,
                         self.add_track, self.add_at, self.add_cls, self.sup_track, self.sup_frame,
                         _boxes(fn(self.sup_xyxy)))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _boxes(a) -> np.ndarray:
    return np.asarray(a, np.float32).reshape(-1, 4)


def _box(value, where: str) -> list[float]:
    if not (isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value)):
        raise OverridesError(f"{where}: box must be [x1, y1, x2, y2] in pixels")
    x1, y1, x2, y2 = (float(v) for v in value)
    if not (np.isfinite([x1, y1, x2, y2]).all() and x2 > x1 and y2 > y1):
        raise OverridesError(f"{where}: box must have x2 > x1 and y2 > y1")
    return [x1, y1, x2, y2]


def _frame(value, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise OverridesError(f"{where}: must be a frame number (an integer >= 0)")
    return value


def _entries(doc: dict, key: str) -> list[dict]:
    items = doc.get(key, [])
    if not isinstance(items, list) or not all(isinstance(e, dict) for e in items):
        raise OverridesError(f"{key}: must be a list of objects")
    return items


def parse(data: bytes) -> Overrides:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OverridesError(f"not JSON in UTF-8 ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise OverridesError(f"must be a JSON object with \"version\": {VERSION}")
    if unknown := set(doc) - _TOP_KEYS:
        raise OverridesError(f"unknown keys {sorted(unknown)}")
    if not isinstance(doc.get("exclude", False), bool) or not isinstance(doc.get("boxes_run", ""), str):
        raise OverridesError("exclude must be true or false, boxes_run a run id")
    add = []
    for k, e in enumerate(_entries(doc, "add")):
        where = f"add[{k}]"
        if unknown := set(e) - _ADD_KEYS:
            raise OverridesError(f"{where}: unknown keys {sorted(unknown)}")
        first, last = -1, -1
        if "frames" in e:
            fr = e["frames"]
            if not (isinstance(fr, list) and len(fr) == 2):
                raise OverridesError(f"{where}: frames must be [first, last]")
            first, last = _frame(fr[0], where + ".frames"), _frame(fr[1], where + ".frames")
            if last < first:
                raise OverridesError(f"{where}: frames must have first <= last")
        track, at = -1, -1
        if ("track" in e) != ("at" in e):
            raise OverridesError(f"{where}: a box that follows a track needs both track and at")
        if "track" in e:
            track, at = _frame(e["track"], where + ".track"), _frame(e["at"], where + ".at")
        names = {n: c for c, n in enumerate(CLASS_NAMES)}
        if e.get("cls", "region") not in names:
            raise OverridesError(f"{where}: cls must be one of {list(CLASS_NAMES)}")
        add.append((_box(e.get("box"), where), first, last, track, at, names[e.get("cls", "region")]))
    sup = []
    for k, e in enumerate(_entries(doc, "suppress")):
        where = f"suppress[{k}]"
        if set(e) == {"track"}:
            sup.append((_frame(e["track"], where + ".track"), -1, [0.0, 0.0, 1.0, 1.0]))
        elif set(e) == {"frame", "box"}:
            sup.append((-1, _frame(e["frame"], where + ".frame"), _box(e["box"], where)))
        else:
            raise OverridesError(f"{where}: must be {{\"track\"}} or {{\"frame\", \"box\"}}")
    col = lambda rows, i, dt: np.array([r[i] for r in rows], dt)  # noqa: E731
    return Overrides(
        exclude=doc.get("exclude", False), boxes_run=doc.get("boxes_run", ""),
        add_xyxy=_boxes([r[0] for r in add]), add_first=col(add, 1, np.int64), add_last=col(add, 2, np.int64),
        add_track=col(add, 3, np.int64), add_at=col(add, 4, np.int64), add_cls=col(add, 5, np.int8),
        sup_track=col(sup, 0, np.int64), sup_frame=col(sup, 1, np.int64), sup_xyxy=_boxes([r[2] for r in sup]))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) IoU of box `a` (4,) against boxes `b` (n, 4)."""
    w = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / np.maximum(union, 1e-9)


def _suppressed(boxes: Detections, ov: Overrides) -> np.ndarray:
    gone = np.isin(boxes.track, ov.sup_track[ov.sup_track >= 0])
    for frame, box in zip(ov.sup_frame[ov.sup_track < 0], ov.sup_xyxy[ov.sup_track < 0]):
        on = np.flatnonzero(boxes.frame == frame)
        gone[on[_iou(box, boxes.xyxy[on]) >= SUPPRESS_IOU]] = True
    return gone


def _followed(boxes: Detections, k: int, ov: Overrides, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frames of `frames` where the followed track has a box, and the added box there: drawn
    relative to the track's box on frame `at`, it keeps its offset and size in units of that box."""
    mine = boxes.select(boxes.track == ov.add_track[k])
    anchor = mine.xyxy[mine.frame == ov.add_at[k]]
    if not len(anchor):
        raise OverridesError(f"add[{k}]: track {ov.add_track[k]} has no box on frame {ov.add_at[k]}")
    a = anchor[0].astype(np.float64)
    size = np.maximum(a[2:] - a[:2], 1e-6)
    rel = (ov.add_xyxy[k].astype(np.float64) - np.r_[a[:2], a[:2]]) / np.r_[size, size]
    on = np.isin(mine.frame, frames)
    t = mine.xyxy[on].astype(np.float64)
    tsize = t[:, 2:] - t[:, :2]
    moved = np.c_[t[:, :2], t[:, :2]] + rel * np.c_[tsize, tsize]
    return mine.frame[on], moved


def apply(boxes: Detections, ov: Overrides, n_frames: int) -> Detections:
    """`boxes` (an asset's stored boxes, in the same pixels as `ov`) corrected: suppressed rows
    dropped, added boxes appended on each of their frames below `n_frames`, each added entry with
    a track id of its own after the stored ones (so counts and tables see one object per entry)."""
    kept = boxes.select(~_suppressed(boxes, ov))
    next_id = int(boxes.track.max()) + 1 if len(boxes) and boxes.track.max() >= 0 else 0
    parts = [kept]
    for k in range(len(ov.add_xyxy)):
        first = 0 if ov.add_first[k] < 0 else ov.add_first[k]
        last = n_frames - 1 if ov.add_last[k] < 0 else min(ov.add_last[k], n_frames - 1)
        frames = np.arange(first, last + 1, dtype=np.int64)
        if ov.add_track[k] >= 0:
            frames, xyxy = _followed(boxes, k, ov, frames)
        else:
            xyxy = np.repeat(ov.add_xyxy[k][None], len(frames), axis=0)
        parts.append(Detections.build(frames, xyxy, np.ones(len(frames)), ov.add_cls[k], np.full(len(frames), next_id + k)))
    return Detections.concat(parts)
