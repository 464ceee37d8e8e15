"""TensorFlow Object Detection API SSD (MobileNet feature extractor) frozen graph -> ONNX, with numpy and
onnx only (no TensorFlow).

The frozen graph runs its own preprocessing, anchor generation, box decoding and NMS in TensorFlow
control flow (while loops over tensor arrays), which no ONNX converter without TensorFlow reads.
This keeps the network itself, from the preprocessor's output to each box predictor's convolutions,
and rebuilds around it what the TF OD API's SSD config fixes: resize to the graph's square input,
its own scaling of RGB, `ssd_anchor_generator` anchors (6 layers, scales 0.2-0.95, aspect ratios
1, 2, 1/2, 3, 1/3 and the interpolated one, 3 boxes in the lowest layer), the Faster R-CNN box coder
(scale factors 10, 10, 5, 5) and sigmoid scores. The model's own NMS is left to the caller.

The ONNX graph: input `images` (batch, 3, side, side) RGB in [0, 255], outputs `boxes` (batch,
anchors, 4) x0, y0, x1, y1 as shares of the input's sides and `scores` (batch, anchors, classes)
without the background class. BatchNorm is folded into the convolutions (in float64, rounded once).
Only the ops of these networks are known (Conv2D, DepthwiseConv2dNative, FusedBatchNorm, BiasAdd,
Relu6, Add, Identity, Const); any other is an error, never a guess.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto, helper

from anon_ray.models.registry import ModelError
from anon_ray.models.tf_graph import TfNode, read_graph
from anon_ray.models.yolo_pt import IR_VERSION, OPSET, GraphBuilder

INPUT, BOXES, SCORES = "images", "boxes", "scores"
NETWORK_INPUT = "Preprocessor/sub"  # the graph's image once resized and scaled: where its network starts
SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)  # FasterRcnnBoxCoder: ty, tx, th, tw
ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)


def ssd_anchors(grids: list[tuple[int, int]], min_scale: float = 0.2, max_scale: float = 0.95) -> np.ndarray:
    """float64 (n, 4) y-centre, x-centre, height, width as shares of the input, in the order of the box
    predictors' outputs (per layer: rows, columns, then the layer's boxes), as the TF OD API's
    `create_ssd_anchors` makes them for a square input with its default options."""
    layers = len(grids)
    scales = [min_scale + (max_scale - min_scale) * i / (layers - 1) for i in range(layers)] + [1.0]
    out = []
    for layer, (rows, cols) in enumerate(grids):
        if layer == 0:  # reduce_boxes_in_lowest_layer
            specs = [(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)]
        else:
            between = math.sqrt(scales[layer] * scales[layer + 1])  # interpolated_scale_aspect_ratio 1
            specs = [(scales[layer], ar) for ar in ASPECT_RATIOS] + [(between, 1.0)]
        scale, ratio = np.array(specs).T
        heights, widths = scale / np.sqrt(ratio), scale * np.sqrt(ratio)
        yc = (np.arange(rows) + 0.5) / rows
        xc = (np.arange(cols) + 0.5) / cols
        grid = np.zeros((rows, cols, len(specs), 4))
        grid[..., 0] = yc[:, None, None]
        grid[..., 1] = xc[None, :, None]
        grid[..., 2], grid[..., 3] = heights, widths
        out.append(grid.reshape(-1, 4))
    return np.concatenate(out)


class _Converter:
    def __init__(self, nodes: dict[str, TfNode]) -> None:
        self.nodes, self.g, self.done = nodes, GraphBuilder(), {}

    def node(self, name: str) -> TfNode:
        name = name.split(":")[0] if name.endswith(":0") else name
        if name not in self.nodes:
            raise ModelError(f"the graph has no node {name!r}")
        return self.nodes[name]

    def const(self, name: str) -> np.ndarray:
        node = self.node(name)
        while node.op == "Identity":
            node = self.node(node.inputs[0])
        value = node.attrs.get("value")
        if node.op != "Const" or not isinstance(value, np.ndarray):
            raise ModelError(f"{name}: expected a constant tensor, found a {node.op}")
        return value.astype(np.float64)

    def tensor(self, name: str) -> str:
        """The ONNX name of TF tensor `name` (NCHW where the graph has NHWC)."""
        node = self.node(name)
        if node.name not in self.done:
            self.done[node.name] = self._convert(node)
        return self.done[node.name]

    def _convert(self, node: TfNode) -> str:
        if node.op == "Identity":
            return self.tensor(node.inputs[0])
        if node.op in ("Conv2D", "DepthwiseConv2dNative"):
            return self._conv(node, None, None)
        if node.op == "FusedBatchNorm":
            if node.attrs.get("is_training") or node.attrs.get("data_format", "NHWC") != "NHWC":
                raise ModelError(f"{node.name}: only inference-mode NHWC batch norm is supported")
            gamma, beta, mean, var = (self.const(i) for i in node.inputs[1:5])
            scale = gamma / np.sqrt(var + float(node.attrs.get("epsilon", 1e-3)))
            return self._conv(self._conv_input(node), scale, beta - mean * scale)
        if node.op == "BiasAdd":
            return self._conv(self._conv_input(node), None, self.const(node.inputs[1]))
        if node.op == "Relu6":
            g = self.g
            return g.op("Clip", [self.tensor(node.inputs[0]), g.const(0.0), g.const(6.0)])
        if node.op == "Add" or node.op == "AddV2":
            return self.g.op("Add", [self.tensor(i) for i in node.inputs])
        raise ModelError(f"{node.name}: op {node.op!r} is not one this SSD converter knows")

    def _conv_input(self, node: TfNode) -> TfNode:
        conv = self.node(node.inputs[0])
        if conv.op not in ("Conv2D", "DepthwiseConv2dNative"):
            raise ModelError(f"{node.name}: {node.op} after a {conv.op}, not after a convolution")
        return conv

    def _conv(self, node: TfNode, scale: np.ndarray | None, shift: np.ndarray | None) -> str:
        """A convolution with a per-channel scale and shift folded in (batch norm, bias)."""
        a = node.attrs
        strides, dilations = a.get("strides", [1] * 4), a.get("dilations", [1] * 4)
        if a.get("data_format", "NHWC") != "NHWC" or strides[0] != 1 or strides[3] != 1 or set(dilations) != {1}:
            raise ModelError(f"{node.name}: only NHWC, undilated convolutions are supported")
        if a.get("padding") not in ("SAME", "VALID"):
            raise ModelError(f"{node.name}: padding {a.get('padding')!r}")
        w = self.const(node.inputs[1])
        kh, kw, cin, cout = w.shape
        if node.op == "Conv2D":
            weight, group = w.transpose(3, 2, 0, 1), 1
        else:  # output channel c * multiplier + m reads input channel c
            weight, group = w.reshape(kh, kw, cin * cout).transpose(2, 0, 1)[:, None], cin
        channels = weight.shape[0]
        scale = np.ones(channels) if scale is None else scale
        bias = np.zeros(channels) if shift is None else shift
        if scale.shape != (channels,) or bias.shape != (channels,):
            raise ModelError(f"{node.name}: {channels} channels, but a scale or shift of another size")
        weight = weight * scale[:, None, None, None]
        pad = {"auto_pad": "SAME_UPPER"} if a["padding"] == "SAME" else {}
        return self.g.op("Conv", [self.tensor(node.inputs[0]), self.g.const(weight.astype(np.float32)),
                                  self.g.const(bias.astype(np.float32))],
                         kernel_shape=[kh, kw], strides=strides[1:3], group=group, **pad)


def _side(nodes: dict[str, TfNode]) -> int:
    for node in nodes.values():
        if node.op == "ResizeBilinear" and node.name.startswith("Preprocessor/"):
            size = nodes.get(node.inputs[1])
            value = size.attrs.get("value") if size is not None else None
            if isinstance(value, np.ndarray) and value.shape == (2,) and value[0] == value[1]:
                return int(value[0])
    raise ModelError("no square resize in the graph's preprocessor: not a TF OD API SSD graph")


def ssd_onnx(graph: bytes) -> bytes:
    """The ONNX model (serialized deterministically) of a TF OD API SSD frozen graph's network."""
    nodes = read_graph(graph)
    side = _side(nodes)
    c = _Converter(nodes)
    g = c.g
    # The preprocessor: x * mul - sub on RGB in [0, 255].
    pre = c.node(NETWORK_INPUT)
    mul = c.node(pre.inputs[0])
    if pre.op != "Sub" or mul.op != "Mul":
        raise ModelError(f"{NETWORK_INPUT}: expected Sub of a Mul, found {pre.op} of {mul.op}")
    factor = float(c.const(mul.inputs[0]))
    c.done[NETWORK_INPUT] = g.op("Sub", [g.op("Mul", [INPUT, g.const(factor)]), g.const(float(c.const(pre.inputs[1])))])
    layers = sorted({n.split("/")[0] for n in nodes if n.startswith("BoxPredictor_")},
                    key=lambda s: int(s.split("_")[1]))
    if len(layers) < 2:
        raise ModelError("fewer than two box predictors: not a TF OD API SSD graph")
    boxes, logits, heads = [], [], []
    for layer in layers:
        enc, cls = c.tensor(f"{layer}/BoxEncodingPredictor/BiasAdd"), c.tensor(f"{layer}/ClassPredictor/BiasAdd")
        heads.append((len(c.const(f"{layer}/BoxEncodingPredictor/biases")),
                      len(c.const(f"{layer}/ClassPredictor/biases"))))
        boxes.append(g.op("Reshape", [g.op("Transpose", [enc], perm=[0, 2, 3, 1]), g.const([0, -1, 4], np.int64)]))
        logits.append(cls)
    per_anchor = {n_cls // (n_box // 4) for n_box, n_cls in heads}
    if len(per_anchor) != 1:
        raise ModelError(f"box predictors disagree on the number of classes: {heads}")
    (classes,) = per_anchor
    logits = [g.op("Reshape", [g.op("Transpose", [x], perm=[0, 2, 3, 1]), g.const([0, -1, classes], np.int64)])
              for x in logits]
    # The feature maps' sizes, from ONNX's shape inference over the network so far.
    probe = helper.make_model(helper.make_graph(
        g.nodes, "probe", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info(c.tensor(f"{layer}/BoxEncodingPredictor/BiasAdd"), TensorProto.FLOAT, None)
         for layer in layers], initializer=g.weights), opset_imports=[helper.make_opsetid("", OPSET)])
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in onnx.shape_inference.infer_shapes(probe).graph.output}
    grids = [tuple(shapes[c.tensor(f"{layer}/BoxEncodingPredictor/BiasAdd")][2:]) for layer in layers]
    anchors = ssd_anchors(grids)
    if len(anchors) != sum(r * k * n_box // 4 for (r, k), (n_box, _) in zip(grids, heads)):
        raise ModelError(f"the box predictors' boxes per cell {[b // 4 for b, _ in heads]} are not the SSD "
                         "anchor generator's (3 in the lowest layer, 6 above)")
    enc = g.op("Div", [g.op("Concat", boxes, axis=1), g.const(SCALE_FACTORS)])
    centre_enc, size_enc = g.split(enc, [2, 2], axis=2)
    anchor_size = g.const(anchors[:, 2:])
    centre = g.op("Add", [g.op("Mul", [centre_enc, anchor_size]), g.const(anchors[:, :2])])
    half = g.op("Mul", [g.op("Exp", [size_enc]), g.const(anchors[:, 2:] / 2)])
    corners = g.op("Concat", [g.op("Sub", [centre, half]), g.op("Add", [centre, half])], axis=2)  # y0 x0 y1 x1
    box_out = g.op("Gather", [corners, g.const([1, 0, 3, 2], np.int64)], axis=2)
    scores = g.op("Sigmoid", [g.split(g.op("Concat", logits, axis=1), [1, classes - 1], axis=2)[1]])
    g.nodes.append(helper.make_node("Identity", [box_out], [BOXES], name=BOXES))
    g.nodes.append(helper.make_node("Identity", [scores], [SCORES], name=SCORES))
    graph_proto = helper.make_graph(
        g.nodes, "ssd", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, side, side])],
        [helper.make_tensor_value_info(BOXES, TensorProto.FLOAT, ["batch", len(anchors), 4]),
         helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, ["batch", len(anchors), classes - 1])],
        initializer=g.weights)
    model = helper.make_model(graph_proto, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="anon_ray.ssd_tf", ir_version=IR_VERSION)
    helper.set_model_props(model, {"task": "detect", "imgsz": str([side, side]),
                                   "description": "converted by anon_ray.ssd_tf from a TF OD API SSD frozen graph"})
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ModelError(f"the converted SSD graph is invalid: {e}") from e
    return model.SerializeToString(deterministic=True)
