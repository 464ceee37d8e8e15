"""The driver's side of a run, apart from Ray: inventory, skip decisions, manifest rows, summary."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

import pyarrow as pa

from . import __version__, inventory, manifest, stitch, storage
from .config import AppConfig
from .models import resolve
from .tasks import AssetResult, Failure
from .types import Asset, AssetRecord

log = logging.getLogger("anon_ray")

Engine = Callable[[AppConfig, Iterable[tuple[Asset, str]], str], Iterator[AssetResult]]


@dataclass
class Summary:
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    frames: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def list_assets(cfg: AppConfig) -> Iterator[Asset]:
    if storage.is_s3(cfg.input):
        return storage.list_s3(cfg.input, cfg.storage, exclude_prefix=cfg.output)
    return inventory.list_local(cfg.input, exclude=cfg.output)


def model_hashes(cfg: AppConfig) -> dict[str, str]:
    names = [c.model for c in (cfg.detect.face, cfg.detect.plate) if c.enabled]
    return {name: resolve(name, cfg.models).sha256 for name in names}


def _record(run_id: str, res: AssetResult, chash: str, models_json: str, skipped: bool = False) -> AssetRecord:
    a = res.asset
    text = inventory.display_path  # Parquet text must be UTF-8; undecodable name bytes show as \xNN
    return AssetRecord(
        run_id=run_id, uri=text(a.uri), relpath=text(a.relpath), kind=a.kind,
        status="failed" if res.failure else "skipped" if skipped else "ok",
        error_class=res.failure.error_class if res.failure else "",
        error=text(res.failure.error) if res.failure else "",
        faces=res.faces, plates=res.plates, frames=res.frames, segments=res.segments, seconds=round(res.seconds, 3),
        input_version=a.version, input_size=a.size, input_sha256=res.input_sha256,
        output_uri="" if res.failure else text(res.dst), output_size=res.output_size, output_sha256=res.output_sha256,
        config_hash=chash, models=models_json, tool_version=__version__,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def _tracks_table(run_id: str, res: AssetResult, boxes: bool) -> pa.Table | None:
    if res.failure or res.tracks is None or not len(res.tracks):
        return None
    table = stitch.track_table(res.tracks, boxes=boxes)
    n = table.num_rows
    relpath = inventory.display_path(res.asset.relpath)
    return table.append_column("run_id", pa.array([run_id] * n)).append_column("relpath", pa.array([relpath] * n))


def run(cfg: AppConfig, engine: Engine, out: TextIO | None = None) -> Summary:
    """List, skip what is done, run the rest on `engine`, write the manifest; never raises per asset."""
    out = out or sys.stderr  # looked up per call, so a redirected stderr is honoured
    run_id = manifest.new_run_id()
    models = model_hashes(cfg)
    chash = manifest.config_hash(cfg, models)
    models_json = json.dumps(models, sort_keys=True)
    done = {} if cfg.force else manifest.done_versions(cfg.output, cfg.storage)
    if storage.is_s3(cfg.output) and not cfg.dry_run:
        storage.abort_stale_uploads(cfg.output, cfg.storage)  # left by workers killed mid-upload
    summary = Summary()
    writer = manifest.ManifestWriter(cfg.output, run_id, cfg.storage)
    started = time.time()

    def finish(res: AssetResult) -> None:
        writer.add(_record(run_id, res, chash, models_json), _tracks_table(run_id, res, cfg.audit.boxes))
        name = inventory.display_path(res.asset.relpath)
        if res.failure:
            summary.failed += 1
            summary.failures.append((name, res.failure.error_class, inventory.display_path(res.failure.error)))
            print(f"FAILED {name}: {res.failure.error_class}: {summary.failures[-1][2]}", file=out)
        else:
            summary.ok += 1
            summary.frames += res.frames
        elapsed = time.time() - started
        # The listing streams, so the total is what has been listed so far (final once it ends).
        print(f"[{summary.ok + summary.failed + summary.skipped}/{listed} assets, {summary.failed} failed, "
              f"{summary.skipped} skipped] {name}: {summary.frames / max(elapsed, 1e-9):.1f} frames/s",
              file=out)

    listed = 0

    def todo() -> Iterator[tuple[Asset, str]]:
        nonlocal listed
        for asset in list_assets(cfg):
            listed += 1
            try:
                dst = storage.safe_join(cfg.output, asset.relpath)
            except storage.UnsafePathError as exc:
                finish(AssetResult(asset, "", failure=Failure("UnsafePath", str(exc))))
                continue
            done_before = done.get(inventory.display_path(asset.relpath)) == (asset.version, chash)
            if done_before and storage.exists(dst, cfg.storage):
                summary.skipped += 1
                writer.add(_record(run_id, AssetResult(asset, dst), chash, models_json, skipped=True))
                continue
            if cfg.dry_run:
                print(f"would process: {inventory.display_path(asset.relpath)} ({asset.kind})", file=out)
                continue
            yield asset, dst

    try:
        for res in engine(cfg, todo(), run_id):
            finish(res)
    finally:
        if not cfg.dry_run:
            writer.close()
    summary.seconds = time.time() - started
    return summary
