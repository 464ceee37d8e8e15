"""The audit manifest: Parquet rows per asset per run, written as the run goes (crash-safe).

Layout under `_anon_ray/` (`tracks/` is laid out as `manifest/`):
- `manifest/<run_id>-<seq>.parquet`: chunks flushed while a run goes, so a crashed run's finished
  assets still count as done on the next run (I4);
- `manifest/<run_id>.parquet`: a run's chunks folded into one file when it ends. A run writes
  only its own rows: no run rewrites the history, which grows by a row per listed asset per run;
- `manifest.parquet`: everything, as versions before per-run files folded it; still read first;
- `done/<run_id>.npz`: the skip index (`DoneIndex`) as of that run's end, so the next run reads
  16 bytes per asset instead of the rows of every run before it.
Run ids sort in start order, so files read in name order are read oldest first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
import time
import urllib.parse
import uuid
import zipfile
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from anon_ray import __version__
from anon_ray.config import AppConfig, StorageConfig
from anon_ray.io import storage
from anon_ray.io.files import remove_quietly
from anon_ray.io.inventory import INTERNAL_DIR
from anon_ray.types import AssetRecord, Detections

log = logging.getLogger(__name__)

# AssetRecord's annotations are strings (postponed evaluation), hence the keys.
_ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string()}
SCHEMA = pa.schema([(f.name, _ARROW_TYPES[f.type]) for f in dataclasses.fields(AssetRecord)])
BATCH_ROWS = 16_384  # rows a row group of a folded manifest holds
# Rows decoded at a time when paging through a manifest: Arrow's reader holds buffers for a whole
# batch of every column read, so 16,384 rows of all 30 columns peaked at 26 MB in its pool (2,048: 9).
READ_ROWS = 2_048
# track_table's columns, plus where the rows come from; the box lists stay null unless
# audit.boxes is on (box positions are personal data's location).
TRACK_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("relpath", pa.string()), ("track", pa.int64()), ("cls", pa.int8()),
    ("first_frame", pa.int64()), ("last_frame", pa.int64()), ("frames", pa.int64()),
    ("frame", pa.list_(pa.int64())), ("x1", pa.list_(pa.float32())), ("y1", pa.list_(pa.float32())),
    ("x2", pa.list_(pa.float32())), ("y2", pa.list_(pa.float32())),
])


def _conform(table: pa.Table | pa.RecordBatch, schema: pa.Schema) -> pa.Table:
    """Put rows in `schema`'s column order and types, with nulls for absent columns: tracks tables
    without box lists, and manifests written before a column was added."""
    n = table.num_rows
    names = table.schema.names
    cols = [table.column(f.name).cast(f.type) if f.name in names else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def track_table(dets: Detections, boxes: bool) -> pa.Table:
    """One row per track (track >= 0): id, class, first and last frame, frames masked.

    With `boxes`, the per-frame boxes too as list columns (frame, x1, y1, x2, y2), sorted by frame;
    they are personal data's location, hence off by default (audit.boxes). Untracked detections
    are not listed here.
    """
    t = dets.select(dets.track >= 0)
    t = t.select(np.lexsort((t.frame, t.track)))
    ids, start, count = np.unique(t.track, return_index=True, return_counts=True)
    new_frame = np.r_[True, (np.diff(t.track) != 0) | (np.diff(t.frame) != 0)][: len(t)]
    columns = {
        "track": pa.array(ids, pa.int64()),
        "cls": pa.array(t.cls[start], pa.int8()),
        "first_frame": pa.array(t.frame[start], pa.int64()),
        "last_frame": pa.array(t.frame[start + count - 1], pa.int64()),
        "frames": pa.array(np.add.reduceat(new_frame.astype(np.int64), start) if len(t) else [], pa.int64()),
    }
    if boxes:
        offsets = pa.array(np.r_[start, len(t)].astype(np.int32))
        columns["frame"] = pa.ListArray.from_arrays(offsets, pa.array(t.frame, pa.int64()))
        for c, name in enumerate(("x1", "y1", "x2", "y2")):
            columns[name] = pa.ListArray.from_arrays(offsets, pa.array(t.xyxy[:, c], pa.float32()))
    return pa.table(columns)


def new_run_id() -> str:
    """A UTC start time to the microsecond, then a random part: ids sort in start order (the
    latest row of an asset is its last run's, report.latest), also for a re-render that starts
    within the second of the job before it."""
    now = time.time()
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now))}{int(now % 1 * 1e6):06d}Z-{uuid.uuid4().hex[:8]}"


def config_hash(cfg: AppConfig, model_hashes: dict[str, str]) -> str:
    """Hash of everything that changes output pixels; where or how the job runs does not count."""
    return hash_config(dataclasses.asdict(cfg), model_hashes)


def hash_config(config: dict, model_hashes: dict[str, str]) -> str:
    """config_hash of a config as a plain dict (AppConfig's, or a run's saved JSON)."""
    relevant = {k: dict(config[k]) for k in ("detect", "mask", "track", "video", "image")}
    relevant["detect"].pop("session")
    relevant["models"] = model_hashes
    blob = json.dumps(relevant, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _without_userinfo(value: str) -> str:
    """A URL with its user:password part masked (an endpoint can carry one); anything else as is."""
    parts = urllib.parse.urlsplit(value) if "://" in value else None
    if parts is None or "@" not in parts.netloc:
        return value
    return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def run_config_uri(output: str, run_id: str) -> str:
    return storage.join(_dir(output), "runs", f"{run_id}.json")


def write_run_config(cfg: AppConfig, run_id: str, chash: str, model_hashes: dict[str, str]) -> None:
    """`_anon_ray/runs/<run_id>.json`: the run's whole resolved config beside the manifest, whose
    rows hold only its hash (`hash_config` of its "config" gives that hash back). URLs lose any
    user:password part; credentials never come from the config (standard AWS chain)."""
    config = dataclasses.asdict(cfg)
    config["input"], config["output"] = _without_userinfo(cfg.input), _without_userinfo(cfg.output)
    config["storage"]["endpoint_url"] = _without_userinfo(cfg.storage.endpoint_url)
    doc = {"run_id": run_id, "config_hash": chash, "models": model_hashes, "tool_version": __version__,
           "config": config}
    blob = json.dumps(doc, indent=2, sort_keys=True).encode()
    storage.write_bytes_atomic(run_config_uri(cfg.output, run_id), blob, cfg.storage)


def _dir(output: str) -> str:
    return storage.join(output, INTERNAL_DIR)


def _write_table(uri: str, table: pa.Table, cfg: StorageConfig) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes_atomic(uri, sink.getvalue().to_pybytes(), cfg)


def _run_of(uri: str) -> str:
    """The run a file of `manifest/` or `tracks/` holds rows of: `<run_id>.parquet` (folded) or
    `<run_id>-<seq>.parquet` (a chunk; run ids end in 8 hex digits, seqs are 5 digits)."""
    stem = uri.rsplit("/", 1)[-1].removesuffix(".parquet")
    return re.sub(r"-\d{5}$", "", stem)


def _run_files(output: str, name: str, cfg: StorageConfig) -> list[str]:
    """The folded runs and the chunks of runs not folded yet, oldest run first."""
    return sorted(u for u in storage.list_uris(storage.join(_dir(output), name), cfg) if u.endswith(".parquet"))


def _files(output: str, name: str, cfg: StorageConfig) -> list[str]:
    """Every file of rows, oldest first: the file folded by earlier versions, then the runs'."""
    return [storage.join(_dir(output), f"{name}.parquet"), *_run_files(output, name, cfg)]


def manifest_files(output: str, cfg: StorageConfig) -> list[str]:
    """The files that may hold manifest rows now: a run adds rows only in new files (chunks, then
    its fold), so while this list is the same the rows are too (only builds before per-run files
    rewrote manifest.parquet in place)."""
    return _files(output, "manifest", cfg)


def _batches(uri: str, schema: pa.Schema, cfg: StorageConfig) -> Iterator[pa.Table]:
    """The rows of one Parquet file in `schema`, a batch at a time (none if the file is absent):
    a manifest of millions of rows is paged through, never held."""
    try:
        with storage.local_copy(uri, cfg) as path:
            # No pre-buffering (a local copy gains nothing from it) and one thread (Arrow's decoding
            # threads each keep a heap of their own): ~50 MB less resident for the driver paging
            # through a million-row manifest, which it reads in seconds anyway.
            pf = pq.ParquetFile(path, pre_buffer=False)
            present = [n for n in schema.names if n in pf.schema_arrow.names]
            for batch in pf.iter_batches(batch_size=READ_ROWS, columns=present, use_threads=False):
                yield _conform(batch, schema)
    except FileNotFoundError:
        return


def _columns(schema: pa.Schema, columns: list[str] | None) -> pa.Schema:
    return pa.schema([schema.field(c) for c in columns]) if columns else schema


def _pages(output: str, name: str, schema: pa.Schema, cfg: StorageConfig) -> Iterator[pa.Table]:
    for uri in _files(output, name, cfg):
        yield from _batches(uri, schema, cfg)


def manifest_pages(output: str, cfg: StorageConfig, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """Every manifest row, oldest run first, a page of rows at a time: for readers that reduce the
    rows as they go (a month of nightly runs over a large archive is tens of millions of rows)."""
    return _pages(output, "manifest", _columns(SCHEMA, columns), cfg)


def tracks_pages(output: str, cfg: StorageConfig) -> Iterator[pa.Table]:
    return _pages(output, "tracks", TRACK_SCHEMA, cfg)


def _concat(pages: Iterator[pa.Table], schema: pa.Schema) -> pa.Table:
    tables = list(pages)
    return pa.concat_tables(tables) if tables else schema.empty_table()


def read_manifest(output: str, cfg: StorageConfig, columns: list[str] | None = None,
                  where: Callable[[pa.Table], pa.Table] | None = None) -> pa.Table:
    """The rows (`where`: only the rows it keeps of each page, so the rest are never held at once)."""
    pages = manifest_pages(output, cfg, columns)
    return _concat(map(where, pages) if where else pages, _columns(SCHEMA, columns))


def read_tracks(output: str, cfg: StorageConfig, where: Callable[[pa.Table], pa.Table] | None = None) -> pa.Table:
    """The tracks rows (`where`: as read_manifest's)."""
    pages = tracks_pages(output, cfg)
    return _concat(map(where, pages) if where else pages, TRACK_SCHEMA)


def _hash64(texts: list[str]) -> np.ndarray:
    # Names that are not valid UTF-8 were written with their bytes escaped (inventory.display_path).
    return np.fromiter((int.from_bytes(hashlib.blake2b(t.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
                                       "little") for t in texts), np.uint64, len(texts))


def _latest(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys sorted and unique, each with its last value (stable sort: later rows win)."""
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    last = np.append(keys[1:] != keys[:-1], True) if len(keys) else np.zeros(0, bool)
    return keys[last], values[last]


class DoneIndex:
    """relpath -> (input_version, config_hash) of its latest successful row, held as two sorted
    arrays of 64-bit hashes: 16 bytes per asset however long its name, so the driver of a run
    over millions of assets keeps the skip decision in a few tens of MB.

    A false skip needs a collision of both hashes at once (about 1e-19 for a million names).
    Each job saves the index as of its end (`save`), so the next reads that file and only the rows
    of runs after it; a file that cannot be read costs a read of every row, never a wrong skip.
    """

    MERGE_ROWS = 65_536  # fold pending rows into the index this often: memory stays O(assets), not O(rows)

    def __init__(self, keys: np.ndarray | None = None, values: np.ndarray | None = None) -> None:
        self.keys = np.zeros(0, np.uint64) if keys is None else keys
        self.values = np.zeros(0, np.uint64) if values is None else values

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def _value(versions: list[str], config_hashes: list[str]) -> np.ndarray:
        return _hash64([f"{v}\0{c}" for v, c in zip(versions, config_hashes)])

    @classmethod
    def read(cls, output: str, cfg: StorageConfig) -> DoneIndex:
        """The index the latest job saved, updated with the rows of every run after it; without
        one (outputs of earlier versions, or an unreadable file), built from every row."""
        saved = sorted(u for u in storage.list_uris(storage.join(_dir(output), "done"), cfg) if u.endswith(".npz"))
        index, since = cls(), None
        if saved:
            try:
                index, since = cls._load(saved[-1], cfg), saved[-1].rsplit("/", 1)[-1].removesuffix(".npz")
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                log.warning("skip index %s unreadable (%s): reading every manifest row instead", saved[-1], exc)
        files = _files(output, "manifest", cfg) if since is None else \
            [u for u in _run_files(output, "manifest", cfg) if _run_of(u) > since]
        index.absorb(files, cfg)
        return index

    @classmethod
    def _load(cls, uri: str, cfg: StorageConfig) -> DoneIndex:
        with storage.local_copy(uri, cfg) as path, np.load(path, allow_pickle=False) as saved:
            keys, values = saved["keys"], saved["values"]
        if keys.dtype != np.uint64 or values.dtype != np.uint64 or keys.shape != values.shape or keys.ndim != 1 \
                or not bool(np.all(keys[1:] > keys[:-1])):
            raise ValueError("not a sorted index of 64-bit keys and values")
        return cls(keys, values)

    def absorb(self, uris: list[str], cfg: StorageConfig) -> None:
        """Update the index with the successful rows of these manifest files, newer than it, oldest first."""
        wanted = pa.schema([SCHEMA.field(c) for c in ("relpath", "status", "input_version", "config_hash")])
        pending, rows = [], 0

        def merge() -> None:
            keys, values = (np.concatenate([p[i] for p in pending]) for i in (0, 1))
            pending.clear()
            self._update(keys, values)

        for uri in uris:
            for batch in _batches(uri, wanted, cfg):
                ok = batch.filter(pc.equal(batch["status"], "ok"))  # a mask: no Acero plan and its threads
                if not ok.num_rows:
                    continue
                rel, ver, chash = (ok.column(c).to_pylist() for c in ("relpath", "input_version", "config_hash"))
                pending.append((_hash64(rel), self._value(ver, chash)))
                rows += ok.num_rows
                if rows >= self.MERGE_ROWS:
                    merge()
                    rows = 0
        if pending:
            merge()
        pa.default_memory_pool().release_unused()  # the pages the read freed, back to the system

    def _update(self, new_keys: np.ndarray, new_values: np.ndarray) -> None:
        """Take rows newer than the index, in any order (a key's latest value wins): only the new
        rows are sorted, and the index is copied once, by the insertion, keys then values (sorting
        the concatenation took four copies: a million assets' peak)."""
        new_keys, new_values = _latest(new_keys, new_values)
        at = np.searchsorted(self.keys, new_keys)
        known = at < len(self.keys)
        known[known] = self.keys[at[known]] == new_keys[known]
        self.values[at[known]] = new_values[known]
        fresh = ~known
        self.keys = np.insert(self.keys, at[fresh], new_keys[fresh])
        self.values = np.insert(self.values, at[fresh], new_values[fresh])

    def save(self, output: str, run_id: str, cfg: StorageConfig) -> None:
        """Publish the index as `done/<run_id>.npz` (whole, I1), then remove the older ones."""
        folder = storage.join(_dir(output), "done")
        older = [u for u in storage.list_uris(folder, cfg) if u.endswith(".npz")]
        fd, tmp = tempfile.mkstemp(prefix=".anon-ray-done-", suffix=".npz")
        os.close(fd)
        try:
            np.savez(tmp, keys=self.keys, values=self.values)
            storage.publish_file(tmp, storage.join(folder, f"{run_id}.npz"), cfg)
        finally:
            remove_quietly(tmp)
        for uri in older:
            storage.remove(uri, cfg)

    def matches(self, relpath: str, version: str, config_hash: str) -> bool:
        """Whether `relpath`'s latest successful row was made from `version` with `config_hash`."""
        key = _hash64([relpath])[0]
        i = int(np.searchsorted(self.keys, key))
        return i < len(self.keys) and self.keys[i] == key and self.values[i] == self._value([version], [config_hash])[0]


class ManifestWriter:
    """Buffers rows and flushes them in chunks; `close` folds the run's chunks into its file and,
    given the run's skip index (`done`), saves it updated with the run's rows."""

    # Rows not flushed when a driver dies are assets done again by the next run (their outputs are
    # complete, I1): the time bound keeps that to seconds of work, the row bound the chunk count low.
    def __init__(self, output: str, run_id: str, cfg: StorageConfig, flush_rows: int = 2048,
                 flush_seconds: float = 10.0, done: DoneIndex | None = None):
        self.output, self.run_id, self.cfg = output, run_id, cfg
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self.done = done
        self.rows: list[AssetRecord] = []
        self.tracks: list[pa.Table] = []
        self.seq = 0
        self.last = time.monotonic()

    def add(self, record: AssetRecord, tracks: pa.Table | None = None) -> None:
        self.rows.append(record)
        if tracks is not None and tracks.num_rows:
            self.tracks.append(_conform(tracks, TRACK_SCHEMA))
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
        """Fold the run's chunks into its file, streamed through a local temp file: written in row
        groups of BATCH_ROWS, published whole (I1), then the chunks removed (a crash between the
        two leaves rows twice, never none); then the skip index, if any, with the run's rows."""
        self.flush()
        folded = {}
        for name, schema in (("manifest", SCHEMA), ("tracks", TRACK_SCHEMA)):
            target = storage.join(_dir(self.output), name, f"{self.run_id}.parquet")
            chunks = [u for u in _run_files(self.output, name, self.cfg) if _run_of(u) == self.run_id and u != target]
            if not chunks:
                continue
            folded[name] = target
            fd, tmp = tempfile.mkstemp(prefix=f".anon-ray-{name}-", suffix=".parquet")
            os.close(fd)
            try:
                with pq.ParquetWriter(tmp, schema) as writer:
                    group, rows = [], 0
                    for uri in [target, *chunks]:  # rows folded by an earlier close, if any
                        for batch in _batches(uri, schema, self.cfg):
                            group.append(batch)
                            rows += batch.num_rows
                            if rows >= BATCH_ROWS:
                                writer.write_table(pa.concat_tables(group))
                                group, rows = [], 0
                    if group:
                        writer.write_table(pa.concat_tables(group))
                storage.publish_file(tmp, folded[name], self.cfg)
            finally:
                remove_quietly(tmp)
                pa.default_memory_pool().release_unused()
            for uri in chunks:
                storage.remove(uri, self.cfg)
        if self.done is not None and "manifest" in folded:
            self.done.absorb([folded["manifest"]], self.cfg)
            self.done.save(self.output, self.run_id, self.cfg)
