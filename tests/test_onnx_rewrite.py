"""The mobile rewrite: each rule computes what the op it replaces computes, and leaves only ops NPUs take."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from pbrforge.export.onnx_rewrite import mobile_friendly  # noqa: E402

REWRITE_MAX_ABS = 1e-5  # on values of order 1: float rounding, and the erf approximation's 4e-7


def _model(nodes, inputs, output_shape, inits=()):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def _run(model, feed):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts).run(None, feed)[0]


def _i64(v):
    return np.asarray(v, np.int64)


def _f32(v):
    return np.asarray(v, np.float32)


X = {"x": [2, 3, 5, 6]}
CASES = {
    "HardSigmoid": (
        [helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.3, beta=0.4)],
        X,
        [2, 3, 5, 6],
        [],
    ),
    "HardSwish": ([helper.make_node("HardSwish", ["x"], ["y"])], X, [2, 3, 5, 6], []),
    "Erf": ([helper.make_node("Erf", ["x"], ["y"])], X, [2, 3, 5, 6], []),
    "Reciprocal": ([helper.make_node("Reciprocal", ["x"], ["y"])], X, [2, 3, 5, 6], []),
    "ReduceMax over views": (
        [helper.make_node("ReduceMax", ["x", "a"], ["y"], keepdims=0)],
        X,
        [2, 5, 6],
        [("a", _i64([1]))],
    ),
    "ReduceMax over two axes, kept": (
        [helper.make_node("ReduceMax", ["x", "a"], ["y"], keepdims=1)],
        X,
        [1, 3, 1, 6],
        [("a", _i64([0, -2]))],
    ),
    "ReduceMax over two axes, dropped": (
        [helper.make_node("ReduceMax", ["x", "a"], ["y"], keepdims=0)],
        X,
        [3, 6],
        [("a", _i64([0, 2]))],
    ),
    "ReduceMax over every axis (no axes input)": (
        [helper.make_node("ReduceMax", ["x"], ["y"], keepdims=1)],
        X,
        [1, 1, 1, 1],
        [],
    ),
    "ReduceL2": (
        [helper.make_node("ReduceL2", ["x", "a"], ["y"], keepdims=1)],
        X,
        [2, 1, 5, 6],
        [("a", _i64([1]))],
    ),
    "Pad edge": (
        [helper.make_node("Pad", ["x", "p"], ["y"], mode="edge")],
        X,
        [2, 3, 8, 7],
        [("p", _i64([0, 0, 1, 0, 0, 0, 2, 1]))],
    ),
    "BatchNormalization": (
        [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=1e-3)],
        X,
        [2, 3, 5, 6],
        [
            ("g", _f32([0.5, 2, -1])),
            ("b", _f32([0.1, 0, 3])),
            ("m", _f32([1, -2, 0.5])),
            ("v", _f32([0.2, 4, 1])),
        ],
    ),
    "BatchNormalization, 3-D": (
        [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"])],
        {"x": [2, 3, 7]},
        [2, 3, 7],
        [
            ("g", _f32([0.5, 2, -1])),
            ("b", _f32([0.1, 0, 3])),
            ("m", _f32([1, -2, 0.5])),
            ("v", _f32([0.2, 4, 1])),
        ],
    ),
    "LayerNormalization over two axes": (
        [helper.make_node("LayerNormalization", ["x", "g"], ["y"], axis=-2)],
        X,
        [2, 3, 5, 6],
        [("g", _f32(np.linspace(0.5, 2, 30).reshape(5, 6)))],
    ),
    "LayerNormalization": (
        [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5)],
        X,
        [2, 3, 5, 6],
        [("g", _f32(np.linspace(0.5, 2, 6))), ("b", _f32(np.linspace(-1, 1, 6)))],
    ),
    "Gather scalar": (
        [helper.make_node("Gather", ["x", "i"], ["y"], axis=1)],
        X,
        [2, 5, 6],
        [("i", _i64(-1))],
    ),
    "Gather list": (
        [helper.make_node("Gather", ["x", "i"], ["y"], axis=3)],
        X,
        [2, 3, 5, 3],
        [("i", _i64([4, 0, 4]))],
    ),
    "Expand by concat": (
        [helper.make_node("Expand", ["x", "s"], ["y"])],
        {"x": [2, 1, 5, 1]},
        [2, 3, 5, 4],
        [("s", _i64([2, 3, 5, 4]))],
    ),
    "Expand with a new leading axis": (
        [helper.make_node("Expand", ["x", "s"], ["y"])],
        {"x": [5, 1]},
        [2, 3, 5, 4],
        [("s", _i64([2, 3, 5, 4]))],
    ),
    "two Expands into one Add": (
        [
            helper.make_node("Expand", ["x", "s"], ["e"]),
            helper.make_node("Expand", ["n", "s"], ["f"]),
            helper.make_node("Add", ["e", "f"], ["y"]),
        ],
        {"x": [2, 1, 5, 6], "n": [1, 3, 1, 6]},
        [2, 3, 5, 6],
        [("s", _i64([2, 3, 5, 6]))],
    ),
    "Expand into a broadcasting Div": (
        [helper.make_node("Expand", ["n", "s"], ["e"]), helper.make_node("Div", ["x", "e"], ["y"])],
        {"x": [2, 3, 5, 6], "n": [2, 1, 5, 6]},
        [2, 3, 5, 6],
        [("s", _i64([2, 3, 5, 6]))],
    ),
    "Resize with an empty roi": (
        [helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest", nearest_mode="floor")],
        X,
        [2, 3, 10, 12],
        [("s", _f32([1, 1, 2, 2]))],
    ),
}
EINSUMS = {  # the ANE-style attention's two products, a plain matmul, a batched one, a transposed contraction
    "bchq,bchk->bkhq": ([1, 8, 1, 6], [1, 8, 1, 6], [1, 6, 1, 6]),
    "bkhq,bchk->bchq": ([1, 6, 1, 6], [1, 8, 1, 6], [1, 8, 1, 6]),
    "ij,jk->ik": ([4, 5], [5, 3], [4, 3]),
    "bhqd,bhkd->bhqk": ([2, 3, 4, 5], [2, 3, 6, 5], [2, 3, 4, 6]),
    "cd,ab->abcd": ([2, 3], [4, 5], [4, 5, 2, 3]),
}
for _eq, (_a, _b, _y) in EINSUMS.items():
    CASES[f"Einsum {_eq}"] = (
        [helper.make_node("Einsum", ["x", "w"], ["y"], equation=_eq)],
        {"x": _a, "w": _b},
        _y,
        [],
    )


@pytest.mark.parametrize("case", CASES)
def test_each_rewrite_computes_the_replaced_op_with_npu_ops_only(case):
    nodes, inputs, out_shape, inits = CASES[case]
    model = _model(nodes, inputs, out_shape, inits)
    rng = np.random.default_rng(0)
    feed = {k: rng.normal(0, 2.5, s).astype(np.float32) for k, s in inputs.items()}
    if "n" in feed:
        feed["n"] = np.abs(feed["n"]) + 0.5
    rewritten, done = mobile_friendly(model)
    onnx.checker.check_model(rewritten, full_check=True)
    replaced = {n.op_type for n in nodes}
    assert sum(done.values()) >= 1 and set(done) <= replaced
    assert not (set(done) - {"Resize"}) & {n.op_type for n in rewritten.graph.node}  # Resize stays, filled in
    assert all(i for n in rewritten.graph.node for i in n.input)  # no empty optional input: shapes fixed
    assert {n.op_type for n in rewritten.graph.node} <= NPU_OPS
    _assert_nnapi_takes(rewritten)
    want, got = _run(model, feed), _run(rewritten, feed)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=REWRITE_MAX_ABS, atol=REWRITE_MAX_ABS)


def _assert_nnapi_takes(model):
    """What ORT's NNAPI op builders demand beyond the op name: Clip as RELU6 or RELU1, Max of two."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Clip":
            assert (float(consts[n.input[1]]), float(consts[n.input[2]])) in ((0.0, 6.0), (-1.0, 1.0)), n
        if n.op_type == "Max":
            assert len(n.input) == 2, n


# the ops both the NNAPI and the Core ML MLProgram op lists of ONNX Runtime's checker hold
NPU_OPS = {
    "Add", "Clip", "Concat", "Conv", "DepthToSpace", "Div", "Gemm", "Identity", "MatMul", "Max", "Mul",
    "ReduceMean", "Reshape", "Resize", "Sigmoid", "Slice", "Softmax", "Split", "Sqrt", "Squeeze", "Sub",
    "Tanh", "Transpose", "Unsqueeze",
}  # fmt: skip


def test_npu_ops_are_what_the_checker_lists_for_both_providers():
    from pathlib import Path

    import onnxruntime.tools.mobile_helpers as helpers

    root = Path(helpers.__file__).parent
    for name in ("nnapi_supported_ops.md", "coreml_supported_mlprogram_ops.md"):
        listed = {
            line.split("|")[1].split(":")[1]
            for line in (root / name).read_text().splitlines()
            if "|ai.onnx:" in line
        }
        assert listed >= NPU_OPS, (name, NPU_OPS - listed)


def test_erf_approximation_over_the_whole_line():
    from math import erf

    x = np.concatenate(
        [np.linspace(-12, 12, 20001), [0.0, -0.0, 1e-30, -1e-30, 3.4e38, -3.4e38, np.inf, -np.inf]]
    )
    model = _model([helper.make_node("Erf", ["x"], ["y"])], {"x": [x.size]}, [x.size])
    got = _run(mobile_friendly(model)[0], {"x": x.astype(np.float32)})
    want = np.array([erf(v) for v in x.astype(np.float32).astype(np.float64)])
    assert np.abs(got - want).max() < 5e-7
    nan = _run(mobile_friendly(model)[0], {"x": np.full(x.size, np.nan, np.float32)})
    assert np.isnan(nan).all()  # a NaN is not turned into a plausible number


def test_ops_without_static_shapes_or_constants_are_left_for_the_checker_to_report():
    """A rule that cannot prove its rewrite exact leaves the op; the usability report then names it."""
    model = _model(
        [helper.make_node("ReduceMax", ["x", "a"], ["y"], keepdims=1)],
        {"x": ["n", 3, 4, 4]},
        ["n", 1, 4, 4],
        [("a", _i64([1]))],
    )
    rewritten, done = mobile_friendly(model)
    assert done == {} and [n.op_type for n in rewritten.graph.node] == ["ReduceMax"]
    big = _model(
        [helper.make_node("ReduceMax", ["x", "a"], ["y"], keepdims=1)],
        {"x": [1, 64, 2, 2]},
        [1, 1, 2, 2],
        [("a", _i64([1]))],
    )
    assert mobile_friendly(big)[1] == {}  # 64 slices: more than the rewrite unrolls


def test_what_a_rule_cannot_prove_is_left_alone():
    """Pad with an axes input, a float16 graph, out-of-range Gather indices: the op stays as it was."""
    pad = _model(
        [helper.make_node("Pad", ["x", "p", "", "a"], ["y"], mode="edge")],
        X,
        [2, 3, 5, 8],
        [("p", _i64([1, 1])), ("a", _i64([3]))],
    )
    assert mobile_friendly(pad)[1] == {}
    half = _model([helper.make_node("Erf", ["x"], ["y"])], X, X["x"])
    for v in (*half.graph.input, *half.graph.output):
        v.type.tensor_type.elem_type = TensorProto.FLOAT16
    assert mobile_friendly(half)[1] == {}
    gather = _model([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], X, [2, 5, 6], [("i", _i64(7))])
    assert mobile_friendly(gather)[1] == {}


def test_an_opset_below_18_is_refused():
    model = _model([helper.make_node("Erf", ["x"], ["y"])], X, X["x"])
    model.opset_import[0].version = 17
    with pytest.raises(ValueError, match="opset 18"):
        mobile_friendly(model)


# ops ONNX Runtime runs on 8-bit values once a QDQ graph is fused (QLinearAdd, QLinearMul,
# QLinearGlobalAveragePool; Clip is absorbed into its Q; Split, Squeeze and Identity move bytes)
INTEGER_OPS = {"Add", "Mul", "Clip", "GlobalAveragePool", "Split", "Squeeze", "Identity"}
INTEGER_CASES = {
    "HardSwish": CASES["HardSwish"],
    "HardSigmoid": CASES["HardSigmoid"],
    "ReduceMean over H and W, kept (SE squeeze)": (
        [helper.make_node("ReduceMean", ["x", "a"], ["y"], keepdims=1)],
        X,
        [2, 3, 1, 1],
        [("a", _i64([2, 3]))],
    ),
    "ReduceMean over H and W, dropped": (
        [helper.make_node("ReduceMean", ["x", "a"], ["y"], keepdims=0)],
        X,
        [2, 3],
        [("a", _i64([-2, -1]))],
    ),
    "ReduceMean over views": (
        [helper.make_node("ReduceMean", ["x", "a"], ["y"], keepdims=0)],
        X,
        [2, 5, 6],
        [("a", _i64([1]))],
    ),
    "BatchNormalization": (
        [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=1e-3)],
        X,
        X["x"],
        [
            ("g", _f32([1.5, -0.5, 2])),
            ("b", _f32([0.1, 0, -1])),
            ("m", _f32([0.3, -2, 1])),
            ("v", _f32([4, 0.5, 1])),
        ],
    ),
}


@pytest.mark.parametrize("case", INTEGER_CASES)
def test_integer_rules_compute_the_op_in_ops_with_int8_kernels(case):
    from pbrforge.export.onnx_rewrite import INTEGER_RULES

    nodes, inputs, out_shape, inits = INTEGER_CASES[case]
    model = _model(nodes, inputs, out_shape, inits)
    for n in model.graph.node:  # the exporter's name scope must reach every node the rule makes
        n.metadata_props.add(key="pkg.torch.onnx.name_scopes", value="['', 'model.se']")
    rewritten, done = mobile_friendly(model, INTEGER_RULES)
    onnx.checker.check_model(rewritten, full_check=True)
    assert set(done) == {n.op_type for n in nodes}
    assert {n.op_type for n in rewritten.graph.node} <= INTEGER_OPS
    assert all(n.metadata_props for n in rewritten.graph.node)
    feed = {"x": np.random.default_rng(0).normal(0, 2.5, X["x"]).astype(np.float32)}
    np.testing.assert_allclose(
        _run(rewritten, feed), _run(model, feed), rtol=REWRITE_MAX_ABS, atol=REWRITE_MAX_ABS
    )


def test_integer_rules_leave_erf_and_pad():
    from pbrforge.export.onnx_rewrite import INTEGER_RULES

    erf = _model([helper.make_node("Erf", ["x"], ["y"])], X, X["x"])
    pad = _model(
        [helper.make_node("Pad", ["x", "p"], ["y"], mode="edge")],
        X,
        [2, 3, 7, 8],
        [("p", _i64([0, 0, 1, 1, 0, 0, 1, 1]))],
    )
    assert mobile_friendly(erf, INTEGER_RULES)[1] == {} and mobile_friendly(pad, INTEGER_RULES)[1] == {}


def _qdq_pad(mode: str, value: float | None):
    """x -> Q -> DQ -> Pad -> Q -> DQ -> y, one scale and zero point throughout, as the quantizer writes it."""
    pad_inputs = ["d", "p"] + (["c"] if value is not None else [])
    inits = [("p", _i64([0, 0, 1, 2, 0, 0, 2, 1])), ("s", _f32(0.05)), ("z", np.uint8(100))]
    inits += [("c", _f32(value))] if value is not None else []
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
        helper.make_node("Pad", pad_inputs, ["padded"], mode=mode),
        helper.make_node("QuantizeLinear", ["padded", "s", "z"], ["q2"]),
        helper.make_node("DequantizeLinear", ["q2", "s", "z"], ["y"]),
    ]
    return _model(nodes, X, [2, 3, 8, 9], inits)


@pytest.mark.parametrize(
    "mode, value", [("edge", None), ("reflect", None), ("constant", None), ("constant", 0.0)]
)
def test_integer_pad_is_exact_and_drops_its_conversions(mode, value):
    from pbrforge.export.onnx_quantize import integer_pads

    model = _qdq_pad(mode, value)
    feed = {"x": np.random.default_rng(1).normal(0, 3, X["x"]).astype(np.float32)}
    want = _run(model, feed)
    assert integer_pads(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "Pad", "DequantizeLinear"]
    np.testing.assert_array_equal(_run(model, feed), want)


def test_integer_pad_leaves_a_nonzero_constant_alone():
    from pbrforge.export.onnx_quantize import integer_pads

    model = _qdq_pad("constant", 1.0)  # only 0 is proven exact (it is the zero point): the float Pad stays
    assert integer_pads(model) == 0 and len(model.graph.node) == 5
