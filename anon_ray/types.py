"""Frozen types that flow between stages: numpy columns, never one Python object per box.

One result type per stage: inventory -> Asset, plan -> VideoPlan (of SegmentPlans), segment ->
SegmentResult, photo and finalize -> AssetResult (or a Failure value), manifest -> AssetRecord.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

FACE = 0
PLATE = 1
REGION = 2  # a reviewer's box (core/overrides.py): masked as drawn, never a detector's
CLASS_NAMES = ("face", "plate", "region")


@dataclass(frozen=True)
class Detections:
    """Boxes of any number of frames. `track` is -1 for a detection not (yet) in a track."""

    frame: np.ndarray  # int64 (n,)
    xyxy: np.ndarray  # float32 (n, 4), pixels of the frame as stored (coded); detection runs upright
    # and maps its boxes back (run/pipeline.py), so masks land on the pixels the encoder gets
    score: np.ndarray  # float32 (n,)
    cls: np.ndarray  # int8 (n,), FACE or PLATE
    track: np.ndarray  # int64 (n,)

    def __post_init__(self) -> None:
        n = len(self.frame)
        if self.xyxy.shape != (n, 4) or not (len(self.score) == len(self.cls) == len(self.track) == n):
            raise ValueError(f"Detections columns disagree in length: {n} frames, xyxy {self.xyxy.shape}")

    @staticmethod
    def build(frame, xyxy, score, cls, track=None) -> "Detections":
        xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
        n = len(xyxy)
        return Detections(
            frame=np.broadcast_to(np.asarray(frame, np.int64), (n,)).copy(),
            xyxy=xyxy,
            score=np.asarray(score, np.float32).reshape(n),
            cls=np.broadcast_to(np.asarray(cls, np.int8), (n,)).copy(),
            track=np.full(n, -1, np.int64) if track is None else np.asarray(track, np.int64).reshape(n),
        )

    @staticmethod
    def empty() -> "Detections":
        return Detections.build(np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0), np.zeros(0))

    @staticmethod
    def concat(parts: list["Detections"]) -> "Detections":
        parts = [p for p in parts if len(p)]
        if not parts:
            return Detections.empty()
        return Detections(
            frame=np.concatenate([p.frame for p in parts]),
            xyxy=np.concatenate([p.xyxy for p in parts]),
            score=np.concatenate([p.score for p in parts]),
            cls=np.concatenate([p.cls for p in parts]),
            track=np.concatenate([p.track for p in parts]),
        )

    def __len__(self) -> int:
        return len(self.frame)

    def select(self, keep: np.ndarray) -> "Detections":
        return Detections(self.frame[keep], self.xyxy[keep], self.score[keep], self.cls[keep], self.track[keep])

    def for_frame(self, index: int) -> "Detections":
        return self.select(self.frame == index)

    def with_track(self, track: np.ndarray) -> "Detections":
        return Detections(self.frame, self.xyxy, self.score, self.cls, np.asarray(track, np.int64))


@dataclass(frozen=True)
class CameraPath:
    """How the picture moved over consecutive frames (track/camera.py): a point that stays still
    in the scene sits at its frame-a position + xy[b] - xy[a] on frame b. Only differences mean
    anything; a run's first frame is at (0, 0)."""

    frame: np.ndarray  # int64 (n,), consecutive
    xy: np.ndarray  # float64 (n, 2), px of the stored frame

    @staticmethod
    def empty() -> "CameraPath":
        return CameraPath(np.zeros(0, np.int64), np.zeros((0, 2)))

    @staticmethod
    def concat(parts: list["CameraPath"]) -> "CameraPath":
        parts = [p for p in parts if len(p.frame)]
        if not parts:
            return CameraPath.empty()
        return CameraPath(np.concatenate([p.frame for p in parts]), np.concatenate([p.xy for p in parts]))

    def since(self, frame: int) -> "CameraPath":
        keep = self.frame >= frame
        return CameraPath(self.frame[keep], self.xy[keep])

    def at(self, frames: np.ndarray) -> np.ndarray:
        """float64 (n, 2) positions of `frames`; a frame outside the path takes its nearest end's
        (callers only use frames the path covers; (0, 0) everywhere when the path is empty)."""
        frames = np.asarray(frames, np.int64)
        if not len(self.frame):
            return np.zeros((len(frames), 2))
        return self.xy[np.clip(frames - self.frame[0], 0, len(self.frame) - 1)]


@dataclass(frozen=True)
class Asset:
    """One input file. `version` is the ETag, or size+mtime for local files. `skip`, when set,
    says why it is listed but not processed (inventory.UNSUPPORTED_FORMAT, ...), `skip_detail`
    in words (a format's name, never the file's content)."""

    uri: str
    relpath: str
    size: int
    version: str
    kind: str  # "image" | "video" | "unknown" | "unsupported"
    skip: str = ""
    skip_detail: str = ""
    output_suffix: str = ""  # added to relpath for the output's name (inventory.REMUX_SUFFIX)


@dataclass(frozen=True)
class SegmentPlan:
    """Frames [start, end) are owned and written; [ctx_start, ctx_end) are decoded and tracked.

    Frame indices count displayed frames from 0 in presentation order. Decoding starts at the
    keyframe whose pts is `seek_pts`: one keyframe before the last one at or before ctx_start, so
    frames after a keyframe that is not a clean entry point still decode right (plan.py).
    """

    asset: str
    index: int
    count: int
    start: int
    end: int
    ctx_start: int
    ctx_end: int
    seek_pts: int
    seek_frame: int
    # Bytes of the file that hold the packets decoded for [seek_frame, ctx_end), all streams
    # interleaved there included: a read-ahead hint for ranged reads; (-1, -1) when unknown.
    byte_start: int = -1
    byte_end: int = -1


@dataclass(frozen=True)
class SegmentResult:
    """Stage result of one segment: its part file ("" when only boxes were asked for) and boxes."""

    plan: SegmentPlan
    part_path: str
    tracks: Detections  # the boxes masked in owned frames plus context, with segment-local track ids
    frames_written: int
    seconds: dict = field(default_factory=dict)
    input_bytes: int = 0  # fetched from object storage for this segment (0: a local or cached file)
    node: str = ""  # the engine's opaque id of the node that ran it ("" in-process)
    faceless: tuple[int, ...] = ()  # owned frames with people but no face masked (detect/people.py)


@dataclass(frozen=True)
class PacketIndex:
    """Every video frame of a file from a packet scan (no decoding), in presentation order.

    `pts` is sorted ascending (stream time base); `key[i]` tells whether frame i's packet is a
    keyframe. Frame index i is the i-th displayed frame.
    """

    pts: np.ndarray  # int64 (n,)
    key: np.ndarray  # bool (n,)
    time_base_num: int
    time_base_den: int
    # Where each frame's packet lies in the file (int64 byte offset and size; offset -1 when the
    # demuxer does not say): only planning uses them, to give segments their byte ranges.
    pos: np.ndarray | None = None
    size: np.ndarray | None = None
    # How long the last displayed frame shows (stream time base; 0 when the container does not
    # say): a variable-rate clip's last frame must not take the encoder's average frame duration.
    last_duration: int = 0

    def __len__(self) -> int:
        return len(self.pts)

    def index_of(self, pts: int) -> int:
        """Frame index of a decoded frame's pts (exact match expected)."""
        return int(np.searchsorted(self.pts, pts))


@dataclass(frozen=True)
class VideoInfo:
    """What planning, decoding and encoding need to know about a video's main stream."""

    width: int  # coded (stored) size
    height: int
    rotation: int  # clockwise degrees that turn stored frames upright: 0, 90, 180, 270
    fps: tuple[int, int]
    time_base: tuple[int, int]
    n_frames: int
    duration_s: float
    pix_fmt: str
    codec: str
    color_range: int  # FFmpeg AVColorRange / AVColorPrimaries / AVColorTransferCharacteristic /
    color_primaries: int  # AVColorSpace values, 0 or 2 when unspecified
    color_trc: int
    colorspace: int
    audio_streams: int
    subtitle_streams: int
    start_pts: int
    display_matrix: tuple[int, ...] | None = None  # 9 ints as stored (keeps flips too), or None
    container: str = ""

    @property
    def display_size(self) -> tuple[int, int]:
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)


@dataclass(frozen=True)
class VideoPlan:
    """Stage plan: one video probed and cut into segments."""

    info: VideoInfo
    index: PacketIndex
    segments: tuple[SegmentPlan, ...]
    codec: str = ""  # the encoder its container takes (encode.output_codec); "" = VideoConfig.codec
    changes: tuple[str, ...] = ()  # how the output will differ beyond the masks (encode.output_changes)
    seconds: float = 0.0  # planning took (the input's download included)
    input_bytes: int = 0  # read from object storage in ranges to plan (0: from a local, cached or fetched file)


MAX_MESSAGE = 300  # error text is kept, cut short; it never carries pixels or file contents


@dataclass(frozen=True)
class Failure:
    """Why a stage could not finish an asset, as a value (stages never raise across processes)."""

    error_class: str
    error: str

    @staticmethod
    def of(exc: BaseException) -> "Failure":
        return Failure(type(exc).__name__, str(exc).replace("\n", " ")[:MAX_MESSAGE])


@dataclass(frozen=True)
class AssetResult:
    """Stage result of a photo or of a finalized video: what the driver writes a manifest row
    (and the tracks table) from."""

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
    tracks: Detections | None = None  # the boxes masked, with global track ids
    segment_nodes: tuple[str, ...] = ()  # per segment, in order: SegmentResult.node
    segment_input_bytes: tuple[int, ...] = ()  # per segment, in order: SegmentResult.input_bytes
    changes: tuple[str, ...] = ()  # how the output differs beyond the masks (VideoPlan.changes for videos)
    stage_seconds: dict = field(default_factory=dict)  # run/stages.py: busy seconds per stage, wall, cpu
    overrides_sha256: str = ""  # rendered with a reviewer's overrides file of this hash (run/rerender.py)
    frame_size: tuple[int, int] = (0, 0)  # (w, h) of the stored frames `tracks` are in; (0, 0) unknown
    faceless: tuple[int, ...] = ()  # frames with people but no face masked (detect/people.py)


@dataclass(frozen=True)
class AssetRecord:
    """One manifest row: what happened to one asset in one run. Never pixels, text or secrets."""

    run_id: str
    uri: str
    relpath: str
    kind: str
    status: str  # "ok" | "failed" | "skipped"
    error_class: str = ""
    error: str = ""
    faces: int = 0
    plates: int = 0
    frames: int = 0
    segments: int = 0
    seconds: float = 0.0
    input_version: str = ""
    input_size: int = 0
    input_sha256: str = ""
    output_uri: str = ""
    output_size: int = 0
    output_sha256: str = ""
    config_hash: str = ""
    models: str = ""  # JSON: model name -> sha256
    tool_version: str = ""
    finished_at: str = ""
    segment_nodes: str = ""  # JSON list: the opaque id of the node that ran each segment
    segment_input_bytes: str = ""  # JSON list: bytes each segment fetched from object storage
    # JSON list: how the output differs from the input beyond the masks (a pixel format the
    # encoder cannot write, a size padded to whole chroma samples, a 16-bit TIFF with associated
    # alpha written as 8-bit); "" when it differs in nothing.
    output_changes: str = ""
    # JSON object: busy seconds per stage (run/stages.py: plan, decode, detect, track, mask, encode,
    # finalize, ...), summed over the asset's segments, with their wall-clock and CPU seconds.
    stage_seconds: str = ""
    # sha256 of the reviewer's overrides file the output was re-rendered with ("": as detected);
    # a row with it is a corrected asset (anon-ray-rerender).
    overrides_sha256: str = ""
    # The review queue (core/risk.py): how much the masks deserve a look (0: nothing flagged),
    # the signals' counts as a JSON object, and the frames to look at as a JSON list.
    risk: float = 0.0
    risk_reasons: str = ""
    review_frames: str = ""
