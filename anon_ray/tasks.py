"""Process-side units of work that never raise: each returns a result or a failure description.

The Ray layer and the local runner call these, so both handle errors the same way. Messages keep
the exception text but are cut short; they never carry pixels or file contents.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass

from . import pipeline
from .config import AppConfig
from .inventory import INTERNAL_DIR
from .types import Asset, Detections, SegmentPlan, SegmentResult

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


def failed(asset: Asset, dst: str, exc: BaseException, started: float, **extra) -> AssetResult:
    remove_quietly(dst)
    return AssetResult(asset, dst, failure=Failure.of(exc), seconds=time.time() - started, **extra)


def asset_dir_name(asset: Asset) -> str:
    return hashlib.sha256(asset.relpath.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def remove_quietly(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
    except OSError:
        pass


@contextlib.contextmanager
def part_root(output: str, run_id: str) -> Iterator[str]:
    """This run's folder for segment parts; removed with its parent when the run ends."""
    parent = os.path.join(os.path.abspath(output), INTERNAL_DIR, "tmp")
    root = os.path.join(parent, run_id)
    os.makedirs(root, exist_ok=True)
    try:
        yield root
    finally:
        remove_quietly(root)
        with contextlib.suppress(OSError):
            os.rmdir(parent)  # only when no other run is using it


def image_task(worker: pipeline.Worker, asset: Asset, dst: str) -> AssetResult:
    started = time.time()
    try:
        if asset.kind != "image":
            raise pipeline.AssetError(f"unsupported or unreadable input (detected kind: {asset.kind})")
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        digest = pipeline.sha256_file(asset.uri)
        out = worker.image(asset.uri, dst)
        return AssetResult(asset, dst, faces=out.faces, plates=out.plates, frames=1, segments=1,
                           input_sha256=digest, output_sha256=out.output_sha256, output_size=out.output_size,
                           seconds=time.time() - started, tracks=out.boxes)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a manifest row
        return failed(asset, dst, exc, started)


def plan_task(asset: Asset, cfg: AppConfig) -> pipeline.VideoPlan | Failure:
    try:
        vplan = pipeline.plan_video(asset.uri, asset.relpath, cfg)
        if not vplan.segments:
            raise pipeline.AssetError("video has no frames")
        return vplan
    except Exception as exc:  # noqa: BLE001
        return Failure.of(exc)


def segment_task(worker: pipeline.Worker, asset: Asset, seg: SegmentPlan, vplan: pipeline.VideoPlan,
                 part_path: str) -> SegmentResult | Failure:
    try:
        return worker.segment(asset.uri, seg, vplan.info, vplan.index, part_path)
    except Exception as exc:  # noqa: BLE001
        remove_quietly(part_path)
        return Failure.of(exc)


def finalize_task(asset: Asset, dst: str, vplan: pipeline.VideoPlan, results: list[SegmentResult],
                  started: float) -> AssetResult:
    try:
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        digest = pipeline.sha256_file(asset.uri)
        out = pipeline.finalize_video(asset.uri, dst, vplan, results)
        return AssetResult(asset, dst, faces=out.faces, plates=out.plates, frames=out.frames,
                           segments=len(results), input_sha256=digest, output_sha256=out.output_sha256,
                           output_size=out.output_size, seconds=time.time() - started, tracks=out.tracks)
    except Exception as exc:  # noqa: BLE001
        return failed(asset, dst, exc, started)
    finally:
        for r in results:
            remove_quietly(r.part_path)


def run_local(cfg: AppConfig, todo, run_id: str):
    """Engine for job.run without Ray: one process, assets in order (tests, notebooks)."""
    worker = pipeline.Worker(cfg)
    with part_root(cfg.output, run_id) as root:
        for asset, dst in todo:
            started = time.time()
            if asset.kind != "video":
                yield image_task(worker, asset, dst)
                continue
            vplan = plan_task(asset, cfg)
            if isinstance(vplan, Failure):
                yield AssetResult(asset, dst, failure=vplan, seconds=time.time() - started)
                continue
            part_dir = os.path.join(root, asset_dir_name(asset))
            os.makedirs(part_dir, exist_ok=True)
            results = []
            for seg in vplan.segments:
                res = segment_task(worker, asset, seg, vplan, os.path.join(part_dir, pipeline.part_name(seg)))
                if isinstance(res, Failure):
                    for r in results:
                        remove_quietly(r.part_path)
                    yield AssetResult(asset, dst, failure=res, seconds=time.time() - started)
                    break
                results.append(res)
            else:
                yield finalize_task(asset, dst, vplan, results, started)
