"""Process-side units of work that never raise: each returns a result or a failure description.

The Ray layer and the local runner call these, so both handle errors the same way. Messages keep
the exception text but are cut short; they never carry pixels or file contents.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from anon_ray.config import AppConfig, StorageConfig
from anon_ray.io import inventory, staging, storage
from anon_ray.io.files import sha256_file
from anon_ray.io.inventory import INTERNAL_DIR
from anon_ray.run import pipeline
from anon_ray.types import Asset, Detections, SegmentPlan, SegmentResult

MAX_MESSAGE = 300


@dataclass(frozen=True)
class Failure:
    error_class: str
    error: str

    @staticmethod
    def of(exc: BaseException) -> "Failure":
        return Failure(type(exc).__name__, str(exc).replace("\n", " ")[:MAX_MESSAGE])


@dataclass(frozen=True)
class AssetResult:
    """What the driver needs to write a manifest row (and the tracks table) for one asset."""

    asset: Asset
    dst: str
    failure: Failure | None = None
    faces: int = 0
    plates: int = 0
    frames: int = 0
    segments: int = 0
    input_sha256: str = ""
    output_sha256: str = ""
    output_size: int = 0
    seconds: float = 0.0
    tracks: Detections | None = None


def failed(asset: Asset, dst: str, exc: BaseException, started: float, cfg: StorageConfig) -> AssetResult:
    remove_quietly(dst, cfg)
    return AssetResult(asset, dst, failure=Failure.of(exc), seconds=time.time() - started)


def asset_dir_name(asset: Asset) -> str:
    return hashlib.sha256(asset.relpath.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def remove_quietly(uri: str, cfg: StorageConfig) -> None:
    """Best-effort clean-up of a part or a failed output file (never a folder someone else owns);
    the failure being handled matters more than this one."""
    with contextlib.suppress(Exception):
        storage.remove(uri, cfg)


@contextlib.contextmanager
def part_root(cfg: AppConfig, run_id: str) -> Iterator[str]:
    """This run's folder (or prefix, for object-store outputs) for segment parts.

    Parts sit beside the output so every node of a cluster reaches them; the folder goes when the
    run ends, with its parent when no other run uses it.
    """
    parent = storage.join(cfg.output, INTERNAL_DIR, "tmp")
    root = storage.join(parent, run_id)
    if not storage.is_s3(root):
        os.makedirs(root, exist_ok=True)
    try:
        yield root
    finally:
        staging.remove_tree(root, cfg.storage)
        if not storage.is_s3(parent):
            with contextlib.suppress(OSError):
                os.rmdir(parent)


def image_task(worker: pipeline.Worker, asset: Asset, dst: str,
               deadline: pipeline.Deadline = pipeline.NO_DEADLINE) -> AssetResult:
    started = time.time()
    try:
        if asset.kind != "image":
            reason = f"detected kind: {asset.kind}" if storage.is_s3(asset.uri) else inventory.unusable_reason(asset.uri)
            raise pipeline.AssetError(f"unsupported or unreadable input: {reason}")
        src = staging.local_input(asset, worker.cfg.storage)
        digest = sha256_file(src)
        with staging.output_target(dst, worker.cfg.storage) as target:
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            out = worker.image(src, target, deadline)
        return AssetResult(asset, dst, faces=out.faces, plates=out.plates, frames=1, segments=1,
                           input_sha256=digest, output_sha256=out.output_sha256, output_size=out.output_size,
                           seconds=time.time() - started, tracks=out.boxes)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a manifest row
        return failed(asset, dst, exc, started, worker.cfg.storage)


def plan_task(asset: Asset, cfg: AppConfig) -> pipeline.VideoPlan | Failure:
    try:
        vplan = pipeline.plan_video(staging.local_input(asset, cfg.storage), asset.relpath, cfg)
        if not vplan.segments:
            raise pipeline.AssetError("video has no frames")
        return vplan
    except Exception as exc:  # noqa: BLE001
        return Failure.of(exc)


def segment_task(worker: pipeline.Worker, asset: Asset, seg: SegmentPlan, vplan: pipeline.VideoPlan,
                 part_uri: str, deadline: pipeline.Deadline = pipeline.NO_DEADLINE) -> SegmentResult | Failure:
    """Encode one segment's part; for object-store outputs it is uploaded so finalize can reach it."""
    cfg = worker.cfg.storage
    try:
        src = staging.local_input(asset, cfg)
        with staging.output_target(part_uri, cfg) as local_part:
            os.makedirs(os.path.dirname(local_part), exist_ok=True)
            result = worker.segment(src, seg, vplan.info, vplan.index, local_part, deadline)
        return dataclasses.replace(result, part_path=part_uri)
    except Exception as exc:  # noqa: BLE001
        remove_quietly(part_uri, cfg)
        return Failure.of(exc)


def finalize_task(cfg: AppConfig, asset: Asset, dst: str, vplan: pipeline.VideoPlan,
                  results: list[SegmentResult], started: float,
                  deadline: pipeline.Deadline = pipeline.NO_DEADLINE) -> AssetResult:
    try:
        deadline.check()  # the last segment may have ended just past it
        src = staging.local_input(asset, cfg.storage)
        digest = sha256_file(src)
        local = [dataclasses.replace(r, part_path=staging.fetch(r.part_path, "", cfg.storage)) for r in results]
        with staging.output_target(dst, cfg.storage) as target:
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            out = pipeline.finalize_video(src, target, vplan, local)
        return AssetResult(asset, dst, faces=out.faces, plates=out.plates, frames=out.frames,
                           segments=len(results), input_sha256=digest, output_sha256=out.output_sha256,
                           output_size=out.output_size, seconds=time.time() - started, tracks=out.tracks)
    except Exception as exc:  # noqa: BLE001
        return failed(asset, dst, exc, started, cfg.storage)
    finally:
        for r in results:
            remove_quietly(r.part_path, cfg.storage)


def run_local(cfg: AppConfig, todo, run_id: str):
    """Engine for job.run without Ray: one process, assets in order (tests, notebooks).

    Each asset gets `asset_timeout_s` from when it is taken, as in the Ray engine; with no driver
    to kill an overdue call, the worker checks the deadline itself (see pipeline.Deadline).
    """
    worker = pipeline.Worker(cfg)
    with part_root(cfg, run_id) as root:
        for asset, dst in todo:
            deadline = pipeline.Deadline.after(cfg.asset_timeout_s)
            if asset.kind == "video":
                yield local_video(worker, asset, dst, storage.join(root, asset_dir_name(asset)), deadline)
            else:
                yield image_task(worker, asset, dst, deadline)


def local_video(worker: pipeline.Worker, asset: Asset, dst: str, part_dir: str,
                deadline: pipeline.Deadline) -> AssetResult:
    """Plan, encode the segments one after the other into `part_dir`, finalize."""
    started = time.time()
    cfg = worker.cfg
    vplan = plan_task(asset, cfg)
    if isinstance(vplan, Failure):
        return AssetResult(asset, dst, failure=vplan, seconds=time.time() - started)
    results = []
    for seg in vplan.segments:
        res = segment_task(worker, asset, seg, vplan, storage.join(part_dir, pipeline.part_name(seg)), deadline)
        if isinstance(res, Failure):
            for r in results:
                remove_quietly(r.part_path, cfg.storage)
            return AssetResult(asset, dst, failure=res, seconds=time.time() - started)
        results.append(res)
    return finalize_task(cfg, asset, dst, vplan, results, started, deadline)
