"""Ultralytics YOLOv8 detect checkpoint (.pt) -> ONNX, with numpy and onnx only (no torch, no ultralytics).

The graph matches an Ultralytics ONNX export: input `images` (1, 3, height, width) RGB in [0, 1],
output `output0` (1, 4 + classes, anchors) holding cx, cy, w, h in input pixels then sigmoid class
scores, and metadata task=detect, names, imgsz and stride, which is what PlateDetector reads. Unlike
an Ultralytics export the input sides are free (multiples of the stride; `imgsz` is the training
size): a frame may be letterboxed only to the next multiple of the stride (detect.plate.
tight_letterbox) or enlarged past the training size. BatchNorm is folded into the convolutions (in
float64, rounded once to float32) as Ultralytics does before exporting. Only the layer types of
YOLOv8 detect models are known; any other is an error, never a guess.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from anon_ray.models.pt_reader import Layer, module_tree, read_checkpoint
from anon_ray.models.registry import ModelError

OPSET = 17
IR_VERSION = 8  # the oldest IR that carries opset 17, so older runtimes load the file too
INPUT, OUTPUT = "images", "output0"


class GraphBuilder:
    """Collects nodes and weights; names come from a counter so the same model gives the same bytes."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []

    def fresh(self, prefix: str) -> str:
        return f"{prefix}_{len(self.nodes) + len(self.weights)}"

    def const(self, value: np.ndarray | Sequence[float] | float, dtype: type = np.float32) -> str:
        name = self.fresh("w")
        self.weights.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], **attrs) -> str:
        name = self.fresh(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def split(self, x: str, sizes: Sequence[int], axis: int) -> list[str]:
        sizes_name = self.const(sizes, np.int64)
        name = self.fresh("Split")
        names = [f"{name}_{k}" for k in range(len(sizes))]
        self.nodes.append(helper.make_node("Split", [x, sizes_name], names, name=name, axis=axis))
        return names


@dataclass(frozen=True)
class Head:
    classes: int
    stride: int  # the largest: input sizes must be a multiple of it


def expect(layer: Layer, kind: str) -> Layer:
    if layer.kind != kind:
        raise ModelError(f"{layer.path}: expected {kind}, found layer type {layer.kind!r}, which this YOLOv8 "
                         "detect converter does not know")
    return layer


def child(layer: Layer, key: str, kind: str) -> Layer:
    if key not in layer.children:
        raise ModelError(f"{layer.path}: {layer.kind} lacks its {key!r} ({kind})")
    return expect(layer.children[key], kind)


def pair(layer: Layer, key: str) -> list[int]:
    value = layer.attrs.get(key)
    value = (value, value) if isinstance(value, int) else value
    if not (isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value)):
        raise ModelError(f"{layer.path}: {key} {value!r} is not a pair of integers")
    return list(value)


def conv2d(g: GraphBuilder, conv: Layer, x: str, weight: np.ndarray, bias: np.ndarray) -> str:
    if conv.attrs.get("padding_mode") != "zeros" or conv.attrs.get("transposed"):
        raise ModelError(f"{conv.path}: only zero-padded, non-transposed Conv2d is supported")
    pads = pair(conv, "padding")
    return g.op("Conv", [x, g.const(weight), g.const(bias)], kernel_shape=pair(conv, "kernel_size"),
                strides=pair(conv, "stride"), pads=pads + pads, dilations=pair(conv, "dilation"),
                group=int(conv.attrs["groups"]))


def plain_conv2d(g: GraphBuilder, conv: Layer, x: str) -> str:
    weight = conv.tensors["weight"].astype(np.float32)
    bias = conv.tensors.get("bias", np.zeros(len(weight))).astype(np.float32)
    return conv2d(g, expect(conv, "Conv2d"), x, weight, bias)


def conv_bn_silu(g: GraphBuilder, layer: Layer, x: str) -> str:
    """Ultralytics Conv: Conv2d, BatchNorm2d (folded into the weights), SiLU."""
    expect(layer, "Conv")
    conv, bn = child(layer, "conv", "Conv2d"), child(layer, "bn", "BatchNorm2d")
    child(layer, "act", "SiLU")
    t = {k: v.astype(np.float64) for k, v in bn.tensors.items() if k != "num_batches_tracked"}
    scale = t["weight"] / np.sqrt(t["running_var"] + float(bn.attrs["eps"]))
    weight = conv.tensors["weight"].astype(np.float64) * scale[:, None, None, None]
    bias = (conv.tensors.get("bias", np.zeros(len(scale))).astype(np.float64) - t["running_mean"]) * scale + t["bias"]
    y = conv2d(g, conv, x, weight.astype(np.float32), bias.astype(np.float32))
    return g.op("Mul", [y, g.op("Sigmoid", [y])])


def c2f(g: GraphBuilder, layer: Layer, x: str) -> str:
    """CSP bottleneck with two convolutions: split cv1's output in halves, chain bottlenecks on the second."""
    hidden = int(layer.attrs["c"])
    ys = g.split(conv_bn_silu(g, child(layer, "cv1", "Conv"), x), [hidden, hidden], axis=1)
    for block in child(layer, "m", "ModuleList").children.values():
        expect(block, "Bottleneck")
        y = conv_bn_silu(g, child(block, "cv2", "Conv"), conv_bn_silu(g, child(block, "cv1", "Conv"), ys[-1]))
        ys.append(g.op("Add", [ys[-1], y]) if block.attrs["add"] else y)
    return conv_bn_silu(g, child(layer, "cv2", "Conv"), g.op("Concat", ys, axis=1))


def sppf(g: GraphBuilder, layer: Layer, x: str) -> str:
    """Spatial pyramid pooling, fast: three chained max-pools, all four maps concatenated."""
    pool = child(layer, "m", "MaxPool2d")
    kernel, stride, pad = (pool.attrs.get(k) for k in ("kernel_size", "stride", "padding"))
    if not (isinstance(kernel, int) and stride == 1 and isinstance(pad, int) and pool.attrs.get("dilation") == 1
            and not pool.attrs.get("ceil_mode")):
        raise ModelError(f"{pool.path}: unsupported MaxPool2d {dict(pool.attrs)}")
    ys = [conv_bn_silu(g, child(layer, "cv1", "Conv"), x)]
    for _ in range(3):
        ys.append(g.op("MaxPool", [ys[-1]], kernel_shape=[kernel, kernel], strides=[1, 1], pads=[pad] * 4))
    return conv_bn_silu(g, child(layer, "cv2", "Conv"), g.op("Concat", ys, axis=1))


def upsample(g: GraphBuilder, layer: Layer, x: str) -> str:
    scale = layer.attrs.get("scale_factor")
    if layer.attrs.get("mode") != "nearest" or layer.attrs.get("size") is not None or not isinstance(scale, float):
        raise ModelError(f"{layer.path}: only nearest Upsample by a scale factor is supported")
    # torch's nearest upsampling as exported by torch.onnx: asymmetric coordinates, floor.
    return g.op("Resize", [x, "", g.const([1, 1, scale, scale])], mode="nearest",
                coordinate_transformation_mode="asymmetric", nearest_mode="floor")


def detect_head(g: GraphBuilder, layer: Layer, xs: list[str], size: int) -> Head:
    """Per level: box branch (cv2, 4 x reg_max DFL bins) and class branch (cv3); then DFL decoding into OUTPUT."""
    classes, bins = int(layer.attrs["nc"]), int(layer.attrs["reg_max"])
    strides = [int(s) for s in np.asarray(layer.attrs["stride"], np.float64)]
    boxes, scores = child(layer, "cv2", "ModuleList").children, child(layer, "cv3", "ModuleList").children
    if layer.attrs.get("end2end") or not (len(xs) == len(strides) == len(boxes) == len(scores)):
        raise ModelError(f"{layer.path}: unsupported Detect head ({len(xs)} inputs, strides {strides})")
    if any(s <= 0 or size % s for s in strides):
        raise ModelError(f"{layer.path}: input size {size} is not a multiple of the strides {strides}")
    levels, anchors, anchor_strides = [], [], []
    for x, box, score, stride in zip(xs, boxes.values(), scores.values(), strides):
        branches = []
        for branch in (box, score):
            convs = list(expect(branch, "Sequential").children.values())
            if len(convs) != 3:
                raise ModelError(f"{branch.path}: expected Conv, Conv, Conv2d, found {[c.kind for c in convs]}")
            branches.append(plain_conv2d(g, convs[2], conv_bn_silu(g, convs[1], conv_bn_silu(g, convs[0], x))))
        level = g.op("Concat", branches, axis=1)
        levels.append(g.op("Reshape", [level, g.const([1, 4 * bins + classes, -1], np.int64)]))
        anchor, anchor_stride = anchor_points(g, level, stride)
        anchors.append(anchor)
        anchor_strides.append(anchor_stride)
    dist, logits = g.split(g.op("Concat", levels, axis=2), [4 * bins, classes], axis=1)
    # DFL: each box side is the expectation of a softmax over `bins` distances, projected by the
    # DFL layer's fixed 1x1 conv weights (0 .. bins-1).
    projection = child(child(layer, "dfl", "DFL"), "conv", "Conv2d").tensors["weight"].reshape(1, 1, bins, 1)
    probs = g.op("Softmax", [g.op("Reshape", [dist, g.const([1, 4, bins, -1], np.int64)])], axis=2)
    sides = g.op("ReduceSum", [g.op("Mul", [probs, g.const(projection)]), g.const([2], np.int64)], keepdims=0)
    left_top, right_bottom = g.split(sides, [2, 2], axis=1)
    centre = g.op("Add", [g.op("Concat", anchors, axis=2),
                          g.op("Mul", [g.op("Sub", [right_bottom, left_top]), g.const(0.5)])])
    extent = g.op("Add", [left_top, right_bottom])
    xywh = g.op("Mul", [g.op("Concat", [centre, extent], axis=1), g.op("Concat", anchor_strides, axis=2)])
    g.nodes.append(helper.make_node("Concat", [xywh, g.op("Sigmoid", [logits])], [OUTPUT], name=OUTPUT, axis=1))
    return Head(classes, max(strides))


def anchor_points(g: GraphBuilder, level: str, stride: int) -> tuple[str, str]:
    """(1, 2, h * w) cell centres in grid units (Ultralytics make_anchors, offset 0.5; x varies
    fastest) and (1, 1, h * w) the level's stride, for the feature map `level` (1, c, h, w) of
    whatever size the input has: computed in the graph, so one model takes any input whose sides
    are multiples of the stride (a 16:9 frame letterboxed to 640 x 384, not 640 x 640)."""
    shape = g.op("Shape", [level])
    sides = [g.op("Gather", [shape, g.const(axis, np.int64)], axis=0) for axis in (2, 3)]
    ys, xs = (g.op("Add", [g.op("Cast", [g.op("Range", [g.const(0, np.int64), side, g.const(1, np.int64)])],
                                to=TensorProto.FLOAT), g.const(0.5)]) for side in sides)
    grid = g.op("Slice", [shape, g.const([2], np.int64), g.const([4], np.int64)])
    flat = g.const([1, 1, -1], np.int64)
    cx = g.op("Reshape", [g.op("Expand", [g.op("Reshape", [xs, g.const([1, -1], np.int64)]), grid]), flat])
    cy = g.op("Reshape", [g.op("Expand", [g.op("Reshape", [ys, g.const([-1, 1], np.int64)]), grid]), flat])
    strides = g.op("Expand", [g.const([[[stride]]]), g.op("Shape", [cx])])
    return g.op("Concat", [cx, cy], axis=1), strides


# Layers that take one input (`f` an index; -1 is the previous layer).
SINGLE_INPUT = {"Conv": conv_bn_silu, "C2f": c2f, "SPPF": sppf, "Upsample": upsample}


def yolov8_detect_onnx(checkpoint: bytes, size: int = 640) -> bytes:
    """The ONNX model (serialized deterministically) for an Ultralytics YOLOv8 detect checkpoint."""
    ckpt = read_checkpoint(checkpoint)
    if not isinstance(ckpt, dict):
        raise ModelError(f"not an Ultralytics checkpoint: it holds a {type(ckpt).__name__}, not a dict")
    # As Ultralytics loads it: the EMA weights when the checkpoint still has them.
    root = module_tree(ckpt["ema"] if ckpt.get("ema") is not None else ckpt.get("model"), "model")
    return detection_model_onnx(root, f"Ultralytics {ckpt.get('version', '?')}", size)


def detection_model_onnx(root: Layer, origin: str, size: int = 640) -> bytes:
    """The ONNX model for a DetectionModel layer tree; `origin` goes into the model's description."""
    expect(root, "DetectionModel")
    g = GraphBuilder()
    outputs: list[str] = []
    x, head = INPUT, None
    for layer in child(root, "model", "Sequential").children.values():
        if head is not None:
            raise ModelError(f"{layer.path}: a layer after the Detect head")
        source = layer.attrs.get("f")
        try:
            if layer.kind in SINGLE_INPUT and isinstance(source, int):
                x = SINGLE_INPUT[layer.kind](g, layer, x if source == -1 else outputs[source])
            elif layer.kind in ("Concat", "Detect") and isinstance(source, list):
                inputs = [x if j == -1 else outputs[j] for j in source]
                if layer.kind == "Concat":
                    x = g.op("Concat", inputs, axis=int(layer.attrs["d"]))
                else:
                    head, x = detect_head(g, layer, inputs, size), OUTPUT
            else:
                raise ModelError(f"{layer.path}: layer type {layer.kind!r} (from {source!r}) is not one this YOLOv8 "
                                 "detect converter knows (Conv, C2f, SPPF, Upsample, Concat, Detect)")
        except (KeyError, IndexError, TypeError, ValueError, ArithmeticError) as e:
            # Attributes or tensors missing or of the wrong kind: not the module torch would have saved.
            raise ModelError(f"{layer.path}: malformed {layer.kind} ({type(e).__name__}: {e})") from e
        outputs.append(x)
    if head is None:
        raise ModelError(f"{root.path}: no Detect head")
    graph = helper.make_graph(
        g.nodes, "yolov8_detect", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, 4 + head.classes, "anchors"])],
        initializer=g.weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="anon_ray.yolo_pt", ir_version=IR_VERSION)
    helper.set_model_props(model, {
        "task": "detect", "names": str(root.attrs.get("names")), "imgsz": str([size, size]), "batch": "1",
        "stride": str(head.stride), "description": f"converted by anon_ray.yolo_pt from an {origin} checkpoint",
    })
    try:
        onnx.checker.check_model(model, full_check=True)  # includes shape inference: channel counts must agree
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ModelError(f"{root.path}: the converted graph is invalid: {e}") from e
    return model.SerializeToString(deterministic=True)
