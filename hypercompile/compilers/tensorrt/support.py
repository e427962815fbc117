"""What TensorRT 10.3's ONNX parser accepts, as far as it can be checked without TensorRT:
the opset, the operators, and the data types. A graph that fails here would fail on the device
when its engine is built, so the build refuses it with one line instead."""

from __future__ import annotations

from typing import Any

# opsets of the default ONNX domain the parser imports (onnx-tensorrt 10.x: 9 to 20)
OPSETS = (9, 20)

# Operators of onnx-tensorrt's support matrix (docs/operators.md, release 10.1, the parser
# JetPack 6's TensorRT 10.3 carries) marked supported. Restrictions on attributes and inputs
# (2D/3D pooling only, initializer-only inputs, ...) are left to the parser on the device.
SUPPORTED_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand
    EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
    GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU
    HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
    LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization
    LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg
    NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear
    RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceL1
    ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
    ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan
    Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
    Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu
    Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)

# ONNX element types TensorRT cannot run as such: DOUBLE is cast down to float (clamped) by the
# parser, so answers drift from PyTorch's silently; the others it does not take at all
REFUSED_TYPES = {11: "float64", 8: "string", 14: "complex64", 15: "complex128", 4: "uint16"}
REFUSED_TYPES.update({12: "uint32", 13: "uint64"})


def problems(model: Any) -> list[str]:
    """What TensorRT's parser would refuse in `model` (an onnx ModelProto), first found first."""
    out = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not OPSETS[0] <= opset <= OPSETS[1]:
        out.append(f"opset {opset} is outside the {OPSETS[0]}..{OPSETS[1]} TensorRT 10.3 parses")
    for g in _graphs(model.graph):
        for node in g.node:
            if node.domain not in ("", "ai.onnx"):
                out.append(f"operator {node.domain}::{node.op_type} (custom domain)")
            elif node.op_type not in SUPPORTED_OPS:
                out.append(f"operator {node.op_type} (not in TensorRT 10.3's ONNX parser)")
            for a in node.attribute:
                if node.op_type in ("Cast", "CastLike") and a.name == "to" and a.i in REFUSED_TYPES:
                    out.append(f"a Cast to {REFUSED_TYPES[a.i]} (node {node.name or node.op_type})")
        typed = [(v.name, v.type.tensor_type.elem_type) for v in (*g.input, *g.output)]
        typed += [(t.name, t.data_type) for t in g.initializer]
        for name, elem in typed:
            if elem in REFUSED_TYPES:
                out.append(f"tensor {name!r} is {REFUSED_TYPES[elem]}")
    return list(dict.fromkeys(out))


def _graphs(graph: Any) -> list[Any]:
    """The graph and every subgraph of its If/Loop/Scan nodes."""
    out = [graph]
    for node in graph.node:
        for a in node.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                out += _graphs(sub)
    return out
