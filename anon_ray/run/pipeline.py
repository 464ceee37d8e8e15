"""Plain-Python anonymization of one photo or one video segment: no Ray, no Hydra.

A `Worker` owns the detectors (loaded once per process). The Ray layer wraps the same calls in
actors; tests, notebooks and single-machine runs call them directly (`run_local`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Iterator

import numpy as np

from anon_ray.config import AppConfig, MaskConfig
from anon_ray.core import mask, refine
from anon_ray.core.stitch import count_objects
from anon_ray.core.streamed import StreamedBoxes, streamed_reach
from anon_ray.detect import Detector, Recent
from anon_ray.detect.people import PeopleFinder
from anon_ray.io.files import atomic_write_bytes, sha256_bytes
from anon_ray.media import image as image_io
from anon_ray.media import rotation
from anon_ray.media.decode import decode
from anon_ray.media.encode import VideoWriter
from anon_ray.media.packets import Source
from anon_ray.models.registry import resolve
from anon_ray.run import heap
from anon_ray.run import held as held_frames
from anon_ray.run.deadline import NO_DEADLINE, Deadline
from anon_ray.run.errors import AssetError
from anon_ray.run.prefetch import prefetch
from anon_ray.run.stages import StageClock
from anon_ray.track import bytetrack
from anon_ray.track.camera import CameraMeter
from anon_ray.types import (
    Asset,
    AssetResult,
    CameraPath,
    Detections,
    PacketIndex,
    SegmentPlan,
    SegmentResult,
    VideoInfo,
)


def group_by_frame(dets: Detections) -> dict[int, Detections]:
    order = np.argsort(dets.frame, kind="stable")
    frames = dets.frame[order]
    starts = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1]]) if len(frames) else np.zeros(0, int)
    bounds = np.r_[starts, len(frames)]
    return {int(frames[a]): dets.select(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])}


def mask_photo(loaded: image_io.LoadedImage, dets: Detections, cfg: MaskConfig
               ) -> tuple[image_io.LoadedImage, tuple[str, ...]]:
    """The photo with its boxes masked (16-bit samples too, where it has them), and how the
    output will differ beyond the masks (manifest output_changes)."""
    rgb = mask.apply(loaded.rgb.copy(), dets, cfg)
    deep = None if loaded.deep is None else mask.apply_deep(loaded.deep, rgb, dets, cfg)
    changes = ("16-bit samples written as 8-bit",) if loaded.bit_depth > 8 and deep is None else ()
    return dataclasses.replace(loaded, rgb=rgb, deep=deep), changes


def _batched(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class Worker:
    """Everything one process needs to anonymize photos and video segments."""

    def __init__(self, cfg: AppConfig):
        self.cfg = cfg
        heap.fix_mmap_threshold()  # a worker lives for many segments: its heap must not creep (I3)
        self.detector = Detector(cfg.detect, cfg.models)
        review = cfg.review
        self.people = PeopleFinder(resolve(review.people_model, cfg.models).path, review, cfg.detect.session) \
            if review.people_model and review.people_every > 0 else None

    def faceless(self, rgb: np.ndarray, masked: Detections, rot: int) -> bool:
        """Whether the frame (stored orientation, `rot` its display rotation) shows a person with
        no face of `masked` on them; people are looked for upright, as they are shown. Call only
        with `self.people`."""
        h, w = rgb.shape[:2]
        shown = rotation.to_display(rgb, rot) if rot else rgb
        boxes = rotation.boxes_to_display(masked.xyxy, rot, w, h) if rot else masked.xyxy
        return self.people.faceless(shown, Detections.build(masked.frame, boxes, masked.score, masked.cls)) > 0

    @property
    def model_hashes(self) -> dict[str, str]:
        return self.detector.model_hashes

    def detect_stream(self, frames: Iterable[tuple[int, np.ndarray]], rot: int, size_wh: tuple[int, int],
                      deadline: Deadline = NO_DEADLINE, photo: bool = False,
                      clock: StageClock | None = None) -> Detections:
        """Detect on the displayed orientation (upright faces), return boxes in stored pixels."""
        batches = self.detect_batches(frames, rot, size_wh, deadline, photo, clock)
        return Detections.concat([d for _, d, _ in batches])

    def detect_batches(self, frames: Iterable[tuple[int, np.ndarray]], rot: int, size_wh: tuple[int, int],
                       deadline: Deadline = NO_DEADLINE, photo: bool = False, clock: StageClock | None = None
                       ) -> Iterator[tuple[int, Detections, CameraPath]]:
        """Per batch: the index after its last frame, its detections (see detect_stream) and the
        camera's path over its frames (stored pixels; empty for photos or with track.camera off).
        `clock` gets the seconds of detection and of the camera's measure."""
        clock = clock or StageClock()
        camera = CameraMeter(self.cfg.track.camera_width) if self.cfg.track.camera and not photo else None
        recent: Recent | None = None  # the boxes of the frames since the last full face pass (cascade.py)
        for batch in _batched(frames, max(1, self.cfg.detect.face.batch)):
            deadline.check()
            shown = [rotation.to_display(rgb, rot) for _, rgb in batch]
            first = batch[0][0]
            if [i for i, _ in batch] != list(range(first, first + len(batch))):
                raise AssetError("decoder skipped frames inside a batch")
            with clock("detect"):
                dets = self.detector.detect(shown, first_index=first, photo=photo, recent=recent)
            if not photo:
                since = first + len(batch) - self.cfg.detect.face.full_every
                seen = Detections.concat([recent.dets, dets]) if recent is not None else dets
                recent = Recent(recent.start if recent is not None else first, seen.select(seen.frame >= since))
            if rot:
                dets = Detections(dets.frame, rotation.boxes_to_stored(dets.xyxy, rot, *size_wh).astype(np.float32),
                                  dets.score, dets.cls, dets.track)
            path = CameraPath.empty()
            if camera:
                with clock("camera"):
                    path = camera.measure(first, [rgb for _, rgb in batch])
            yield first + len(batch), dets, path

    def image(self, asset: Asset, src: str, dst: str, target: str, deadline: Deadline = NO_DEADLINE) -> AssetResult:
        """Mask the photo at local `src` into local `target`, published later as `dst`."""
        clock = StageClock()
        with clock("read"):
            loaded = image_io.read_image(src, self.cfg.image)
        h, w = loaded.rgb.shape[:2]
        dets = self.detect_stream([(0, loaded.rgb)], 0, (w, h), deadline, photo=True, clock=clock)
        faceless: tuple[int, ...] = ()
        if self.people is not None:
            with clock("people"):
                faceless = (0,) if self.faceless(loaded.rgb, dets, 0) else ()
        with clock("mask"):
            masked, changes = mask_photo(loaded, dets, self.cfg.mask)
        with clock("write"):
            data = image_io.encode_image(masked, self.cfg.image)
            atomic_write_bytes(target, data)
        faces, plates = count_objects(dets)
        return AssetResult(asset, dst, faces=faces, plates=plates, frames=1, segments=1,
                           output_sha256=sha256_bytes(data), output_size=len(data), tracks=dets, changes=changes,
                           stage_seconds=clock.totals(), frame_size=(w, h), faceless=faceless)

    def _decode_context(self, src: Source, seg: SegmentPlan, index: PacketIndex, clock: StageClock,
                        held: held_frames.HeldFrames | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """The context range's frames for detection; the owned ones also go to `held`, if given."""
        for i, pts, rgb in clock.timed("decode", decode(src, seg.seek_pts, index, seg.ctx_start, seg.ctx_end)):
            if held is not None and seg.start <= i < seg.end:
                held.put(i, pts, rgb)
            yield i, rgb

    def _refine(self, raw: Detections, path: CameraPath, seg: SegmentPlan, info: VideoInfo) -> Detections:
        ctx = range(seg.ctx_start, seg.ctx_end)
        return refine.mask_boxes(bytetrack.track(raw, self.cfg.track, ctx, path), self.cfg.track, ctx,
                                 (info.width, info.height), path, seg.start)

    def _final_frames(self, src: Source, seg: SegmentPlan, info: VideoInfo, index: PacketIndex,
                      deadline: Deadline, raw: list[Detections], paths: list[CameraPath], clock: StageClock,
                      held: held_frames.HeldFrames | None) -> Iterator[tuple[int, Detections]]:
        """(frame, its mask boxes) over the context range, each as soon as it is final (streamed.py);
        every batch's raw detections and camera path are appended to `raw` and `paths`, and the
        owned frames go to `held` as they are decoded."""
        ctx = range(seg.ctx_start, seg.ctx_end)
        stream = StreamedBoxes(self.cfg.track, ctx, (info.width, info.height), seg.start)
        decoded = prefetch(self._decode_context(src, seg, index, clock, held))
        for seen_to, dets, path in self.detect_batches(decoded, info.rotation, (info.width, info.height), deadline,
                                                       clock=clock):
            raw.append(dets)
            paths.append(path)
            with clock("track"):
                span, boxes = stream.add(dets, seen_to, path)
            per_frame = group_by_frame(boxes)
            for i in span:
                yield i, per_frame.get(i, Detections.empty())

    def segment(self, src: Source, seg: SegmentPlan, info: VideoInfo, index: PacketIndex,
                part_path: str | None, deadline: Deadline = NO_DEADLINE, codec: str = "") -> SegmentResult:
        """Detect and track over the context range, and mask and encode the owned frames meanwhile.

        With `part_path` None nothing is encoded: only the boxes to mask over the context range
        (detected, tracked, gaps filled, padded), as the evaluator scores them.

        Detection runs in a thread of its own; each owned frame is masked and encoded as soon as
        its boxes are final, so encoding overlaps detection. Owned frames are decoded once and held
        from detection to encoding (held.py), a bounded number at a time (I3); frames too large to
        hold that many (4K and up) are decoded a second time for encoding. Before the part is published,
        the boxes used on every owned frame are checked against a whole-segment refinement (the
        track table returned), so streaming can never mask less than it. Past `deadline` it raises
        Timeout, leaving no part. `codec`: the part's encoder (VideoPlan.codec); "" = video.codec.
        The result's `seconds` are its stage clock's totals (stages.py).
        """
        clock = StageClock()
        if part_path is None:
            batches = list(self.detect_batches(prefetch(self._decode_context(src, seg, index, clock)), info.rotation,
                                               (info.width, info.height), deadline, clock=clock))
            with clock("track"):
                tracks = self._refine(Detections.concat([b[1] for b in batches]),
                                      CameraPath.concat([b[2] for b in batches]), seg, info)
            return SegmentResult(plan=seg, part_path="", tracks=tracks, frames_written=0, seconds=clock.totals())
        raw: list[Detections] = []
        paths: list[CameraPath] = []
        used: dict[int, Detections] = {}
        faceless: list[int] = []
        every = self.cfg.review.people_every if self.people is not None else 0
        tmp = f"{part_path}.tmp{os.getpid()}{os.path.splitext(part_path)[1]}"
        cap = held_frames.capacity(streamed_reach(self.cfg.track), max(1, self.cfg.detect.face.batch))
        held = held_frames.HeldFrames(cap) if held_frames.fits(cap, info.width, info.height) else None
        # Boxes are small: the queue holds a whole segment's, so detection never waits for encoding.
        final = prefetch(self._final_frames(src, seg, info, index, deadline, raw, paths, clock, held),
                         depth=seg.ctx_end - seg.ctx_start + 1)
        owned = None if held else prefetch(clock.timed("decode_again",
                                                       decode(src, seg.seek_pts, index, seg.start, seg.end)))
        try:
            with VideoWriter(tmp, info, self.cfg.video, codec) as writer:
                for i in range(seg.start, seg.end):
                    deadline.check()
                    for f, boxes in final:
                        if f == i:
                            used[i] = boxes
                            break
                    else:
                        raise AssetError(f"segment {seg.index}: no boxes for frame {i}")
                    if held is not None:
                        pts, rgb = held.take(i)
                    elif (got := next(owned, None)) is None or got[0] != i:
                        raise AssetError(f"segment {seg.index}: frame {i} missing from decode")
                    else:
                        pts, rgb = got[1:]
                    if every > 0 and i % every == 0:
                        with clock("people"):
                            if self.faceless(rgb, used[i], info.rotation):
                                faceless.append(i)
                    with clock("mask"):
                        mask.apply(rgb, used[i], self.cfg.mask)
                    with clock("encode"):
                        writer.write(rgb, pts)
            for _ in final:  # the context frames after the owned ones
                pass
            with clock("track"):  # the detection thread has ended: the clock's "track" is free again
                boxes = self._refine(Detections.concat(raw), CameraPath.concat(paths), seg, info)
            _check_streamed(used, boxes, seg)
            os.replace(tmp, part_path)
        finally:
            if held is not None:
                held.close()  # first: the decoding thread may wait for room
            final.close()
            if owned is not None:
                owned.close()
            if os.path.exists(tmp):
                os.remove(tmp)
        return SegmentResult(plan=seg, part_path=part_path, tracks=boxes, frames_written=writer.frames,
                             seconds=clock.totals(), faceless=tuple(faceless))


def _check_streamed(used: dict[int, Detections], boxes: Detections, seg: SegmentPlan) -> None:
    """Fail the segment unless every owned frame was masked with exactly the whole-segment boxes."""
    whole = group_by_frame(boxes.select((boxes.frame >= seg.start) & (boxes.frame < seg.end)))
    for i in range(seg.start, seg.end):
        if _box_rows(used.get(i, Detections.empty())).tolist() != _box_rows(whole.get(i, Detections.empty())).tolist():
            raise AssetError(f"segment {seg.index}: streamed masks of frame {i} differ from the segment's tracks")


def _box_rows(dets: Detections) -> np.ndarray:
    rows = np.c_[dets.cls, dets.xyxy].astype(np.float64)
    return rows[np.lexsort(rows.T[::-1])]
