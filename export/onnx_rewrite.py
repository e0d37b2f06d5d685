"""Rewrites of an exported ONNX graph into ops that the phone NPUs' ONNX Runtime providers take.

ONNX Runtime's mobile builds hand a graph to NNAPI (Android) or Core ML (iOS) only in pieces whose every op
the provider lists; each gap between pieces is a copy between NPU and CPU memory on every run, which ORT's own
checker judges worse than the CPU alone. PyTorch's exporter emits ops one or both providers lack:
HardSigmoid and HardSwish (MobileNetV3), Erf (exact GELU), LayerNormalization, Einsum, Reciprocal and Gather
at constant indices (the attention blocks), ReduceMax (the view fusion), ReduceL2 and Expand (the normal
renormalisation), replicate Pad (the decoder), BatchNormalization no conv absorbs, and Resize with an empty
optional input, which the checker counts as a dynamic shape.

Each is written here through ops both providers list, exactly or within float rounding; Erf becomes XLA's
float32 rational approximation, within 4e-7 of erf. The ONNX parity gate that follows the export still judges
the rewritten graph against PyTorch.

The same rules, a few of them (``INTEGER_RULES``), serve the static int8 graph: there the gap is not a
provider's op list but ONNX Runtime's integer kernels, and an op without one runs in float between a
DequantizeLinear and a QuantizeLinear.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

# XLA's float32 erf (xla/service/elemental_ir_emitter.cc, EmitErfF32): x * P(x^2) / Q(x^2) with x clamped to
# [-4, 4], highest degree first. Measured against float64 erf over [-12, 12]: max abs error 4.0e-7.
ERF_CLAMP = 4.0
ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)
MAX_UNROLL = 16  # a reduction or broadcast over more slices than this is left as it is
_BROADCASTING = {"Add", "Sub", "Mul", "Div", "Max", "Min"}
_logger = logging.getLogger(__name__)


MOBILE_RULES = frozenset(
    {"HardSigmoid", "HardSwish", "Erf", "ReduceMax", "ReduceL2", "Expand", "Pad", "BatchNormalization"}
    | {"LayerNormalization", "Gather", "Reciprocal", "Einsum", "Resize"}
)
# For a static int8 graph: ops ONNX Runtime has no integer kernel for, written in ones it has (QLinearAdd,
# QLinearMul, QLinearGlobalAveragePool; a Clip is absorbed into the Q before it), so no DequantizeLinear ->
# float op -> QuantizeLinear island is left around them. Erf stays: a polynomial rounded to 8 bits at every
# step would lose the GELU it approximates. Pad stays too: its slices and concatenations cost more than the Pad
# they replace, and ``onnx_quantize.integer_pads`` runs the Pad on the 8-bit values instead.
INTEGER_RULES = frozenset({"HardSigmoid", "HardSwish", "BatchNormalization", "ReduceMean"})


def mobile_friendly(
    model: onnx.ModelProto, rules: frozenset[str] = MOBILE_RULES
) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A copy of ``model`` with every op in ``rules`` rewritten where its shapes are static; and how many of each."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 18:  # axes are inputs (not attributes) from opset 18 on; the exporter never goes below it
        raise ValueError(f"the mobile rewrite needs ONNX opset 18 or newer, not {opset}")
    graph_attrs = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    if any(a.type in graph_attrs for n in model.graph.node for a in n.attribute):
        _logger.warning("the graph has control flow (If, Loop, Scan): the mobile rewrite leaves it as it is")
        return model, {}
    rewriter = _Rewriter(model, rules)
    return rewriter.run(), dict(rewriter.done)


class _Rewriter:
    """One pass over the graph in order; a rule that fires emits its nodes in place of the node it replaces."""

    def __init__(self, model: onnx.ModelProto, rules: frozenset[str]):
        self.rules = rules
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        graph = self.model.graph
        inferred = onnx.shape_inference.infer_shapes(self.model, data_prop=True)
        self.shapes: dict[str, list[int | None]] = {}
        self.types: dict[str, int] = {t.name: t.data_type for t in graph.initializer}
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
            if v.type.HasField("tensor_type"):
                self.types[v.name] = v.type.tensor_type.elem_type
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
                dims = v.type.tensor_type.shape.dim
                self.shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        self.consts: dict[str, np.ndarray] = {}
        for t in graph.initializer:
            if t.data_location != onnx.TensorProto.EXTERNAL:  # small constants only: weights may stay on disk
                self.consts[t.name] = numpy_helper.to_array(t)
                self.shapes.setdefault(t.name, list(t.dims))
        for n in graph.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.users: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for i in n.input:
                self.users.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in graph.output}
        self.names = {o for n in graph.node for o in n.output} | {i.name for i in graph.initializer}
        self.made: set[str] = set()  # names this rewrite created: only these may be renamed
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.renamed: dict[str, str] = {}
        self.done: Counter[str] = Counter()

    # -- building blocks ---------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A value name no node or initializer uses yet."""
        k = len(self.names)
        while f"{hint}_m{k}" in self.names:
            k += 1
        self.names.add(f"{hint}_m{k}")
        self.made.add(f"{hint}_m{k}")
        return f"{hint}_m{k}"

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        """A new initializer (rules fire on float32 inputs only, so float constants are float32)."""
        name = self.fresh("mobile_const")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(
        self, op_type: str, inputs: list[str], out: str | None = None, n_out: int = 1, **attrs: Any
    ) -> Any:
        outputs = [out] if out is not None else [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(
            helper.make_node(op_type, inputs, outputs, name=self.fresh(f"mobile_{op_type}"), **attrs)
        )
        return outputs if n_out > 1 else outputs[0]

    def slices(self, x: str, axis: int, n: int) -> list[str]:
        """``x`` cut into its ``n`` unit slices along ``axis``."""
        if n == 1:
            return [x]
        return list(self.op("Split", [x, self.const([1] * n, np.int64)], n_out=n, axis=axis))

    def static(self, name: str) -> list[int] | None:
        """The shape of ``name`` if shape inference fixed every dimension."""
        dims = self.shapes.get(name)
        if dims is None or any(d is None for d in dims):
            return None
        return [int(d) for d in dims if d is not None]

    def axes(self, node: onnx.NodeProto, rank: int) -> list[int] | None:
        """A reduction's axes, non-negative; None if not constant or if it reduces nothing."""
        axes = self.consts.get(node.input[1]) if len(node.input) > 1 and node.input[1] else np.zeros(0)
        if axes is None:
            return None
        if axes.size == 0:  # no axes (or an empty list): all of them, unless noop_with_empty_axes
            return None if _attr(node, "noop_with_empty_axes", 0) else list(range(rank))
        return sorted({int(a) % rank for a in axes.reshape(-1)})

    # -- the rules: each emits nodes whose outputs carry the replaced node's output names -----------------
    def run(self) -> onnx.ModelProto:
        graph = self.model.graph
        for node in graph.node:
            node.input[:] = [self.renamed.get(i, i) for i in node.input]
            rule = getattr(self, f"_{node.op_type}", None) if node.op_type in self.rules else None
            float32 = bool(node.input) and self.types.get(node.input[0]) == onnx.TensorProto.FLOAT
            first = len(self.nodes)
            if node.domain in ("", "ai.onnx") and rule is not None and float32 and rule(node):
                self.done[node.op_type] += 1
                for made in self.nodes[first:]:  # the exporter's name scopes say which module each came from
                    made.metadata_props.extend(node.metadata_props)
            else:
                self.nodes.append(node)
        graph.initializer.extend(self.inits)
        del graph.node[:]
        graph.node.extend(self.nodes)
        used = {i for n in graph.node for i in n.input} | self.graph_outputs
        kept = [t for t in graph.initializer if t.name in used]  # BatchNorm statistics, pads, shapes
        del graph.initializer[:]
        graph.initializer.extend(kept)
        del graph.value_info[:]  # stale where rewritten; shape inference fills it again
        return onnx.shape_inference.infer_shapes(self.model, data_prop=True)

    def _HardSigmoid(self, node: onnx.NodeProto) -> bool:
        """max(0, min(1, alpha x + beta)) = Clip(6 alpha x + 6 beta, 0, 6) / 6."""
        alpha, beta = _attr(node, "alpha", 0.2), _attr(node, "beta", 0.5)
        self._relu6_gate(node.input[0], 6 * alpha, 6 * beta, node.output[0])
        return True

    def _HardSwish(self, node: onnx.NodeProto) -> bool:
        """x * Clip(x + 3, 0, 6) / 6, as PyTorch writes it."""
        gate = self._relu6_gate(node.input[0], 1.0, 3.0, None)
        self.op("Mul", [node.input[0], gate], node.output[0])
        return True

    def _relu6_gate(self, x: str, scale: float, shift: float, out: str | None) -> str:
        """Clip(scale x + shift, 0, 6) / 6: NNAPI's provider takes Clip only as RELU6 (0, 6) or RELU1 (-1, 1)."""
        scaled = x if scale == 1.0 else self.op("Mul", [x, self.const(scale)])
        t = self.op("Clip", [self.op("Add", [scaled, self.const(shift)]), self.const(0.0), self.const(6.0)])
        return str(self.op("Mul", [t, self.const(1.0 / 6.0)], out))

    def _Erf(self, node: onnx.NodeProto) -> bool:
        # clamped as 4 RELU1(x / 4), the Clip NNAPI takes; scaling by a power of two is exact
        quarter = self.op("Mul", [node.input[0], self.const(1.0 / ERF_CLAMP)])
        unit = self.op("Clip", [quarter, self.const(-1.0), self.const(1.0)])
        x = self.op("Mul", [unit, self.const(ERF_CLAMP)])
        x2 = self.op("Mul", [x, x])
        num = self.op("Mul", [x, self._horner(x2, ERF_P)])
        self.op("Div", [num, self._horner(x2, ERF_Q)], node.output[0])
        return True

    def _horner(self, x: str, coefficients: tuple[float, ...]) -> str:
        """The polynomial in ``x`` with these coefficients, highest degree first."""
        acc = self.op("Add", [self.op("Mul", [x, self.const(coefficients[0])]), self.const(coefficients[1])])
        for c in coefficients[2:]:
            acc = self.op("Add", [self.op("Mul", [acc, x]), self.const(c)])
        return acc

    def _ReduceMax(self, node: onnx.NodeProto) -> bool:
        return self._reduce(node, "Max")

    def _ReduceL2(self, node: onnx.NodeProto) -> bool:
        return self._reduce(node, "L2")

    def _reduce(self, node: onnx.NodeProto, kind: str) -> bool:
        """A reduction over few static slices as Split and a Max (or an Add chain, then Sqrt for L2 or a scale
        for Mean)."""
        shape = self.static(node.input[0])
        axes = None if shape is None else self.axes(node, len(shape))
        if shape is None or axes is None or any(shape[a] > MAX_UNROLL for a in axes):
            return False
        keep = _attr(node, "keepdims", 1)
        x = node.input[0]
        if kind == "L2":
            x = self.op("Mul", [x, x])
        for a in axes:
            parts = self.slices(x, a, shape[a])
            x = parts[0]
            for p in parts[1:]:  # pairwise: NNAPI's Max takes two inputs
                x = self.op("Max" if kind == "Max" else "Add", [x, p])
        if kind == "L2":
            x = self.op("Sqrt", [x])
        if kind == "Mean":
            x = self.op("Mul", [x, self.const(1.0 / int(np.prod([shape[a] for a in axes])))])
        if not keep:
            x = self.op("Squeeze", [x, self.const(axes, np.int64)])
        self._rename_last(x, node.output[0])
        return True

    def _ReduceMean(self, node: onnx.NodeProto) -> bool:
        """Over both spatial axes of an NCHW tensor (the SE blocks' squeeze, the fusion's pooling) it is
        GlobalAveragePool; over few slices (the views), an Add chain scaled by their count."""
        shape = self.static(node.input[0])
        if shape is None or len(shape) != 4 or self.axes(node, 4) != [2, 3]:
            return self._reduce(node, "Mean")
        x = self.op("GlobalAveragePool", [node.input[0]])
        if not _attr(node, "keepdims", 1):
            x = self.op("Squeeze", [x, self.const([2, 3], np.int64)])
        self._rename_last(x, node.output[0])
        return True

    def _rename_last(self, produced: str, wanted: str) -> None:
        """Give the value just produced the replaced node's output name."""
        last = self.nodes[-1] if self.nodes else None
        if last is not None and produced in last.output and produced in self.made:
            last.output[list(last.output).index(produced)] = wanted
        else:  # produced earlier, or the input itself (a reduction over unit axes): alias it
            self.op("Identity", [produced], wanted)

    def _Expand(self, node: onnx.NodeProto) -> bool:
        """Dropped where every user broadcasts anyway; otherwise copies concatenated along each grown axis."""
        src, out = node.input[0], node.output[0]
        target, in_shape, out_shape = self.consts.get(node.input[1]), self.static(src), self.static(out)
        if target is None or in_shape is None or out_shape is None:
            return False
        users = self.users.get(out, [])

        def other(u: onnx.NodeProto) -> str:  # the user's other operand, as renamed so far
            name = u.input[1 - list(u.input).index(out)]
            return self.renamed.get(name, name)

        if out not in self.graph_outputs and all(
            u.op_type in _BROADCASTING
            and len(u.input) == 2
            and list(u.input).count(out) == 1
            and self.static(other(u)) == out_shape
            for u in users
        ):
            self.renamed[out] = src
            return True
        full = [1] * (len(out_shape) - len(in_shape)) + in_shape
        grown = [(a, n) for a, (m, n) in enumerate(zip(full, out_shape, strict=True)) if m != n]
        if not grown or any(n > MAX_UNROLL for _, n in grown):
            return False
        if full != in_shape:
            src = self.op("Reshape", [src, self.const(full, np.int64)])
        for a, n in grown:
            src = self.op("Concat", [src] * n, axis=a)
        self._rename_last(src, out)
        return True

    def _Pad(self, node: onnx.NodeProto) -> bool:
        """Edge (replicate) padding as the first and last slices concatenated on each side."""
        if _attr(node, "mode", b"constant") != b"edge":
            return False
        shape = self.static(node.input[0])
        pads = self.consts.get(node.input[1])
        if shape is None or pads is None or (len(node.input) > 3 and node.input[3]) or (pads < 0).any():
            return False
        rank, x = len(shape), node.input[0]
        for a in range(rank):
            before, after = int(pads[a]), int(pads[a + rank])
            if not before and not after:
                continue
            first = self.op("Slice", [x, *self._slice_args(0, 1, a)])
            last = self.op("Slice", [x, *self._slice_args(-1, shape[a], a)])
            x = self.op("Concat", [first] * before + [x] + [last] * after, axis=a)
        self._rename_last(x, node.output[0])
        return True

    def _slice_args(self, start: int, end: int, axis: int) -> list[str]:
        """Slice's starts, ends and axes as constants (the Core ML provider needs them constant)."""
        return [self.const([start], np.int64), self.const([end], np.int64), self.const([axis], np.int64)]

    def _BatchNormalization(self, node: onnx.NodeProto) -> bool:
        """Inference BatchNorm as one per-channel Mul and Add (ORT folds them into a conv where it can)."""
        params = [self.consts.get(i) for i in node.input[1:5]]
        shape = self.shapes.get(node.input[0])
        if len(node.output) != 1 or any(p is None for p in params) or shape is None:
            return False
        if _attr(node, "training_mode", 0):  # batch statistics, not the running ones
            return False
        gamma, beta, mean, var = (np.asarray(p, np.float64) for p in params)
        scale = gamma / np.sqrt(var + _attr(node, "epsilon", 1e-5))
        per_channel = (-1,) + (1,) * (len(shape) - 2)
        y = self.op("Mul", [node.input[0], self.const(scale.reshape(per_channel))])
        self.op("Add", [y, self.const((beta - mean * scale).reshape(per_channel))], node.output[0])
        return True

    def _LayerNormalization(self, node: onnx.NodeProto) -> bool:
        """(x - mean) / sqrt(var + eps) * scale + bias over the trailing axes, in ReduceMean, Sub, Sqrt, Div."""
        shape = self.shapes.get(node.input[0])
        if len(node.output) != 1 or shape is None:
            return False
        rank = len(shape)
        axes = self.const(list(range(_attr(node, "axis", -1) % rank, rank)), np.int64)
        d = self.op("Sub", [node.input[0], self.op("ReduceMean", [node.input[0], axes], keepdims=1)])
        var = self.op("ReduceMean", [self.op("Mul", [d, d]), axes], keepdims=1)
        std = self.op("Sqrt", [self.op("Add", [var, self.const(_attr(node, "epsilon", 1e-5))])])
        y = self.op("Mul", [self.op("Div", [d, std]), node.input[1]])
        if len(node.input) > 2 and node.input[2]:
            y = self.op("Add", [y, node.input[2]])
        self._rename_last(y, node.output[0])
        return True

    def _Gather(self, node: onnx.NodeProto) -> bool:
        """Gather at constant indices as Slice (a contiguous run) or a Concat of slices, Squeeze for a scalar."""
        indices, shape = self.consts.get(node.input[1]), self.static(node.input[0])
        if indices is None or shape is None or indices.ndim > 1 or not 0 < indices.size <= MAX_UNROLL:
            return False
        axis = _attr(node, "axis", 0) % len(shape)
        if any(not -shape[axis] <= int(i) < shape[axis] for i in indices.reshape(-1)):
            return False  # out of range: an error for Gather, not for Slice
        picked = [int(i) % shape[axis] for i in indices.reshape(-1)]
        if picked == list(range(picked[0], picked[0] + len(picked))):
            x = self.op("Slice", [node.input[0], *self._slice_args(picked[0], picked[-1] + 1, axis)])
        else:
            parts = [self.op("Slice", [node.input[0], *self._slice_args(i, i + 1, axis)]) for i in picked]
            x = self.op("Concat", parts, axis=axis)
        if indices.ndim == 0:
            x = self.op("Squeeze", [x, self.const([axis], np.int64)])
        self._rename_last(x, node.output[0])
        return True

    def _Reciprocal(self, node: onnx.NodeProto) -> bool:
        self.op("Div", [self.const(1.0), node.input[0]], node.output[0])
        return True

    def _Einsum(self, node: onnx.NodeProto) -> bool:
        """A two-operand einsum as Transpose, Reshape, MatMul, Reshape, Transpose (static shapes only).

        Indices are sorted into batch (both operands and the output), left and right (one operand and the
        output) and contracted (both operands only); an index summed within one operand is left to Einsum.
        """
        equation = _attr(node, "equation", b"").decode().replace(" ", "")
        shapes = [self.static(i) for i in node.input]
        if len(node.input) != 2 or "->" not in equation or "." in equation or any(s is None for s in shapes):
            return False
        (a, b), out = equation.split("->")[0].split(","), equation.split("->")[1]
        sa, sb = shapes
        if len(set(a)) != len(a) or len(set(b)) != len(b) or len(a) != len(sa) or len(b) != len(sb):  # type: ignore[arg-type]
            return False
        dim = dict(zip(a, sa, strict=True))  # type: ignore[arg-type]
        if any(dim.get(i, n) != n for i, n in zip(b, sb, strict=True)):  # type: ignore[arg-type]
            return False  # a label broadcast from size 1 in one operand: left to Einsum
        dim |= dict(zip(b, sb, strict=True))  # type: ignore[arg-type]
        batch = [i for i in out if i in a and i in b]
        left, right = [i for i in out if i in a and i not in b], [i for i in out if i in b and i not in a]
        summed = [i for i in a if i in b and i not in out]
        if set(a) != {*batch, *left, *summed} or set(b) != {*batch, *right, *summed}:
            return False
        bd, lsize, csize, rsize = (
            [dim[i] for i in batch],
            _prod(dim, left),
            _prod(dim, summed),
            _prod(dim, right),
        )
        lhs = self._transpose(node.input[0], list(a), [*batch, *left, *summed])
        lhs = self._reshape(lhs, [dim[i] for i in [*batch, *left, *summed]], [*bd, lsize, csize])
        rhs = self._transpose(node.input[1], list(b), [*batch, *summed, *right])
        rhs = self._reshape(rhs, [dim[i] for i in [*batch, *summed, *right]], [*bd, csize, rsize])
        y = self.op("MatMul", [lhs, rhs])
        y = self._reshape(y, [*bd, lsize, rsize], [dim[i] for i in [*batch, *left, *right]])
        y = self._transpose(y, [*batch, *left, *right], list(out))
        self._rename_last(y, node.output[0])
        return True

    def _transpose(self, x: str, have: list[str], want: list[str]) -> str:
        """``x`` with its index order ``have`` permuted to ``want``; no node if already so."""
        perm = [have.index(i) for i in want]
        return x if perm == sorted(perm) else str(self.op("Transpose", [x], perm=perm))

    def _reshape(self, x: str, shape: list[int], target: list[int]) -> str:
        """``x`` reshaped from ``shape`` to ``target``; no node if they are equal."""
        return x if shape == target else str(self.op("Reshape", [x, self.const(target, np.int64)]))

    def _Resize(self, node: onnx.NodeProto) -> bool:
        """An empty optional input (roi, or scales beside sizes) becomes an empty constant: same meaning."""
        last = max(i for i, name in enumerate(node.input) if name)
        if "" not in node.input[1:last]:
            return False
        inputs = [name or self.const(np.zeros(0)) for name in node.input[: last + 1]]
        self.nodes.append(
            helper.make_node("Resize", inputs, list(node.output), name=node.name, domain=node.domain)
        )
        self.nodes[-1].attribute.extend(node.attribute)
        return True


def _prod(dim: dict[str, int], indices: list[str]) -> int:
    return int(np.prod([dim[i] for i in indices], dtype=np.int64))


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default
