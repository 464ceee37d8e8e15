"""One asset's lifecycle, the same for every engine: a photo is one step; a video is
plan -> segments -> finalize.

Each step runs in whatever process the engine gives it and never raises: it returns its stage's
result or a Failure (types.py). The in-process engine (local.py) runs the steps one after the
other (`run_video`); the Ray engine (distributed.py) runs the same steps as remote calls, the
segments of a video in parallel; the evaluator and the benchmark call them too (boxes only, or
timed apart). Every step reads its inputs through io.staging, so only io/ knows where files live.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING

from anon_ray.config import AppConfig, AudioPolicy, StorageConfig
from anon_ray.core import plan as planner
from anon_ray.core import stitch
from anon_ray.io import staging, storage
from anon_ray.io.files import sha256_file
from anon_ray.media import concat, packets
from anon_ray.media.encode import check_writable, output_changes, output_codec
from anon_ray.media.probe import probe
from anon_ray.run import stages
from anon_ray.run.deadline import NO_DEADLINE, Deadline
from anon_ray.run.errors import AssetError
from anon_ray.run.parts import part_uri, remove_quietly
from anon_ray.types import Asset, AssetResult, Failure, PacketIndex, SegmentPlan, SegmentResult, VideoPlan

if TYPE_CHECKING:
    # Only the steps with detection take a Worker, built by their engine: planning and finalizing
    # run in Ray's light workers without loading ONNX Runtime and the detectors' modules.
    from anon_ray.run.pipeline import Worker


def failed(asset: Asset, dst: str, exc: BaseException, started: float, cfg: StorageConfig) -> AssetResult:
    remove_quietly(dst, cfg)
    return AssetResult(asset, dst, failure=Failure.of(exc), seconds=time.time() - started)


# --- a photo -----------------------------------------------------------------------------------

def image(worker: Worker, asset: Asset, dst: str, deadline: Deadline = NO_DEADLINE) -> AssetResult:
    started = time.time()
    try:
        if asset.kind != "image":
            raise AssetError(f"unsupported or unreadable input: {storage.unusable_reason(asset)}")
        src = staging.local_input(asset, worker.cfg.storage)
        digest = sha256_file(src)
        with staging.output_target(dst, worker.cfg.storage) as target:
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            out = worker.image(asset, src, dst, target, deadline)
        return dataclasses.replace(out, input_sha256=digest, seconds=time.time() - started)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a manifest row
        return failed(asset, dst, exc, started, worker.cfg.storage)


# --- a video: plan -> segments -> finalize -----------------------------------------------------

def plan_video(src: packets.Source, name: str, cfg: AppConfig, workers: int = 1,
               index: PacketIndex | None = None) -> VideoPlan:
    """Probe a video and cut it into segments, at least `workers` where the context cost allows
    (raises; `plan` is the step that does not). `src` other than a local path needs its `index`."""
    index = packets.index_packets(src) if index is None else index
    info = probe(src, index)
    codec = output_codec(name, info, cfg.video)
    check_writable(name, info, codec)  # fail before detection, not after it
    concat.check_verifiable(info, index)
    fps = info.fps[0] / info.fps[1] if info.fps[1] else 0.0
    segs = planner.plan_segments(name, index, fps, cfg.segment, workers=workers)
    if not segs:
        raise AssetError("video has no frames")
    # Positions served only to cut byte ranges; every segment call carries the plan, so they stay here.
    return VideoPlan(info=info, index=dataclasses.replace(index, pos=None, size=None), segments=tuple(segs),
                     codec=codec, changes=output_changes(info, codec, cfg.video))


def plan(asset: Asset, cfg: AppConfig, workers: int = 1) -> VideoPlan | Failure:
    """`workers`: how many segment workers the engine runs at once (1 for the in-process engine)."""
    try:
        t0 = time.perf_counter()
        vplan = _plan_in_ranges(asset, cfg, workers)
        if vplan is None:
            vplan = plan_video(staging.local_input(asset, cfg.storage), asset.relpath, cfg, workers)
        return dataclasses.replace(vplan, seconds=time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001
        return Failure.of(exc)


def _plan_in_ranges(asset: Asset, cfg: AppConfig, workers: int) -> VideoPlan | None:
    """An MP4/MOV in object storage planned from its sample tables, reading the header and a few
    packets in ranges: segments start without waiting for a whole recording's download. None
    where it has no usable tables, or is local or cached here (the caller plans from a file)."""
    with staging.header_input(asset, cfg.storage) as obj:
        if obj is None:
            return None
        index = packets.table_index(obj)
        if index is None:
            return None
        return dataclasses.replace(plan_video(obj, asset.relpath, cfg, workers, index), input_bytes=obj.fetched)


def segment(worker: Worker, asset: Asset, seg: SegmentPlan, vplan: VideoPlan, part: str | None,
            deadline: Deadline = NO_DEADLINE) -> SegmentResult | Failure:
    """Encode one segment's part to `part` (uploaded for object-store outputs, so finalize can
    reach it); with `part` None only its boxes are computed."""
    cfg = worker.cfg.storage
    try:
        with staging.segment_input(asset, vplan.info.container, (seg.byte_start, seg.byte_end), cfg) as src:
            if part is None:
                result = worker.segment(src.source, seg, vplan.info, vplan.index, None, deadline)
            else:
                with staging.output_target(part, cfg) as local_part:
                    os.makedirs(os.path.dirname(local_part), exist_ok=True)
                    result = worker.segment(src.source, seg, vplan.info, vplan.index, local_part, deadline,
                                            codec=vplan.codec)
                result = dataclasses.replace(result, part_path=part)
            return dataclasses.replace(result, input_bytes=src.fetched)
    except Exception as exc:  # noqa: BLE001
        if part is not None:
            remove_quietly(part, cfg)
        return Failure.of(exc)


def finalize(cfg: AppConfig, asset: Asset, dst: str | None, vplan: VideoPlan, results: list[SegmentResult],
             started: float, deadline: Deadline = NO_DEADLINE) -> AssetResult:
    """Join tracks across cuts, then (unless `dst` is None: boxes only) concatenate the parts,
    mux the source's other streams, verify and publish."""
    try:
        deadline.check()  # the last segment may have ended just past it
        results = sorted(results, key=lambda r: r.plan.index)
        if [r.plan.index for r in results] != list(range(len(vplan.segments))):
            raise AssetError("segments missing at finalize")
        tracks = stitch.asset_tracks([(r.plan, r.tracks) for r in results])
        faces, plates = stitch.count_objects(tracks)
        counts = dict(faces=faces, plates=plates, segments=len(results), tracks=tracks)
        if dst is None:
            return AssetResult(asset, "", frames=vplan.info.n_frames, seconds=time.time() - started, **counts)
        t0 = time.perf_counter()
        src = staging.local_input(asset, cfg.storage)
        digest = sha256_file(src)
        local = [staging.fetch(r.part_path, "", cfg.storage) for r in results]
        with staging.output_target(dst, cfg.storage) as target:
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            concat.finalize(local, src, target, vplan.info, keep_audio=cfg.video.audio == AudioPolicy.keep)
            out_sha256, out_size = sha256_file(target), os.path.getsize(target)
        spent = stages.summed([*(r.seconds for r in results), {"plan": vplan.seconds},
                               {"finalize": time.perf_counter() - t0}])
        return AssetResult(asset, dst, frames=sum(r.frames_written for r in results), input_sha256=digest,
                           output_sha256=out_sha256, output_size=out_size, seconds=time.time() - started,
                           segment_nodes=tuple(r.node for r in results) if any(r.node for r in results) else (),
                           segment_input_bytes=tuple(r.input_bytes for r in results), changes=vplan.changes,
                           faceless=tuple(f for r in results for f in r.faceless),
                           stage_seconds=spent, frame_size=(vplan.info.width, vplan.info.height), **counts)
    except Exception as exc:  # noqa: BLE001
        return failed(asset, dst, exc, started, cfg.storage) if dst else \
            AssetResult(asset, "", failure=Failure.of(exc), seconds=time.time() - started)
    finally:
        for r in results:
            if r.part_path:
                remove_quietly(r.part_path, cfg.storage)


def encode_segments(worker: Worker, asset: Asset, vplan: VideoPlan, folder: str | None,
                    deadline: Deadline = NO_DEADLINE) -> list[SegmentResult] | Failure:
    """Every segment, one after the other, into parts under `folder` (None: boxes only). On a
    failure the parts already written are removed."""
    results: list[SegmentResult] = []
    for seg in vplan.segments:
        res = segment(worker, asset, seg, vplan, None if folder is None else part_uri(folder, seg), deadline)
        if isinstance(res, Failure):
            for r in results:
                if r.part_path:
                    remove_quietly(r.part_path, worker.cfg.storage)
            return res
        results.append(res)
    return results


def run_video(worker: Worker, asset: Asset, dst: str | None, folder: str | None,
              deadline: Deadline = NO_DEADLINE) -> AssetResult:
    """The whole lifecycle in this process: plan, every segment in turn, finalize. With `dst`
    and `folder` None nothing is encoded: the result holds the boxes the job would mask."""
    started = time.time()
    vplan = plan(asset, worker.cfg)
    if isinstance(vplan, Failure):
        return AssetResult(asset, dst or "", failure=vplan, seconds=time.time() - started)
    results = encode_segments(worker, asset, vplan, folder, deadline)
    if isinstance(results, Failure):
        return AssetResult(asset, dst or "", failure=results, seconds=time.time() - started)
    return finalize(worker.cfg, asset, dst, vplan, results, started, deadline)

