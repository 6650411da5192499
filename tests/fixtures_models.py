"""Small ONNX models with the real DWPose and YOLOX input/output contracts and known outputs (built with onnx.helper).

YOLOX (`dwpose-det`, file yolox_l.onnx): input `images` [N,3,640,640] float32 (0-255, letterboxed), and either
  - `dets` [N,M,5] (+ `labels` [N,M] int64), the end2end export: x1 y1 x2 y2 score in input pixels, or
  - `output` [N,8400,85], the raw head (grid offsets, log sizes, objectness, 80 class probabilities).
  Content mode ("bright"): one person whose box is the bounding box of the input pixels brighter than 200 in every
  channel (x2/y2 exclusive), score 0.9; no such pixel gives score 0. Fixed mode: the given boxes on every image.
DWPose (`dwpose-pose`, file dw-ll_ucoco_384.onnx): input `input` [N,3,384,288] float32 (mean/std normalised),
  outputs `simcc_x` [N,133,576] and `simcc_y` [N,133,768]. Keypoint j sits at (mx + dx_j, my + dy_j) in input
  pixels, where (mx, my) is the first column and row holding the crop's largest channel-0 value (the brightest
  marker), and its score is weight_j times that value; so a synthetic frame decides the keypoints, exactly.
Either can have a dynamic batch axis (like the real exports' `batch`) or a fixed batch of 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
DET_SIZE = (640, 640)
POSE_SIZE = (384, 288)  # (H, W)
K = 133
ANCHORS = sum((640 // s) ** 2 for s in (8, 16, 32))  # 8400

# A standing skeleton in the unit square (x right, y down), COCO-17 order; left = the person's left (image right).
BODY_LAYOUT = np.array([
    (0.50, 0.08), (0.55, 0.05), (0.45, 0.05), (0.60, 0.07), (0.40, 0.07),  # nose, eyes, ears
    (0.70, 0.25), (0.30, 0.25), (0.80, 0.42), (0.20, 0.42), (0.85, 0.58), (0.15, 0.58),  # shoulders, elbows, wrists
    (0.62, 0.58), (0.38, 0.58), (0.63, 0.78), (0.37, 0.78), (0.64, 0.97), (0.36, 0.97),  # hips, knees, ankles
])


def default_offsets(span: float = 200.0) -> np.ndarray:
    """(133, 2) integer offsets in pose-input pixels: the body layout scaled to `span`, the other 116 points spread
    on a small grid near the middle (distinct, so every keypoint's decoding is checked)."""
    out = np.zeros((K, 2), np.int64)
    out[:17] = np.round(BODY_LAYOUT * span)
    rest = np.arange(K - 17)
    out[17:, 0] = np.round(0.3 * span) + rest % 12 * 5
    out[17:, 1] = np.round(0.3 * span) + rest // 12 * 5
    return out


def default_weights(body: float = 0.4, other: float = 0.3) -> np.ndarray:
    w = np.full(K, other, np.float32)
    w[:17] = body
    return w


def _save(nodes, inputs, outputs, initializers, path) -> Path:
    graph = helper.make_graph(nodes, Path(path).stem, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="actcurate-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _batch(batch: int | None):
    return "batch" if batch is None else batch


def _expand_to_batch(nodes, inits, source: str, const_name: str, tail: list[int], out: str) -> None:
    """out = the constant `const_name` [1, *tail] repeated over the batch of input `source`."""
    nodes += [
        helper.make_node("Shape", [source], [f"{out}_shape_all"]),
        helper.make_node("Slice", [f"{out}_shape_all", "i_zero", "i_one"], [f"{out}_n"]),
        helper.make_node("Concat", [f"{out}_n", f"{out}_tail"], [f"{out}_shape"], axis=0),
        helper.make_node("Expand", [const_name, f"{out}_shape"], [out]),
    ]
    inits += [_const(f"{out}_tail", np.array(tail, np.int64))]


def _compute_load(nodes, inits, source: str, channels: int, gflops: float, size: tuple[int, int]) -> str:
    """A stack of 3x3 convolutions on the input costing about `gflops` per image; returns a [N,1,1] tensor equal to
    0 in effect (1e-30 x a mean), to add to a 3-D output so the work cannot be optimised away.
    Used by the benchmark to give the fixtures a realistic cost; the outputs stay the same to float precision."""
    h, w = size
    c = 16
    per_layer = 2 * 9 * c * c * h * w / 4 / 1e9  # at half resolution
    layers = max(1, int(round(gflops / per_layer)))
    rng = np.random.default_rng(0)
    nodes.append(helper.make_node("AveragePool", [source], ["load_in"], kernel_shape=[2, 2], strides=[2, 2]))
    inits.append(_const("load_w0", (rng.standard_normal((c, channels, 3, 3)) * 0.01).astype(np.float32)))
    nodes.append(helper.make_node("Conv", ["load_in", "load_w0"], ["load_0"], pads=[1, 1, 1, 1]))
    last = "load_0"
    for i in range(1, layers):
        inits.append(_const(f"load_w{i}", (rng.standard_normal((c, c, 3, 3)) * 0.01).astype(np.float32)))
        nodes.append(helper.make_node("Conv", [last, f"load_w{i}"], [f"load_c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"load_c{i}"], [f"load_{i}"]))
        last = f"load_{i}"
    nodes.append(helper.make_node("ReduceMean", [last], ["load_mean"], axes=[1, 2, 3], keepdims=0))  # [N]
    nodes.append(helper.make_node("Reshape", ["load_mean", "load_shape"], ["load_mean3"]))  # [N,1,1]
    nodes.append(helper.make_node("Mul", ["load_mean3", "load_tiny"], ["load_zero"]))
    inits.append(_const("load_tiny", np.array(1e-30, np.float32)))
    inits.append(_const("load_shape", np.array([-1, 1, 1], np.int64)))
    return "load_zero"


def make_yolox(path, *, mode: str = "bright", output: str = "dets", boxes=None, batch: int | None = None,
               threshold: float = 200.0, score: float = 0.9, gflops: float = 0.0) -> Path:
    """A YOLOX fixture. mode "bright" (content) or "fixed" (`boxes`: rows x1 y1 x2 y2 score in input pixels, or for
    output="raw" rows (anchor index, 85 raw values)). output "dets" (end2end, with labels) or "raw"."""
    n = _batch(batch)
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [n, 3, *DET_SIZE])]
    nodes: list = []
    inits = [_const("i_zero", np.array([0], np.int64)), _const("i_one", np.array([1], np.int64))]
    if output == "raw":
        head = np.zeros((1, ANCHORS, 85), np.float32)
        for anchor, values in boxes or []:
            head[0, anchor] = values
        inits.append(_const("head", head))
        _expand_to_batch(nodes, inits, "images", "head", [ANCHORS, 85], "output")
        outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, [n, ANCHORS, 85])]
        return _save(nodes, inputs, outputs, inits, path)
    if mode == "fixed":
        dets = np.asarray(boxes, np.float32).reshape(1, -1, 5)
        m = dets.shape[1]
        inits += [_const("dets_c", dets), _const("labels_c", np.zeros((1, m), np.int64))]
        _expand_to_batch(nodes, inits, "images", "dets_c", [m, 5], "dets_pre")
        _expand_to_batch(nodes, inits, "images", "labels_c", [m], "labels")
    else:
        m = 1
        coords = np.arange(DET_SIZE[1], dtype=np.float32)
        inits += [
            _const("thr", np.array(threshold, np.float32)), _const("half", np.array(0.5, np.float32)),
            _const("xs", coords), _const("xs1", coords + 1), _const("big", np.array(1e4, np.float32)),
            _const("nbig", np.array(-1e4, np.float32)), _const("score", np.array(score, np.float32)),
        ]
        nodes += [
            helper.make_node("ReduceMin", ["images"], ["mn"], axes=[1], keepdims=0),  # [N,H,W]
            helper.make_node("Greater", ["mn", "thr"], ["mask"]),
            helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMax", ["maskf"], ["col"], axes=[1], keepdims=0),  # [N,W]: any bright in column
            helper.make_node("ReduceMax", ["maskf"], ["row"], axes=[2], keepdims=0),  # [N,H]
            helper.make_node("Greater", ["col", "half"], ["colb"]),
            helper.make_node("Greater", ["row", "half"], ["rowb"]),
            helper.make_node("Where", ["colb", "xs", "big"], ["x_lo"]),
            helper.make_node("Where", ["colb", "xs1", "nbig"], ["x_hi"]),
            helper.make_node("Where", ["rowb", "xs", "big"], ["y_lo"]),
            helper.make_node("Where", ["rowb", "xs1", "nbig"], ["y_hi"]),
            helper.make_node("ReduceMin", ["x_lo"], ["x1"], axes=[1], keepdims=1),
            helper.make_node("ReduceMax", ["x_hi"], ["x2"], axes=[1], keepdims=1),
            helper.make_node("ReduceMin", ["y_lo"], ["y1"], axes=[1], keepdims=1),
            helper.make_node("ReduceMax", ["y_hi"], ["y2"], axes=[1], keepdims=1),
            helper.make_node("ReduceMax", ["col"], ["any"], axes=[1], keepdims=1),
            helper.make_node("Mul", ["any", "score"], ["s"]),
            helper.make_node("Concat", ["x1", "y1", "x2", "y2", "s"], ["flat"], axis=1),  # [N,5]
            helper.make_node("Unsqueeze", ["flat", "i_one"], ["dets_pre"]),  # [N,1,5]
            helper.make_node("Mul", ["s", "big"], ["s_big"]),
            helper.make_node("Cast", ["s_big"], ["s_int"], to=TensorProto.INT64),
            helper.make_node("Mul", ["s_int", "i_zero"], ["labels"]),  # zeros [N,1]: class person
        ]
    if gflops > 0:
        zero = _compute_load(nodes, inits, "images", 3, gflops, DET_SIZE)
        nodes.append(helper.make_node("Add", ["dets_pre", zero], ["dets"]))
    else:
        nodes.append(helper.make_node("Identity", ["dets_pre"], ["dets"]))
    outputs = [helper.make_tensor_value_info("dets", TensorProto.FLOAT, [n, m, 5]),
               helper.make_tensor_value_info("labels", TensorProto.INT64, [n, m])]
    return _save(nodes, inputs, outputs, inits, path)


def make_dwpose(path, *, offsets: np.ndarray | None = None, weights: np.ndarray | None = None,
                batch: int | None = None, gflops: float = 0.0) -> Path:
    """The DWPose fixture: keypoint j = brightest channel-0 marker + offsets[j] (input pixels), score weights[j] x
    the marker's normalised value."""
    offsets = default_offsets() if offsets is None else np.asarray(offsets, np.int64)
    weights = default_weights() if weights is None else np.asarray(weights, np.float32)
    h, w = POSE_SIZE
    n = _batch(batch)
    ux, uy = np.arange(2 * w), np.arange(2 * h)
    idx_x = np.clip(ux[None, :] // 2 - offsets[:, :1], 0, w - 1).astype(np.int64)  # [133, 576]
    idx_y = np.clip(uy[None, :] // 2 - offsets[:, 1:], 0, h - 1).astype(np.int64)  # [133, 768]
    inits = [
        _const("c_start", np.array([0], np.int64)), _const("c_end", np.array([1], np.int64)),
        _const("c_axis", np.array([1], np.int64)), _const("idx_x", idx_x), _const("idx_y", idx_y),
        _const("wts", weights.reshape(K, 1)),
    ]
    nodes = [
        helper.make_node("Slice", ["input", "c_start", "c_end", "c_axis"], ["c0"]),  # [N,1,H,W]
        helper.make_node("ReduceMax", ["c0"], ["px"], axes=[2], keepdims=0),  # [N,1,W]
        helper.make_node("ReduceMax", ["c0"], ["py"], axes=[3], keepdims=0),  # [N,1,H]
        helper.make_node("Gather", ["px", "idx_x"], ["gx"], axis=2),  # [N,1,133,576]
        helper.make_node("Gather", ["py", "idx_y"], ["gy"], axis=2),
        helper.make_node("Squeeze", ["gx", "c_axis"], ["sx"]),
        helper.make_node("Squeeze", ["gy", "c_axis"], ["sy"]),
        helper.make_node("Mul", ["sx", "wts"], ["simcc_x_pre"]),
        helper.make_node("Mul", ["sy", "wts"], ["simcc_y"]),
    ]
    if gflops > 0:
        zero = _compute_load(nodes, inits, "input", 3, gflops, POSE_SIZE)
        nodes.append(helper.make_node("Add", ["simcc_x_pre", zero], ["simcc_x"]))
    else:
        nodes.append(helper.make_node("Identity", ["simcc_x_pre"], ["simcc_x"]))
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [n, 3, h, w])]
    outputs = [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [n, K, 2 * w]),
               helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [n, K, 2 * h])]
    return _save(nodes, inputs, outputs, inits, path)


def make_model_dir(folder, **yolox_kwargs) -> Path:
    """A models folder as the registry expects it (ACTCURATE_MODELS): content-driven YOLOX (end2end) + DWPose."""
    folder = Path(folder)
    make_yolox(folder / "yolox_l.onnx", **yolox_kwargs)
    make_dwpose(folder / "dw-ll_ucoco_384.onnx")
    return folder
