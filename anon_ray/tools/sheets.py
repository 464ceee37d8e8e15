"""Contact sheets for the review queue: a few frames of an asset's MASKED output in one JPEG.

Frames come from the output the job wrote (never from the input), so a sheet shows only what
is about to be published; each sheet goes to `_anon_ray/review/sheets/<relpath>.jpg` in the
output store, beside the other review material (io/review.py), readable by whoever can read the
outputs. The frames are those the manifest row names (`review_frames`, core/risk.py).
"""

from __future__ import annotations

import json

import cv2
import numpy as np

from anon_ray.config import ImageConfig, StorageConfig
from anon_ray.io import review, storage
from anon_ray.media import image as image_io
from anon_ray.media import packets
from anon_ray.media.decode import decode

THUMB_W = 320
COLUMNS = 4


def _frames(path: str, kind: str, wanted: list[int]) -> list[tuple[int, np.ndarray]]:
    if kind == "image":
        return [(0, image_io.read_image(path, ImageConfig()).rgb)]
    index = packets.scan_packets(path)
    wanted = sorted({f for f in wanted if 0 <= f < len(index)})
    if not wanted:
        return []
    keep = set(wanted)
    return [(i, rgb) for i, _, rgb in decode(path, None, index, wanted[0], wanted[-1] + 1) if i in keep]


def sheet(frames: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """RGB tiles of THUMB_W px, COLUMNS per row, each labelled with its frame number."""
    tiles = []
    for i, rgb in frames:
        h = max(1, round(rgb.shape[0] * THUMB_W / rgb.shape[1]))
        tile = cv2.resize(rgb, (THUMB_W, h), interpolation=cv2.INTER_AREA)
        cv2.putText(tile, f"frame {i}", (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 0), 2, cv2.LINE_AA)
        tiles.append(tile)
    height = max(t.shape[0] for t in tiles)
    rows = []
    for k in range(0, len(tiles), COLUMNS):
        row = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0))) for t in tiles[k:k + COLUMNS]]
        row += [np.zeros((height, THUMB_W, 3), np.uint8)] * (COLUMNS - len(row))
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def write_sheet(output: str, row: dict, cfg: StorageConfig) -> str | None:
    """The sheet of one manifest row (`relpath`, `kind`, `output_uri`, `review_frames` as a JSON
    list) written to the review area; its URI, or None when the output has none of the frames."""
    with storage.local_copy(row["output_uri"], cfg) as path:
        frames = _frames(path, row["kind"], json.loads(row["review_frames"] or "[0]"))
    if not frames:
        return None
    ok, jpeg = cv2.imencode(".jpg", sheet(frames)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise ValueError("JPEG encoding of a contact sheet failed")
    uri = review.sheet_uri(output, row["relpath"])
    storage.write_bytes_atomic(uri, jpeg.tobytes(), cfg)
    return uri
