"""Structured configs: one small dataclass per core function, composed into AppConfig.

No logic lives here. Hydra registers these in the entry point (anon_ray/cli.py); core code
receives the plain dataclasses (OmegaConf.to_object) and never sees Hydra.

The defaults here ARE the default preset (`balanced`): a plain-Python `AppConfig()` masks exactly
what the CLI masks with no arguments (tests/test_config.py composes both and compares them), so
the safe value is the default everywhere. conf/ only names what a group or preset changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


# Members are named as their values: OmegaConf reads an enum from YAML by member name, so
# `mask.method=blur` works and a misspelt value is refused when the config is composed.
class MaskMethod(StrEnum):
    blur = "blur"
    pixelate = "pixelate"
    fill = "fill"


class MaskShape(StrEnum):
    ellipse = "ellipse"
    box = "box"


class AudioPolicy(StrEnum):
    keep = "keep"  # the source's audio packets, byte for byte
    drop = "drop"  # no audio stream in the output: voices are personal data too


class PixelPolicy(StrEnum):
    # 8-bit 4:2:0, what browsers and hardware decoders play (H.264 High 10 and 4:2:2/4:4:4 play almost nowhere); HDR (PQ
    # or HLG transfer) keeps 10 bits, which 8 would band. Changes are named in the manifest's output_changes.
    playable = "playable"
    source = "source"  # the nearest format the encoder writes: bit depth and chroma kept


@dataclass
class SessionConfig:
    """ONNX Runtime session: providers tried in order, those not installed are skipped."""

    providers: list[str] = field(
        default_factory=lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    intra_op_threads: int = 0  # 0 = ORT default (one per core)
    inter_op_threads: int = 1
    # ORT's pool threads spin between operators by default, taking the cores the decoder, masking
    # and encoder threads beside inference need: off, a 720p clip took 23 s instead of 27 s here
    # (whole process, faces only, with media/yuv.py's colour conversion). Photos, detection alone,
    # gain nothing from it either: 2.4 / 2.5 against 2.2 / 2.4 s a faces_wider photo (2026-12-07).
    spin: bool = False


@dataclass
class ModelsConfig:
    """Where weights live. A value in `paths` overrides the manifest: a local path or s3:// URI."""

    manifest: str = "models/models.yaml"
    cache_dir: str = "models/cache"
    paths: dict[str, str] = field(default_factory=dict)


@dataclass
class TilingConfig:
    """A zoomed-in pass over overlapping tiles, for objects too small for the whole-frame pass.

    For each of `scales`, the frame is scaled by it, cut into square tiles of `tile` pixels that
    overlap by `overlap` of a side, and each tile goes through the detector on its own; boxes come
    back into frame pixels and are merged with the whole-frame pass by cross-tile NMS. A frame that
    fits in one tile costs one extra pass per scale; a scale whose pass needs more than `max_tiles`
    tiles (0 = no limit) is skipped, which bounds the cost on large frames (video) while small
    photos are always enlarged.
    """

    enabled: bool = False
    scales: list[float] = field(default_factory=lambda: [2.0])
    tile: int = 640
    overlap: float = 0.25
    max_tiles: int = 0
    # False: photos only. A photo has one chance, while a video frame's miss is covered by its
    # neighbours (tracking, gap fill) and the tiles' cost repeats on every frame.
    video: bool = True


@dataclass
class FaceConfig:
    enabled: bool = True
    # INT8 after a float stem, with 7-bit weights (models/build.py): the 8-bit model was ~1.8x faster than "centerface"
    # (float) on CPUs with VNNI, and the 7-bit one runs the same kernels there; on x86 CPUs without VNNI, whose int8
    # sums are 16-bit, 8-bit weights need ONNX Runtime's slower precision mode (detect/session.py) while 7-bit ones run
    # the fast kernels, 1.1-1.3x faster than float. The same outputs on every CPU, so a cluster of mixed machines masks
    # alike. 7-bit / 8-bit / float: videos_gt leaked face-frames >= 16 px 0.007 each (48 / 46 / 50 a minute); every 4th
    # faces_wider photo 0.006 / 0.007 / 0.009; every 3rd faces/ photo 0.005 / 0.006 / 0.005; over-masking within 0.01 of
    # each other (all figures: this file's history).
    model: str = "centerface_int8_7bit"
    # Recall first: with tracks that follow the camera, 0.075 leaks a third fewer face-frames on videos_gt than 0.1
    # (0.021 -> 0.014; over-masking 0.120 -> 0.136) at the same job speed (8.2 against 8.1 frames/s in process, 720p).
    threshold: float = 0.075
    # Photos are cut lower: a photo has one chance, while a video frame's miss is covered by its
    # neighbours through tracking, and on video each low-score box repeats its cost on every frame.
    photo_threshold: float = 0.05
    nms_iou: float = 0.3
    max_side: int = 1280  # the long side of the network input; larger frames are downscaled
    min_side: int = 0  # smaller frames are upscaled until their long side reaches this (0 = never)
    batch: int = 4
    flip: bool = False  # also detect on the mirrored frame (test-time augmentation)
    # Photos and frames up to 512 px on their long side also get a pass enlarged 2x (one network
    # input of at most 1024 px); larger frames, video at 640x360 and up included, keep one pass.
    tiling: TilingConfig = field(default_factory=lambda: TilingConfig(enabled=True, scales=[2.0], tile=1024, max_tiles=1))
    # Photos up to 1024 px on their long side also get the whole photo enlarged 1.5x (one network
    # input of at most 1536 px): on every 4th faces_wider photo, faces < 16 px leak 0.286 -> 0.141
    # and >= 16 px 0.0138 -> 0.0077, over-masking 0.122 -> 0.151 (2x tiles instead: 0.048 and
    # 0.0069, over-masking 0.199, at 6x the face time). Video frames never get it.
    photo_tiling: TilingConfig = field(
        default_factory=lambda: TilingConfig(enabled=True, scales=[1.5], tile=1536, max_tiles=1, video=False))
    # Video cascade (detect/cascade.py): the passes above on every `full_every`-th frame, the whole frame at
    # `cheap_side` px on its long side on the others (1 = every frame in full). On videos_gt (720p) 4 and 800 leak fewer
    # face-frames >= 16 px than every frame in full (0.0089 against 0.0140; over-masking 0.147 against 0.136; flicker
    # 0): the shrunk frame finds motion-blurred faces the full one misses. Faces only, full_every 4 / 6 / 7 / 8 / 12
    # leak 0.0096 / 0.0085 / 0.0098 / 0.0093 / 0.0080 (over-masking 0.121-0.124, flicker 0): 6 keeps a face seen only by
    # full passes filled through one missed full pass (12 frames, within track.max_gap), for ~9% less detection than 4.
    full_every: int = 6
    # With `regions` below, faces only on videos_gt, cheap_side 640 / 704 / 736 / 768 / 800 leak 0.0077 / 0.0074 /
    # 0.0074 / 0.0085 / 0.0085 of face-frames >= 16 px (per minute 60 / 50 / 52 / 50 / 60; over-masking 0.138 / 0.130 /
    # 0.128 / 0.124 / 0.122; flicker 0): 736 px fills the network input with the least padding (414 of 416 rows; 800 px:
    # 450 of 480), so its shrunk pass costs ~20% less (the bench clip in process 24.8 -> 23.2 s).
    cheap_side: int = 736
    # Cheap frames searched only around the faces seen since the last full pass, the whole shrunk frame on every
    # `region_sweep`-th (detect/cascade.py). videos_gt faces only: leaked face-frames >= 16 px 0.0085 as without (60 a
    # minute against 64); without the sweep 0.0090. In process, 720p, faces only: a 600-frame CCTV clip 72.8 -> 53.1 s;
    # the crowded bench clip the same, most of its frames over region_max_share; worker peak RSS 0.99 -> 0.77 GB.
    regions: bool = True
    region_sweep: int = 3
    region_grow: float = 1.0  # of a box's long side, on each side
    region_motion: float = 0.02  # of the frame's long side, on each side, per frame since the box
    # Regions covering more of the frame: the whole shrunk frame (0.8: leak 0.0094, no faster; such
    # frames searched on even numbers only: 0.029, 82 a minute, not taken; videos_gt faces only).
    region_max_share: float = 0.5
    # Faces the frame edge cuts (nearly every face videos_gt leaked, most >= 96 px): every `edge_every`-th video frame
    # is also searched mirrored out by `edge_pad` of its long side at each edge, shrunk to `edge_side` px on its long
    # side, its boxes reaching past the edge kept from `edge_threshold` (cascade.edge_pass; 0 = off). Faces only,
    # videos_gt / the two pans (README), leak and over-masking: 0.0025, 0.196 / 0.048, 0.240 / 0.034, 0.170 without;
    # 0.0010, 0.207 / 0.043, 0.272 / 0.033, 0.187 with; from 0 / 0.15 / 0.5: 0.0012 / 0.0011 / 0.0018 on videos_gt.
    edge_every: int = 3
    edge_side: int = 384
    edge_threshold: float = 0.3
    edge_pad: float = 0.06
    # The cascade's cheap passes' model ("" or `model`: that one at its cut-off; another, `yunet` (README "Models"),
    # cut at `cheap_threshold`). With `cheap_small_side`, a whole cheap frame is also searched shrunk to that long
    # side (a pan's blur shrinks with the frame), its boxes cut at `cheap_small_threshold` (0 = none).
    cheap_model: str = ""
    cheap_threshold: float = 0.1
    cheap_small_side: int = 0
    cheap_small_threshold: float = 0.1
    # A photo's face box at least `confirm_height` px tall scoring under `confirm_below` is kept only
    # where another of the photo's passes (tiles, the 1.5x pass, mirrored) found it too
    # (tiling.confirmed): on every 4th faces_wider photo, over-masking from faces 0.135 -> 0.102
    # with no labelled face leaking more (faces/ unchanged); 0 = off. Photos with one pass (long
    # side over 1024 px) keep every box; video frames are not confirmed (tracking judges them).
    confirm_height: int = 96
    confirm_below: float = 0.1


@dataclass
class PlateConfig:
    enabled: bool = True
    # fastanpr_int8 takes ~30% less plate time on CPUs with VNNI, but on the 64-photo plate pan plate-frames >= 16 px
    # leaked 0.196 against 0.184 and on plates_openimages 0.064 against 0.053 (its scores run ~0.03 lower; compensated
    # by a 0.07 threshold and a 0.45 track seed: 0.187, over-masking 0.177 -> 0.190). In the fast preset: pan 0.229
    # against 0.224, plates/ 0.032 against 0.027, plates_openimages 0.173 against 0.177. Not taken by any preset. On
    # x86 CPUs without VNNI its 8-bit weights need precision mode (82 against float's 71 ms a 640 px pass, 2-core AMD
    # EPYC); quantized to 7 bits, as the face model is, 61 ms: ~5 ms a video frame with the pass on every 2nd frame,
    # too little for the plates the INT8 model loses (2026-12-07).
    model: str = "fastanpr"
    # Video frames' cut-off (tight_letterbox below: 0.04), with `every`: the pass on every 2nd frame
    # cut at 0.05 misses fewer plates than on every frame at 0.1 (boxes that joined no track are
    # masked 2 frames before and after anyway, track.plate_lone_pad), in ~27% less time a frame.
    threshold: float = 0.04
    # Photos are cut lower, as faces are (FaceConfig.photo_threshold); with the 2x tiles, 0.075 leaks 0.078 of plates >=
    # 16 px on plates_openimages against 0.086 at 0.1, over-masking +0.001. With every photo pass since: 0.05 leaves >=
    # 16 px at 0.053 (not detected 0.045 -> 0.043, under-covered 0.008 -> 0.010), all sizes 0.085 -> 0.077, over-masking
    # 0.127 -> 0.130 (2026-12-06; plates/ and the crowds' false plates not measured): not taken yet.
    photo_threshold: float = 0.075
    nms_iou: float = 0.45
    # Merge one model's passes by weighted box fusion (tiling.merge): each plate's box widens to the score-weighted mean
    # of every pass's box of it where that reaches further, instead of the best-scoring box alone, often a tile's tight
    # or shifted one (every 4th plates_openimages photo, plates alone: leak >= 16 px 0.069 -> 0.062, over-masking from
    # plates 0.084 -> 0.086; the plain mean, not only widening, lost a close-up plate whose partial boxes pulled it in).
    fuse: bool = True
    # Network-input scales to run: 0.5 adds a pass with the frame shrunk to half, for close-ups
    # (platedet missed many; fastanpr misses none more without it on the dev set: max_recall keeps it).
    # Above 1 the frame is enlarged past the 640 px input (free-sided models only): on a 720p pan
    # over labelled photos (tools/pan_video.py) [2.0, 1.0] took plates < 16 px from 0.55 to 0.19
    # leaked but >= 16 px stayed 0.30 (README), for a 1280 x 736 pass (~2.3x the 640 one) a frame.
    scales: list[float] = field(default_factory=lambda: [1.0])
    # Photos add the half-scale pass: close-up plates fill a photo more often than a video frame,
    # and a photo pays it once (plates_openimages, with shrink_threshold 0.5: leak >= 16 px
    # 0.076 -> 0.070, >= 96 px 0.077 -> 0.058, over-masking 0.121 -> 0.122; at the class's own
    # cut-off 0.066 but over-masking 0.139, big false boxes from the shrunk frame).
    photo_scales: list[float] = field(default_factory=lambda: [1.0, 0.5])
    shrink_threshold: float = 0.5  # score cut-off of the boxes of scales below 1 (0: the class's own)
    # A model with free input sides (models/yolo_pt.py) takes a video frame padded only to its stride,
    # 16:9 as 640 x 384, not the square 640 x 640 it was trained on: ~40% less a pass, cut at 0.04 not
    # 0.05 (64-photo pans over plates_openimages / plates, tools/pan_video.py: plate-frames >= 16 px
    # (all sizes) leaked 0.116 (0.133) -> 0.116 (0.132), 0.026 (0.027) -> 0.023 (0.025), over-masking
    # 0.220 -> 0.224, 0.167 -> 0.171; at 0.05 the first 0.119; videos_gt faces alike, 0.165 -> 0.154,
    # 2026-12-07). Photos stay square (for_photos): plates_openimages 0.053 -> 0.058 tight.
    tight_letterbox: bool = True
    # Video frames get the plate passes on every `every`-th frame only (detect/cascade.py: Cadence). The 64-photo plate
    # pan (tools/pan_video.py), plate-frames >= 16 px leaked (16-32 px; < 16 px), over-masking, frames a second in
    # process (the bench clip, 720p, 2 cores): every frame at 0.1, 0.129 (0.201; 0.191), 0.221, 11.1; every 2nd at 0.1,
    # 0.145 (0.229; 0.227), 0.212, 15.2; every 2nd at 0.05, 0.116 (0.166; 0.199), 0.220, 15.2; every frame at 0.05 (as
    # in max_recall), 0.098 (0.140; 0.154), 0.233, ~11 (2026-12-06). The fast preset (cut at 0.2) every 2nd frame:
    # 0.218, over-masking 0.158; every frame 0.204, 0.167.
    every: int = 2
    flip: bool = False  # also detect on the mirrored frame (test-time augmentation)
    # Photos (not video frames) also get 640 px tiles at native resolution, so a plate in a large photo is not shrunk
    # to the network's 640 px, and at 2x, so plates under ~30 px reach a size the model finds (plates_openimages, with
    # photo_threshold and plate_margin below: leak >= 16 px 0.121 -> 0.076, all sizes 0.196 -> 0.114). Cost: 17 plate
    # passes for a 1024x768 photo (5 with 1x only), photos ~3x slower; a 12-megapixel photo 48 + 221 tiles; max_tiles
    # bounds each scale's pass. A whole-photo pass at each tile scale instead (2048x1536 at 2x): every 6th
    # plates_openimages photo 2.3 -> 1.6 s, but plates >= 16 px leak 0.049 -> 0.061 (all sizes 0.079 -> 0.093): the
    # tiles find plates the enlarged photo does not. Not taken (2026-12-07).
    tiling: TilingConfig = field(default_factory=lambda: TilingConfig(enabled=True, scales=[1.0, 2.0], tile=640, video=False))
    # A second plate model for photos, its boxes added to the first's ("": none): trained on other plates, it finds
    # about a quarter of the plates fastanpr misses. Its passes: the whole photo at photo_scales and native-resolution
    # tiles (every 2nd plates_openimages photo, leak >= 16 px / all sizes / over-masking / its seconds a photo: one
    # model 0.083 / 0.106 / 0.162; + the second's whole-photo passes 0.071 / 0.098 / 0.168 / 0.3 s; + its 1x tiles 0.060
    # / 0.082 / 0.171 / 0.7 s; with 2x tiles too 0.064 / 0.069 / 0.176 / 1.7 s; plates/ unchanged at 0.005). Video
    # frames never: a second model would double the plate pass of every frame.
    photo_extra_model: str = "safelicensing"
    # Its own cut-off (boxes under photo_threshold are cut too). Both cut at 0.05 on photos: plates
    # >= 16 px on plates_openimages 0.053 as with photo_threshold 0.05 alone, all sizes 0.076,
    # over-masking 0.134 (2026-12-06): the rest is not in either model's low-score boxes.
    photo_extra_threshold: float = 0.1
    photo_extra_tiling: TilingConfig = field(
        default_factory=lambda: TilingConfig(enabled=True, scales=[1.0], tile=640, video=False))


@dataclass
class DetectConfig:
    face: FaceConfig = field(default_factory=FaceConfig)
    plate: PlateConfig = field(default_factory=PlateConfig)
    session: SessionConfig = field(default_factory=SessionConfig)


@dataclass
class MaskConfig:
    """How a box becomes unrecoverable pixels. Margins are a share of the box size, per side."""

    method: MaskMethod = MaskMethod.blur
    face_shape: MaskShape = MaskShape.ellipse
    plate_shape: MaskShape = MaskShape.box  # plates are rectangles: an ellipse would leave their corners
    face_margin: float = 0.3  # left and right; also top and bottom unless those are set
    # Chosen on tight labels (WIDER crowds, its video ground truth) beside the loose faces/ set: WIDER's labels reach as
    # far above CenterFace's box as beside it (the loose Kaggle boxes sat lower, which an earlier 0.05 above was tuned
    # on), and an ellipse must outgrow a label's box to cover 90% of it (README, "How the defaults were chosen").
    face_margin_top: float | None = 0.25
    face_margin_bottom: float | None = 0.3
    # The plate model's boxes fall a few px short of a plate's ends, and of a tilted plate's top and bottom. Chosen on
    # plates/ and plates_openimages together (one detection run each, 2026-12-06), plates >= 16 px left uncovered of 406
    # / 486 and over-masking, at 0.15: 3 / 26, 0.099 / 0.127; 0.2: 3 / 26; 0.25: 1 / 24, 0.124 / 0.156; 0.3: 1 / 24.
    # Growing plates only above and below (0.15 beside, 0.25 above and below: 3 / 24, 0.113 / 0.144) or less beside them
    # (0.1 and 0.25: 4 / 24) leaves more uncovered. faces_wider's over-masking (false plates): 0.143 -> 0.149.
    plate_margin: float = 0.25
    feather: float = 0.1  # share of the mask's short side that fades into the background
    blocks: int = 2  # block = box short side / blocks: a face keeps at most ~blocks x blocks averages (mask.py)
    fill_color: list[int] = field(default_factory=lambda: [0, 0, 0])


@dataclass
class TrackConfig:
    # The score that starts a face track (track/bytetrack.py): only tracks get gaps filled and ends padded. 0.5 -> 0.2
    # (faces only, 2026-12-07): videos_gt leaked face-frames >= 16 px 0.0069 -> 0.0038 (52 -> 30 a minute), over-masking
    # 0.130 -> 0.161; a pan over 32 faces_wider photos (tools/pan_video.py) 0.132 -> 0.080, over-masking 0.183 -> 0.214.
    high_threshold: float = 0.2
    # Boxes under `small_height` px start tracks from `small_high_threshold`: small crowd faces score low and are found
    # on the full passes only (every 6th frame), while a small false box costs little area. Faces only, videos_gt / the
    # pan / a second pan (README), leak and over-masking, 0.2 for all: 0.0038, 0.161 / 0.080, 0.214 / 0.042, 0.155;
    # under 32 px from 0.1: 0.0025, 0.196 / 0.048, 0.240 / 0.034, 0.170; all from 0.15: 0.0027, 0.187 / 0.071, 0.230
    # / 0.037, 0.184; from 0.1: 0.0011, 0.253 / 0.036, 0.276 / 0.024, 0.270 (24 / 40 / 48 px, 0.075, 0.125: README).
    small_high_threshold: float = 0.1
    small_height: int = 32
    # The score that starts a plate track. 0.3 on a 720p pan over labelled plates (tools/pan_video.py): plate-frames
    # >= 16 px leaked 0.298 -> 0.271, over-masking 0.169 -> 0.212 (false plates tracked and padded): max_recall only.
    plate_high_threshold: float = 0.5
    match_iou: float = 0.2
    max_age: int = 15  # frames a lost track is kept for re-association
    max_gap: int = 15  # gaps up to this many frames are filled by interpolation
    pad: int = 10  # frames a track is extended before its first and after its last detection
    # Frames a face / plate detection that joined no track (one under its high threshold) is also masked on, before and
    # after its own: the detector finds such faint ones on some frames only. On the 64-photo plate pan
    # (tools/pan_video.py), both classes padded: plate-frames >= 16 px leaked 0.163 / 0.139 / 0.127 at 0 / 1 / 2
    # (< 16 px 0.297 / 0.219 / 0.185), over-masking 0.204 / 0.226 / 0.248. Faces on videos_gt at 2: leaked face-frames
    # >= 16 px 0.007 -> 0.002, but over-masking 0.155 -> 0.243 (false faces under 0.5 held 5 frames): plates only,
    # which on the pan gives 0.129 (< 16 px 0.191, >= 96 px 0.113 -> 0.086), over-masking 0.221 (2026-12-06).
    lone_pad: int = 0
    plate_lone_pad: int = 2
    # Follow the camera (track/camera.py): tracks match, and boxes between and around detections
    # move, with the picture's measured shift as well as held still. On the ground-truth clips it
    # halved the leaked face-frames (most leaks are faces blurred by a pan).
    camera: bool = True
    camera_width: int = 320  # px of the grey copy the shift is measured on


@dataclass
class SegmentConfig:
    seconds: float = 30.0  # 0 = one segment per video
    overlap: int = 30  # context frames each side; >= max_gap + pad keeps cuts invisible


@dataclass
class VideoConfig:
    codec: str = "libx264"  # MP4, MOV, MKV, AVI and MPEG-TS outputs
    crf: int = 18
    preset: str = "veryfast"
    # WebM holds only VP8/VP9/AV1: a WebM input is written as WebM with this encoder, so a mixed archive needs one run
    # (its CRF scale is VP9's, 0-63; "good" quality, cpu-used 5: ~1.5x x264 veryfast's encode time at 720p).
    webm_codec: str = "libvpx-vp9"
    webm_crf: int = 24
    # 0: the encoder's own choice. 1 (each worker's x264 in one thread) was no faster in a bulk run (4 copies of the
    # 720p bench clip, faces only, 2 workers on 2 cores: 86.6 / 81.2 s against 86.5 / 79.9 s, interleaved, 2026-12-07).
    threads: int = 0
    audio: AudioPolicy = AudioPolicy.keep
    pixels: PixelPolicy = PixelPolicy.playable


@dataclass
class ImageConfig:
    jpeg_quality: int = 95
    webp_quality: int = 95
    max_pixels: int = 200_000_000  # larger images are refused (decompression bombs)


@dataclass
class ClusterConfig:
    address: str = ""  # empty = start an embedded local Ray
    # A job of at most 2 local photos or clips a worker, each no longer than a segment, runs in this
    # process, `workers` assets at a time, without starting the embedded Ray (run/engine.py): its
    # ~10-15 s of start and stop would be much of the job. false: always Ray.
    inline: bool = True
    workers: int = 2
    cpus_per_worker: float = 0.5
    gpus_per_worker: float = 0.0
    max_in_flight: int = 8  # assets being planned/processed at once (bounds driver memory)
    max_retries: int = 3
    pin_cpus: bool = False  # each worker claims round(cpus_per_worker) cores of its node (affinity.py)
    # Custom Ray resources each worker needs, to keep workers on the nodes meant for them (e.g. a
    # KubeRay worker group started with `--resources='{"anon_worker": 4}'`); workers are spread
    # over the nodes that have them.
    resources: dict[str, float] = field(default_factory=dict)


@dataclass
class StorageConfig:
    endpoint_url: str = ""
    region: str = ""
    addressing_style: str = "auto"
    scratch_dir: str = ""  # node-local cache for downloads and staged uploads; empty = system temp
    scratch_max_gb: float = 20.0


@dataclass
class AuditConfig:
    boxes: bool = False  # store box coordinates in the tracks table


@dataclass
class ReviewConfig:
    # Keep every masked box of each asset in `_anon_ray/review/boxes/` (io/review.py), so a
    # reviewer's corrections re-render it without detectors (anon-ray-rerender). Off: box
    # positions locate personal data (I5).
    boxes: bool = False
    # The review queue's risk signals (core/risk.py): detections under this score, or shorter than
    # this, are flagged; a track's ends within edge_share of the frame's short side count as at
    # the border; sheet_frames frames per asset are named for its contact sheet.
    low_score: float = 0.3
    small_px: int = 24
    edge_share: float = 0.04
    sheet_frames: int = 12
    # Frames with people but no face (detect/people.py): every `people_every`-th frame of a video,
    # and every photo, also goes through `people_model`, a person detector; a person at least
    # people_min_px tall scoring people_score with no masked face in the top of their box flags
    # the frame (a face turned away, bowed or hidden: the face model's misses). It decides no
    # pixel. "" = off. Every 30th frame costs ~0.7 ms a frame (a 300 px pass of a 720p frame:
    # ~20 ms on 2 cores).
    people_model: str = "ssdlite_pedestrian"
    people_every: int = 30
    people_score: float = 0.5
    people_min_px: int = 80
    # anon-ray-review's page: this machine only unless told otherwise (it serves masked frames
    # and box positions, and writes corrections).
    host: str = "127.0.0.1"
    port: int = 8765


@dataclass
class AppConfig:
    input: str = ""
    output: str = ""
    dry_run: bool = False
    force: bool = False
    # A file of a media format the job does not process, or a link leading out of the input,
    # fails the run (exit status 1) though its row says "skipped": the archive is not all masked.
    # Files that are no media (sidecars, notes) never do.
    fail_on_unsupported: bool = True
    asset_timeout_s: float = 3600.0
    detect: DetectConfig = field(default_factory=DetectConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)


@dataclass
class EvalConfig(AppConfig):
    """anon-ray-eval: score the detect + mask path on a folder with annotations.jsonl."""

    dataset: str = ""
    target: str = "auto"  # face | plate | auto (plate when the folder name says so)
    limit: int = 0  # 0 = every image
    curve: bool = False  # also sweep score thresholds, write CSV + PNG beside `report_dir`
    report_dir: str = ""


@dataclass
class BenchConfig(AppConfig):
    """anon-ray-bench: time the job against references in the same process."""

    frames: int = 0  # 0 = the whole clip
    resize: str = ""  # WxH: time a scaled copy of the input (e.g. 1280x720 for the README's 720p figure)
    reference: bool = True  # also race the real deface command line (`make deface`) against anon-ray's
    bulk_copies: int = 4  # the bulk race: this many copies of the clip in one run of each tool
    runs: int = 1  # alternating runs of the floor and the job, and of each tool per race; the fastest counts
    deface_venv: str = ""  # the virtualenv holding deface; "" = .venv-deface in the repository
    leak_dataset: str = ""  # a labelled photo folder: deface's leak rate on it, beside the race
    leak_limit: int = 0  # 0 = every image of leak_dataset
    workers_sweep: list[int] = field(default_factory=list)
    memory_minutes: list[float] = field(default_factory=list)  # generated 1080p clips, e.g. [1, 10]
    memory_fps: int = 5
