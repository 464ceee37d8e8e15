"""The driver's side of a run, apart from Ray: inventory, skip decisions, manifest rows, summary."""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

import pyarrow as pa

from anon_ray import __version__
from anon_ray.config import AppConfig, ReviewConfig
from anon_ray.core import overrides, risk
from anon_ray.io import inventory, manifest, review, storage
from anon_ray.models.registry import resolve
from anon_ray.types import Asset, AssetRecord, AssetResult, Failure

log = logging.getLogger("anon_ray")

Engine = Callable[[AppConfig, Iterable[tuple[Asset, str]], str], Iterator[AssetResult]]

# error_class of an asset whose work was cancelled because the driver was told to stop: it has no
# output and no "ok" row, so the next run processes it.
INTERRUPTED = "Interrupted"
# error_class of an asset a reviewer's overrides file excludes: no output, in this run or any later
# one, until the file says otherwise (run/rerender.py removes the output when it is written).
EXCLUDED = "excluded_by_review"


class StopRequest:
    """A request to wind a run down (the CLI sets it from SIGTERM/SIGINT), checked by the engine.

    Once set, no new asset is taken; assets already in flight may finish for `grace_s` seconds
    and are then cancelled (error rows of class INTERRUPTED, no output). A second request skips
    what is left of the grace period. Safe to call from a signal handler: it only sets fields.
    """

    def __init__(self, grace_s: float = 20.0) -> None:
        self.grace_s = grace_s
        self.signum = 0
        self.count = 0
        self.at = 0.0  # time.monotonic() of the first request
        self._event = threading.Event()

    def request(self, signum: int = signal.SIGTERM) -> None:
        if not self.count:
            self.signum, self.at = signum, time.monotonic()
        self.count += 1
        self._event.set()

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @property
    def urgent(self) -> bool:
        """In-flight work must be cancelled now: asked twice, or the grace period is over."""
        return self.requested and (self.count > 1 or time.monotonic() >= self.at + self.grace_s)

    def seconds_left(self) -> float | None:
        """Until the grace period ends (None: no stop requested)."""
        return max(0.0, self.at + self.grace_s - time.monotonic()) if self.requested else None

    @property
    def name(self) -> str:
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 143 for SIGTERM, 130 for SIGINT


@dataclass
class Summary:
    ok: int = 0
    failed: int = 0
    skipped: int = 0  # done by an earlier run with this config: output kept
    # Listed but not processed, per reason (inventory.UNSUPPORTED_FORMAT, NOT_MEDIA, LINK_OUTSIDE_INPUT).
    not_processed: dict[str, int] = field(default_factory=dict)
    fail_on_unsupported: bool = True
    interrupted: int = 0  # in flight when the run was stopped: cancelled, no output (also not in `failed`)
    frames: int = 0
    seconds: float = 0.0
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    stopped_by: int = 0  # the signal that stopped the run early; 0 = it ran to the end

    @property
    def unsupported(self) -> int:
        """Media left unmasked on purpose: formats not processed, links leading out of the input."""
        return sum(n for why, n in self.not_processed.items() if why != inventory.NOT_MEDIA)

    @property
    def exit_code(self) -> int:
        if self.stopped_by:
            return 128 + self.stopped_by
        return 1 if self.failed or (self.fail_on_unsupported and self.unsupported) else 0


def model_hashes(cfg: AppConfig) -> dict[str, str]:
    plate = cfg.detect.plate
    names = [c.model for c in (cfg.detect.face, plate) if c.enabled]
    names += [plate.photo_extra_model] if plate.enabled and plate.photo_extra_model else []
    return {name: resolve(name, cfg.models).sha256 for name in names}


def record(run_id: str, res: AssetResult, chash: str, models_json: str, skipped: bool = False,
           review_cfg: ReviewConfig | None = None) -> AssetRecord:
    """`skipped`: done before; an asset listed but not processed says why in its `skip`. A
    processed asset's row is scored for the review queue (core/risk.py) with `review_cfg`."""
    a = res.asset
    flagged = None
    if not res.failure and res.tracks is not None:
        flagged = risk.assess(res.tracks, res.frames, res.frame_size, review_cfg or ReviewConfig(), res.faceless)
    text = inventory.display_path  # Parquet text must be UTF-8; undecodable name bytes show as \xNN
    return AssetRecord(
        run_id=run_id, uri=text(a.uri), relpath=text(a.relpath), kind=a.kind,
        status="failed" if res.failure else "skipped" if skipped or a.skip else "ok",
        error_class=res.failure.error_class if res.failure else a.skip,
        error=text(res.failure.error) if res.failure else a.skip_detail,
        faces=res.faces, plates=res.plates, frames=res.frames, segments=res.segments, seconds=round(res.seconds, 3),
        input_version=a.version, input_size=a.size, input_sha256=res.input_sha256,
        output_uri="" if res.failure else text(res.dst), output_size=res.output_size, output_sha256=res.output_sha256,
        config_hash=chash, models=models_json, tool_version=__version__,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        segment_nodes=json.dumps(list(res.segment_nodes)) if res.segment_nodes else "",
        segment_input_bytes=json.dumps(list(res.segment_input_bytes)) if res.segment_input_bytes else "",
        output_changes=json.dumps(list(res.changes)) if res.changes and not res.failure else "",
        stage_seconds=json.dumps({k: round(v, 3) for k, v in res.stage_seconds.items()}) if res.stage_seconds else "",
        overrides_sha256="" if res.failure else res.overrides_sha256,
        risk=flagged.score if flagged else 0.0,
        risk_reasons=json.dumps(flagged.reasons, sort_keys=True) if flagged else "",
        review_frames=json.dumps(list(flagged.frames)) if flagged else "",
    )


def excluded_asset(asset: Asset) -> Asset:
    return dataclasses.replace(asset, skip=EXCLUDED, skip_detail="an overrides file excludes it from the output")


def reviewed_files(cfg: AppConfig, out: TextIO) -> tuple[dict[str, bytes], set[str]]:
    """Every overrides file (relpath -> its bytes: one listing of the review area, then the few
    files reviewers wrote) and the relpaths whose file says "exclude". A file that breaks the
    schema is named here; its asset fails if this run would process it (render.reviewed)."""
    files, kept_out = {}, set()
    for rel in review.listed_overrides(cfg.output, cfg.storage):
        files[rel] = data = storage.read_bytes(review.overrides_uri(cfg.output, rel), cfg.storage)
        try:
            if overrides.parse(data).exclude:
                kept_out.add(rel)
        except overrides.OverridesError as exc:
            print(f"WARNING {inventory.display_path(rel)}: its overrides file breaks the schema, so the asset "
                  f"fails if processed: {exc}", file=out)
    return files, kept_out


def _tracks_table(run_id: str, res: AssetResult, boxes: bool) -> pa.Table | None:
    if res.failure or res.tracks is None or not len(res.tracks):
        return None
    table = manifest.track_table(res.tracks, boxes=boxes)
    n = table.num_rows
    relpath = inventory.display_path(res.asset.relpath)
    return table.append_column("run_id", pa.array([run_id] * n)).append_column("relpath", pa.array([relpath] * n))


def _list_only(cfg: AppConfig, assets: Iterator[tuple[Asset, str]], run_id: str) -> Iterator[AssetResult]:
    """A dry run's engine: pulls the listing (which prints what would run) and runs nothing."""
    for _ in assets:
        pass
    yield from ()


def run(cfg: AppConfig, engine: Engine, out: TextIO | None = None, stop: StopRequest | None = None) -> Summary:
    """List, skip what is done, run the rest on `engine`, write the manifest; never raises per asset.

    `stop`, once requested, ends the listing: the engine gets no new asset and winds down what it
    has in flight (an engine that can cancel work should be given the same StopRequest). Rows of
    every asset that finished are in the manifest either way: the writer is always closed.
    """
    out = out or sys.stderr  # looked up per call, so a redirected stderr is honoured
    if cfg.dry_run:
        engine = _list_only  # a dry run writes nothing and starts nothing (no Ray either)
    run_id = manifest.new_run_id()
    models = model_hashes(cfg)
    chash = manifest.config_hash(cfg, models)
    models_json = json.dumps(models, sort_keys=True)
    # Read with `force` too: the index this run saves must still hold what earlier runs did.
    done = manifest.DoneIndex.read(cfg.output, cfg.storage)
    reviewed, kept_out = reviewed_files(cfg, out)
    # Assets a reviewer corrected that this run would process again: rendered from their stored
    # boxes and overrides after the engine's work, never detected again (detection alone would
    # publish what the reviewer corrected, and new tracks would not match the overrides').
    corrected: list[Asset] = []
    if not cfg.dry_run:
        storage.abort_stale_uploads(cfg.output, cfg.storage)  # left by workers killed mid-upload
        manifest.write_run_config(cfg, run_id, chash, models)
    summary = Summary(fail_on_unsupported=cfg.fail_on_unsupported)
    writer = manifest.ManifestWriter(cfg.output, run_id, cfg.storage, done=done)
    started = time.time()

    def finish(res: AssetResult, detected: bool = True) -> None:
        # A corrected render's boxes are not stored: the overrides refer to the detected ones.
        if detected and cfg.review.boxes and not res.failure and res.tracks is not None:
            meta = {"run_id": run_id, "config_hash": chash, "input_version": res.asset.version, "frames": res.frames}
            try:
                review.write_boxes(review.boxes_uri(cfg.output, res.asset.relpath), res.tracks, meta, cfg.storage)
            except Exception as exc:  # noqa: BLE001 - the output is right; only its re-render is lost
                print(f"WARNING {inventory.display_path(res.asset.relpath)}: boxes file not written "
                      f"({type(exc).__name__}): it cannot be re-rendered without detection", file=out)
        if not cfg.dry_run:
            writer.add(record(run_id, res, chash, models_json, review_cfg=cfg.review),
                       _tracks_table(run_id, res, cfg.audit.boxes))
        name = inventory.display_path(res.asset.relpath)
        log.debug("%s: %s, %d faces, %d plates, %d frames, %d segments, %.2f s", name,
                  res.failure.error_class if res.failure else "ok", res.faces, res.plates, res.frames,
                  res.segments, res.seconds)
        if res.failure and res.failure.error_class == INTERRUPTED:
            summary.interrupted += 1
            print(f"INTERRUPTED {name}: cancelled, no output (the next run processes it)", file=out)
        elif res.failure:
            summary.failed += 1
            summary.failures.append((name, res.failure.error_class, inventory.display_path(res.failure.error)))
            print(f"FAILED {name}: {res.failure.error_class}: {summary.failures[-1][2]}", file=out)
        else:
            summary.ok += 1
            summary.frames += res.frames
        elapsed = time.time() - started
        seen = summary.ok + summary.failed + summary.skipped + summary.interrupted + sum(summary.not_processed.values())
        # The listing streams, so the total is what has been listed so far (final once it ends).
        print(f"[{seen}/{listed} assets, {summary.failed} failed, {summary.skipped} skipped] {name}: "
              f"{summary.frames / max(elapsed, 1e-9):.1f} frames/s", file=out)

    listed = 0
    cut_short = False  # the listing was left unfinished because of `stop`

    def stopping() -> bool:
        nonlocal cut_short
        if stop is not None and stop.requested:
            cut_short = True
        return cut_short

    # Asked only of assets done before: with none, nothing is listed or looked up.
    output_exists = storage.output_index(cfg.input, cfg.output, cfg.storage) if len(done) and not cfg.force else None

    def todo() -> Iterator[tuple[Asset, str]]:
        nonlocal listed
        if stopping():
            return
        for asset in storage.list_assets(cfg.input, cfg.storage, exclude=cfg.output):
            if stopping():
                return  # take no new work; what is in flight winds down in the engine
            listed += 1
            if asset.skip:
                summary.not_processed[asset.skip] = summary.not_processed.get(asset.skip, 0) + 1
                name = inventory.display_path(asset.relpath)
                print(f"NOT PROCESSED {name}: {asset.skip}: {asset.skip_detail}", file=out)
                if not cfg.dry_run:
                    writer.add(record(run_id, AssetResult(asset, ""), chash, models_json))
                continue
            try:
                dst = storage.safe_join(cfg.output, asset.relpath + asset.output_suffix)
            except storage.UnsafePathError as exc:
                finish(AssetResult(asset, "", failure=Failure("UnsafePath", str(exc))))
                continue
            if asset.relpath in kept_out:
                summary.skipped += 1
                print(f"EXCLUDED {inventory.display_path(asset.relpath)}: by its overrides file, no output", file=out)
                if not cfg.dry_run:
                    storage.remove(dst, cfg.storage)
                    writer.add(record(run_id, AssetResult(excluded_asset(asset), ""), chash, models_json))
                continue
            done_before = not cfg.force and done.matches(inventory.display_path(asset.relpath), asset.version, chash)
            if done_before and output_exists(asset, dst):
                summary.skipped += 1
                if not cfg.dry_run:
                    writer.add(record(run_id, AssetResult(asset, dst), chash, models_json, skipped=True))
                continue
            if cfg.dry_run:
                print(f"would process: {inventory.display_path(asset.relpath)} ({asset.kind})", file=out)
                continue
            if asset.relpath in reviewed:
                corrected.append(asset)
                continue
            yield asset, dst

    source = todo()
    try:
        for res in engine(cfg, source, run_id):
            finish(res)
        if stop is not None and stop.requested:
            next(source, None)  # the engine stopped pulling: sets cut_short if anything is left to list
        if corrected:
            # Here, not at the top: rendering pulls in codecs and models (~90 MB), which a driver
            # that renders nothing itself must not hold.
            from anon_ray.run import render
        for asset in corrected:
            if stopping():
                break  # no row: the next run renders it
            data = reviewed[asset.relpath]
            finish(render.reviewed(cfg, asset, data, overrides.sha256(data)), detected=False)
    finally:
        if not cfg.dry_run:
            writer.close()
    summary.seconds = time.time() - started
    if cut_short or summary.interrupted:  # a stop that came after the last asset changes nothing
        summary.stopped_by = stop.signum if stop is not None and stop.signum else signal.SIGTERM
    return summary
