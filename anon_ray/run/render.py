"""Render an asset from boxes already decided: its stored boxes corrected by a reviewer's overrides.

No detector is built or called here: the pixels come from the input, the boxes from the review
area (io/review.py), and masking, encoding and finalizing are the job's own (mask.apply,
VideoWriter, concat.finalize), so a re-render without overrides masks exactly what the job did.
A video is rendered as one part in this process: decode, mask and encode only, no context frames.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator

import numpy as np

from anon_ray.config import AppConfig, AudioPolicy
from anon_ray.core import mask
from anon_ray.core import overrides as ov_
from anon_ray.core.stitch import count_objects
from anon_ray.io import review, staging, storage
from anon_ray.io.files import atomic_write_bytes, sha256_bytes, sha256_file
from anon_ray.media import concat, rotation
from anon_ray.media import image as image_io
from anon_ray.media.decode import decode
from anon_ray.media.encode import VideoWriter
from anon_ray.run import job, stages
from anon_ray.run.errors import AssetError
from anon_ray.run.lifecycle import failed, plan_video
from anon_ray.run.prefetch import prefetch
from anon_ray.run.pipeline import group_by_frame, mask_photo
from anon_ray.types import Asset, AssetResult, Detections


def corrected(boxes: Detections, overrides: ov_.Overrides, n_frames: int, rot: int = 0,
              stored_wh: tuple[int, int] = (0, 0)) -> Detections:
    """Stored boxes (stored pixels) with the overrides (shown pixels) applied, for a video of
    `n_frames` whose stored frames of `stored_wh` turn upright by `rot` degrees."""
    if rot:
        overrides = overrides.mapped(lambda xyxy: rotation.boxes_to_stored(xyxy, rot, *stored_wh))
    return ov_.apply(boxes, overrides, n_frames)


def _photo(cfg: AppConfig, asset: Asset, dst: str, boxes: Detections, overrides: ov_.Overrides) -> AssetResult:
    clock = stages.StageClock()
    src = staging.local_input(asset, cfg.storage)
    with clock("read"):
        loaded = image_io.read_image(src, cfg.image)  # upright: shown and stored pixels agree
    dets = corrected(boxes, overrides, 1)
    with clock("mask"):
        masked, changes = mask_photo(loaded, dets.for_frame(0), cfg.mask)
    with clock("write"):
        data = image_io.encode_image(masked, cfg.image)
        with staging.output_target(dst, cfg.storage) as target:
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            atomic_write_bytes(target, data)
    faces, plates = count_objects(dets)
    return AssetResult(asset, dst, faces=faces, plates=plates, frames=1, segments=1, input_sha256=sha256_file(src),
                       output_sha256=sha256_bytes(data), output_size=len(data), tracks=dets,
                       changes=changes, stage_seconds=clock.totals(),
                       frame_size=(loaded.rgb.shape[1], loaded.rgb.shape[0]))


def _video(cfg: AppConfig, asset: Asset, dst: str, boxes: Detections, overrides: ov_.Overrides) -> AssetResult:
    clock = stages.StageClock()
    src = staging.local_input(asset, cfg.storage)
    with clock("plan"):
        vplan = plan_video(src, asset.relpath, cfg)
    info = vplan.info
    dets = corrected(boxes, overrides, info.n_frames, info.rotation, (info.width, info.height))
    per_frame = group_by_frame(dets)
    empty = Detections.empty()

    def masked() -> Iterator[tuple[int, np.ndarray]]:
        expected = 0
        for i, pts, rgb in clock.timed("decode", decode(src, None, vplan.index, 0, info.n_frames)):
            if i != expected:
                raise AssetError(f"frame {expected} missing from decode")
            with clock("mask"):
                mask.apply(rgb, per_frame.get(i, empty), cfg.mask)
            expected += 1
            yield pts, rgb

    with tempfile.TemporaryDirectory(dir=staging.scratch_root(cfg.storage)) as tmp:
        part = os.path.join(tmp, "part-00000.mp4")
        with VideoWriter(part, info, cfg.video, vplan.codec) as writer:
            # Decoding and masking run in a thread of their own while the frames before them are
            # encoded: both release the GIL for most of their work, so a re-render keeps two cores
            # busy instead of one (a 10 s 720p crowd clip: 15.8 -> 13.1 s, README).
            frames = prefetch(masked(), depth=4)
            try:
                for pts, rgb in frames:
                    with clock("encode"):
                        writer.write(rgb, pts)
            finally:
                frames.close()
            written = writer.frames
        with clock("finalize"), staging.output_target(dst, cfg.storage) as target:
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            concat.finalize([part], src, target, info, keep_audio=cfg.video.audio == AudioPolicy.keep)
            out_sha256, out_size = sha256_file(target), os.path.getsize(target)
    faces, plates = count_objects(dets)
    return AssetResult(asset, dst, faces=faces, plates=plates, frames=written, segments=1,
                       input_sha256=sha256_file(src), output_sha256=out_sha256, output_size=out_size,
                       tracks=dets, changes=vplan.changes, stage_seconds=clock.totals(),
                       frame_size=(info.width, info.height))


def render(cfg: AppConfig, asset: Asset, dst: str, boxes: Detections, overrides: ov_.Overrides) -> AssetResult:
    """`asset` masked with `boxes` (stored pixels, as the job wrote them) corrected by `overrides`
    (shown pixels) into `dst`; never raises: a failure is a result with no output left behind."""
    started = time.time()
    try:
        if asset.kind == "image":
            res = _photo(cfg, asset, dst, boxes, overrides)
        elif asset.kind == "video":
            res = _video(cfg, asset, dst, boxes, overrides)
        else:
            raise AssetError(f"cannot render an asset of kind {asset.kind!r}")
        return dataclasses.replace(res, seconds=time.time() - started)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a manifest row
        return failed(asset, dst, exc, started, cfg.storage)


def reviewed(cfg: AppConfig, asset: Asset, data: bytes, digest: str) -> AssetResult:
    """`asset` rendered from its stored boxes corrected by the overrides file `data` (sha256
    `digest`), or excluded; never raises. It fails, removing any output, when the file breaks the
    schema, there is no boxes file, the input changed since the boxes were made, or the overrides
    name another run's boxes: the overrides say detection alone is wrong for this asset."""
    dst = storage.safe_join(cfg.output, asset.relpath + asset.output_suffix)
    started = time.time()
    try:
        overrides = ov_.parse(data)
        try:
            boxes, meta = review.read_boxes(review.boxes_uri(cfg.output, asset.relpath), cfg.storage)
        except FileNotFoundError:
            raise AssetError("no boxes file: overrides correct the boxes of a job run with review.boxes=true "
                             "(without the overrides file the job masks it by detection and keeps its boxes)") from None
        if meta.get("input_version") != asset.version:
            raise AssetError("the input changed since its boxes were made: review it again, or remove its "
                             "overrides file to mask it by detection alone")
        if overrides.boxes_run and overrides.boxes_run != meta.get("run_id"):
            raise AssetError(f"the overrides refer to run {overrides.boxes_run}'s boxes, the stored ones are "
                             f"run {meta.get('run_id')}'s")
    except (AssetError, ov_.OverridesError) as exc:
        return failed(asset, dst, exc, started, cfg.storage)
    if overrides.exclude:
        storage.remove(dst, cfg.storage)
        return AssetResult(job.excluded_asset(asset), "", overrides_sha256=digest, seconds=time.time() - started)
    res = render(cfg, asset, dst, boxes, overrides)
    return res if res.failure else dataclasses.replace(res, overrides_sha256=digest)
