"""The audit manifest: Parquet rows per asset per run, written as the run goes (crash-safe).

Rows are flushed in small chunk files under `_anon_ray/rows/` while a run is going, and folded
into `_anon_ray/manifest.parquet` when it ends; readers take both, so a crashed run's finished
assets still count as done on the next run (I4).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from anon_ray.config import AppConfig, StorageConfig
from anon_ray.io import storage
from anon_ray.io.inventory import INTERNAL_DIR
from anon_ray.types import AssetRecord

# AssetRecord's annotations are strings (postponed evaluation), hence the keys.
_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
SCHEMA = pa.schema([(f.name, _ARROW_TYPES[f.type]) for f in dataclasses.fields(AssetRecord)])
# stitch.track_table's columns, plus where the rows come from; the box lists stay null unless
# audit.boxes is on (box positions are personal data's location).
TRACK_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("relpath", pa.string()), ("track", pa.int64()), ("cls", pa.int8()),
    ("first_frame", pa.int64()), ("last_frame", pa.int64()), ("frames", pa.int64()),
    ("frame", pa.list_(pa.int64())), ("x1", pa.list_(pa.float32())), ("y1", pa.list_(pa.float32())),
    ("x2", pa.list_(pa.float32())), ("y2", pa.list_(pa.float32())),
])


def _conform(table: pa.Table) -> pa.Table:
    """Put a tracks table in TRACK_SCHEMA's column order, with nulls for absent box columns."""
    n = table.num_rows
    cols = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(n, f.type)
            for f in TRACK_SCHEMA]
    return pa.Table.from_arrays(cols, schema=TRACK_SCHEMA)


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def config_hash(cfg: AppConfig, model_hashes: dict[str, str]) -> str:
    """Hash of everything that changes output pixels; where or how the job runs does not count."""
    relevant = {k: dataclasses.asdict(getattr(cfg, k)) for k in ("detect", "mask", "track", "video", "image")}
    relevant["detect"].pop("session")
    relevant["models"] = model_hashes
    blob = json.dumps(relevant, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _dir(output: str) -> str:
    return storage.join(output, INTERNAL_DIR)


def _write_table(uri: str, table: pa.Table, cfg: StorageConfig) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes_atomic(uri, sink.getvalue().to_pybytes(), cfg)


def _chunks(output: str, name: str, cfg: StorageConfig) -> list[str]:
    return sorted(u for u in storage.list_uris(storage.join(_dir(output), name), cfg) if u.endswith(".parquet"))


def _read_all(output: str, name: str, schema: pa.Schema, cfg: StorageConfig, columns: list[str] | None = None) -> pa.Table:
    tables = []
    for uri in [storage.join(_dir(output), f"{name}.parquet"), *_chunks(output, name, cfg)]:
        try:
            data = storage.read_bytes(uri, cfg)
        except FileNotFoundError:
            continue
        tables.append(pq.read_table(pa.BufferReader(data), columns=columns))
    target = pa.schema([schema.field(c) for c in columns]) if columns else schema
    return pa.concat_tables([t.cast(target) for t in tables]) if tables else target.empty_table()


def read_manifest(output: str, cfg: StorageConfig, columns: list[str] | None = None) -> pa.Table:
    return _read_all(output, "manifest", SCHEMA, cfg, columns)


def read_tracks(output: str, cfg: StorageConfig) -> pa.Table:
    return _read_all(output, "tracks", TRACK_SCHEMA, cfg)


def done_versions(output: str, cfg: StorageConfig) -> dict[str, tuple[str, str]]:
    """relpath -> (input_version, config_hash) of its latest successful row."""
    table = read_manifest(output, cfg, ["relpath", "status", "input_version", "config_hash"])
    table = table.filter(pc.field("status") == "ok")
    rel, ver, cfg = (table.column(c).to_pylist() for c in ("relpath", "input_version", "config_hash"))
    return {r: (v, c) for r, v, c in zip(rel, ver, cfg)}


class ManifestWriter:
    """Buffers rows and flushes them in chunks; `close` folds chunks into the main files."""

    def __init__(self, output: str, run_id: str, cfg: StorageConfig, flush_rows: int = 64,
                 flush_seconds: float = 10.0):
        self.output, self.run_id, self.cfg = output, run_id, cfg
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.rows: list[AssetRecord] = []
        self.tracks: list[pa.Table] = []
        self.seq = 0
        self.last = time.monotonic()

    def add(self, record: AssetRecord, tracks: pa.Table | None = None) -> None:
        self.rows.append(record)
        if tracks is not None and tracks.num_rows:
            self.tracks.append(_conform(tracks))
        if len(self.rows) >= self.flush_rows or time.monotonic() - self.last > self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            table = pa.Table.from_pylist([dataclasses.asdict(r) for r in self.rows], schema=SCHEMA)
            _write_table(storage.join(_dir(self.output), "manifest", f"{self.run_id}-{self.seq:05d}.parquet"),
                         table, self.cfg)
        if self.tracks:
            _write_table(storage.join(_dir(self.output), "tracks", f"{self.run_id}-{self.seq:05d}.parquet"),
                         pa.concat_tables(self.tracks), self.cfg)
        self.seq += 1
        self.rows, self.tracks, self.last = [], [], time.monotonic()

    def close(self) -> None:
        self.flush()
        for name, schema in (("manifest", SCHEMA), ("tracks", TRACK_SCHEMA)):
            chunks = _chunks(self.output, name, self.cfg)
            if not chunks:
                continue
            folded = _read_all(self.output, name, schema, self.cfg)
            _write_table(storage.join(_dir(self.output), f"{name}.parquet"), folded, self.cfg)
            for uri in chunks:
                storage.remove(uri, self.cfg)
