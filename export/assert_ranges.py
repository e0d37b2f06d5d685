"""Tensor-value ``assert`` statements: taken out so a graph can be captured, and kept as the ranges runners check.

A model that guards its inputs with ``assert (rate >= 0).all() and (rate <= 4).all()`` cannot be captured by
``torch.export``, strict or not: the assert branches on a value the trace does not know. An exported graph
would lose the check anyway. So, when a capture fails, every ``forward`` in the module tree that holds an
``assert`` is rebuilt from its source without its asserts (on the instance, for the capture only; the class is
untouched), and each assert on an argument of the graph's own ``forward`` that bounds it by numbers becomes
that input's value range, which every runner then checks. The pass is listed, with each assert it removed
and what became of it, and is held to eager like the other pre-export passes.

Recognised bounds, from an assert that is a statement of the graph's own ``forward`` body (not under an ``if``
or a loop, nor in a nested function) on an argument ``x`` the body never assigns to, and numeric constants
``a``, ``b`` (``and`` joins them):
``a <= x <= b``, ``x >= a``, ``x <= b`` (also with ``<``, ``>``, reversed sides), wrapped in ``.all()``,
``torch.all(...)`` or ``bool(...)``, and ``x.min() >= a``, ``x.max() <= b``.
"""

from __future__ import annotations

import ast
import copy
import inspect
import math
import textwrap
import tokenize
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from torch import nn

LOWER_OPS = (ast.GtE, ast.Gt)
UPPER_OPS = (ast.LtE, ast.Lt)


@dataclass
class StrippedAssert:
    """One assert taken out of a forward: where it was, its source, and the bounds it put on an argument."""

    where: str
    source: str
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "assert": self.source,
            "bounds": {k: list(v) for k, v in self.bounds.items()},
        }


def has_asserts(module: nn.Module) -> bool:
    return any(_assert_nodes(type(m).forward) for m in module.modules())


@contextmanager
def asserts_removed(module: nn.Module) -> Iterator[list[StrippedAssert]]:
    """Within the block, each forward with asserts in ``module``'s tree runs without them; yields what was taken
    out (bounds only for the top module's own arguments)."""
    found: list[StrippedAssert] = []
    patched: list[nn.Module] = []
    done: dict[type, Any] = {}
    for sub in module.modules():
        cls = type(sub)
        if cls not in done:
            done[cls] = _without_asserts(cls.forward, found, top=sub is module)
        if done[cls] is not None:
            sub.forward = types.MethodType(done[cls], sub)  # the instance's, so the class stays as it was
            patched.append(sub)
    try:
        yield found
    finally:
        for sub in patched:
            del sub.forward


def _source_tree(fn: Any) -> tuple[ast.FunctionDef, int, str] | None:
    """The function's definition as parsed from its file, or None when its source cannot be had or parsed."""
    try:
        lines, first = inspect.getsourcelines(fn)
        filename = inspect.getsourcefile(fn) or "<model>"
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except (OSError, TypeError, SyntaxError, ValueError, tokenize.TokenError):
        return None
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.FunctionDef):
        return None
    return node, first, filename


def _assert_nodes(fn: Any) -> list[ast.Assert]:
    parsed = _source_tree(inspect.unwrap(fn)) if inspect.isfunction(fn) else None
    return [n for n in ast.walk(parsed[0]) if isinstance(n, ast.Assert)] if parsed else []


def _own_asserts(node: ast.FunctionDef) -> list[ast.Assert]:
    """The asserts that are statements of ``node``'s body itself: not under an ``if`` or a loop (which may
    not run), nor in a function, lambda or class defined inside it."""
    return [st for st in node.body if isinstance(st, ast.Assert)]


def _rebound(node: ast.FunctionDef) -> set[str]:
    """Names ``node``'s own body assigns to (an argument rebound before an assert no longer is the input)."""
    names: set[str] = set()
    todo: list[ast.AST] = list(node.body)
    while todo:
        child = todo.pop()
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store | ast.Del):
            names.add(child.id)
        todo.extend(ast.iter_child_nodes(child))
    return names


def _compiled(node: ast.FunctionDef, first: int, filename: str, fn: Any, decorated: bool) -> Any:
    """``node`` compiled in ``fn``'s globals, inside a maker that binds ``fn``'s closure cells (``super()``'s
    ``__class__`` among them); its decorators applied again when ``decorated``."""
    node = copy.deepcopy(node)
    if not decorated:
        node.decorator_list = []
    freevars = fn.__code__.co_freevars
    maker = ast.parse(f"def _maker({', '.join(freevars)}):\n    pass").body[0]
    assert isinstance(maker, ast.FunctionDef)
    maker.body = [node, ast.Return(ast.Name(node.name, ast.Load()))]
    module_ast = ast.fix_missing_locations(ast.Module(body=[maker], type_ignores=[]))
    ast.increment_lineno(module_ast, first - 1)
    namespace: dict[str, Any] = {}
    exec(compile(module_ast, filename, "exec"), fn.__globals__, namespace)  # the user's own code, re-read
    rebuilt = namespace["_maker"](*(c.cell_contents for c in fn.__closure__ or ()))
    inner = inspect.unwrap(rebuilt)
    inner.__defaults__, inner.__kwdefaults__ = fn.__defaults__, fn.__kwdefaults__
    return rebuilt


def _without_asserts(forward: Any, found: list[StrippedAssert], top: bool) -> Any:
    """``forward`` compiled again from its source with its asserts removed (its decorators kept); None if it has
    none, or its source is not the code that runs (the file changed since it was imported)."""
    if not inspect.isfunction(forward):
        return None
    fn = inspect.unwrap(forward)  # a decorated forward: the function its source defines
    parsed = _source_tree(fn)
    if parsed is None:
        return None
    node, first, filename = parsed
    asserts = [n for n in ast.walk(node) if isinstance(n, ast.Assert)]
    if not asserts:
        return None
    where = f"{fn.__qualname__} line"
    try:
        same = _compiled(node, first, filename, fn, decorated=False).__code__.co_code == fn.__code__.co_code
    except Exception:  # the source does not even compile where the function lives
        same = False
    if not same:
        found.append(
            StrippedAssert(
                f"{where} {first}", "(not taken out: its source file differs from the code that runs)"
            )
        )
        return None
    own = _own_asserts(node)
    arguments = {a.arg for a in node.args.args[1:]} - _rebound(node)  # the graph's inputs, as given
    for a in asserts:
        bounds = _bounds(a.test, arguments) if top and a in own else {}
        found.append(StrippedAssert(f"{where} {first + a.lineno - 1}", ast.unparse(a), bounds))
    return _compiled(_Strip().visit(copy.deepcopy(node)), first, filename, fn, decorated=True)


class _Strip(ast.NodeTransformer):
    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        return ast.copy_location(ast.Pass(), node)


def _bounds(test: ast.expr, names: set[str]) -> dict[str, tuple[float, float]]:
    """The numeric bounds ``test`` puts on arguments in ``names`` (-inf/inf where one side is open)."""
    bounds: dict[str, tuple[float, float]] = {}
    parts = test.values if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And) else [test]
    for part in parts:
        for name, low, high in _comparisons(_unwrap(part), names):
            _intersect(bounds, name, (low, high))
    return bounds


def _intersect(bounds: dict[str, tuple[float, float]], name: str, new: tuple[float, float]) -> None:
    old = bounds.get(name, (-math.inf, math.inf))
    bounds[name] = (max(old[0], new[0]), min(old[1], new[1]))


def _unwrap(node: ast.expr) -> ast.expr:
    """``(cond).all()``, ``torch.all(cond)``, ``bool(cond)`` -> ``cond``."""
    while isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "all" and not node.args:
            node = func.value
        elif len(node.args) == 1 and (
            (isinstance(func, ast.Name) and func.id in ("bool", "all"))
            or (isinstance(func, ast.Attribute) and func.attr == "all")
        ):
            node = node.args[0]
        else:
            break
    return node


def _subject(node: ast.expr, names: set[str]) -> tuple[str, str] | None:
    """``x`` -> (x, any); ``x.min()`` -> (x, min); ``x.max()`` -> (x, max); else None."""
    if isinstance(node, ast.Name) and node.id in names:
        return node.id, "any"
    if (
        isinstance(node, ast.Call)
        and not node.args
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("min", "max")
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in names
    ):
        return node.func.value.id, node.func.attr
    return None


def _number(node: ast.expr) -> float | None:
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _comparisons(node: ast.expr, names: set[str]) -> list[tuple[str, float, float]]:
    if not isinstance(node, ast.Compare):
        return []
    terms = [node.left, *node.comparators]
    out = []
    for (left, right), op in zip(zip(terms, terms[1:], strict=False), node.ops, strict=True):
        for subject, number, flipped in ((left, right, False), (right, left, True)):
            who, value = _subject(subject, names), _number(number)
            if who is None or value is None:
                continue
            lower = isinstance(op, LOWER_OPS) != flipped  # x >= a, or a <= x
            upper = isinstance(op, UPPER_OPS) != flipped
            name, part = who
            if lower and part in ("any", "min"):
                out.append((name, value, math.inf))
            elif upper and part in ("any", "max"):
                out.append((name, -math.inf, value))
    return out


def input_ranges(module: nn.Module, inputs: tuple, removed: list[StrippedAssert]) -> tuple[tuple, list[str]]:
    """``inputs`` (the graph's TensorSpecs, in ``module.forward``'s argument order) with each valid range cut
    to the bounds the removed asserts put on that argument, and what was done to each, in a few words."""
    bounds: dict[str, tuple[float, float]] = {}
    for stripped in removed:
        for arg, bound in stripped.bounds.items():
            _intersect(bounds, arg, bound)
    params = [p for p in inspect.signature(type(module).forward).parameters if p != "self"]
    ranges, specs = [], list(inputs)
    for k, (param, spec) in enumerate(zip(params, inputs, strict=False)):
        if param in bounds:
            specs[k], said = _narrowed(spec, bounds[param])
            ranges.append(said)
    return tuple(specs), ranges


def _narrowed(spec: Any, bounds: tuple[float, float]) -> tuple[Any, str]:
    """``spec`` (a TensorSpec) with its valid range cut to ``bounds``, and what was done, in a few words."""
    from dataclasses import replace

    low, high = bounds
    if spec.valid is not None:
        low, high = max(low, spec.valid[0]), min(high, spec.valid[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        return (
            spec,
            f"{spec.name}: bound {bounds} is not a closed range; state valid= in the spec to have it checked",
        )
    if spec.valid == (low, high):
        return spec, f"{spec.name}: valid {spec.valid} already says so"
    was = "no range" if spec.valid is None else f"valid {spec.valid}"
    return replace(spec, valid=(low, high)), f"{spec.name}: valid ({low:g}, {high:g}) (the spec had {was})"
