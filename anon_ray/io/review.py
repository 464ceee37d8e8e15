"""Where an asset's review material lives in the output store, and its boxes file's format.

`_anon_ray/review/boxes/<relpath>.parquet`: every box the job masked on the asset (untracked ones
included): frame, x1, y1, x2, y2 (stored pixels), score, cls, track, with the run, config hash and
input version in the file's metadata. Written only with `review.boxes` (box positions locate
personal data: off by default, I5); a re-render reads them instead of running a detector.

`_anon_ray/review/overrides/<relpath>.json`: a reviewer's corrections (core/overrides.py).
`_anon_ray/review/sheets/<relpath>.jpg`: frames of the masked output for the review queue.

Both sit in the output store's internal folder, readable by whoever can read the outputs; neither
holds pixels. The unmasked material a re-render needs is the input itself, read where it lives.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from anon_ray.config import StorageConfig
from anon_ray.io import storage
from anon_ray.io.inventory import INTERNAL_DIR
from anon_ray.types import Detections

_META = b"anon_ray"
_COLUMNS = ("frame", "x1", "y1", "x2", "y2", "score", "cls", "track")


def _area(output: str, kind: str, relpath: str, suffix: str) -> str:
    return storage.safe_join(storage.join(output, INTERNAL_DIR, "review", kind), relpath + suffix)


def boxes_uri(output: str, relpath: str) -> str:
    return _area(output, "boxes", relpath, ".parquet")


def overrides_uri(output: str, relpath: str) -> str:
    return _area(output, "overrides", relpath, ".json")


def sheet_uri(output: str, relpath: str) -> str:
    """A contact sheet of the masked output's frames (tools/sheets.py)."""
    return _area(output, "sheets", relpath, ".jpg")


def write_boxes(uri: str, dets: Detections, meta: dict, cfg: StorageConfig) -> None:
    """`meta`: small JSON-able facts about the run that made the boxes (run_id, config_hash, ...)."""
    table = pa.table({
        "frame": pa.array(dets.frame, pa.int64()),
        **{name: pa.array(dets.xyxy[:, c], pa.float32()) for c, name in enumerate(("x1", "y1", "x2", "y2"))},
        "score": pa.array(dets.score, pa.float32()), "cls": pa.array(dets.cls, pa.int8()),
        "track": pa.array(dets.track, pa.int64()),
    }).replace_schema_metadata({_META: json.dumps(meta, sort_keys=True).encode()})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes_atomic(uri, sink.getvalue().to_pybytes(), cfg)


def read_boxes(uri: str, cfg: StorageConfig) -> tuple[Detections, dict]:
    """The boxes and the metadata `write_boxes` stored (raises FileNotFoundError when absent)."""
    with storage.local_copy(uri, cfg) as path:
        table = pq.read_table(path, columns=list(_COLUMNS))
    meta = json.loads((table.schema.metadata or {}).get(_META, b"{}"))
    col = {c: table.column(c).to_numpy() for c in _COLUMNS}
    return Detections.build(col["frame"], np.stack([col[c] for c in ("x1", "y1", "x2", "y2")], axis=1),
                            col["score"], col["cls"], col["track"]), meta


def listed_overrides(output: str, cfg: StorageConfig) -> list[str]:
    """Relpaths of the assets that have an overrides file, sorted."""
    root = storage.join(output, INTERNAL_DIR, "review", "overrides")
    return sorted(u[len(root) + 1: -len(".json")] for u in storage.list_uris(root, cfg) if u.endswith(".json"))
