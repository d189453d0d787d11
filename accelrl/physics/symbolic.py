"""Symbolic tracing and code generation for linear beamline maps.

A beamline map is traced once with :class:`Expr` placeholders for the knobs, the incoming
beam and the misalignments. Arithmetic on Python floats is folded at trace time, identities
(``x * 1``, ``x + 0``, ``x * 0``) are removed and identical sub-expressions are shared
(hash-consing), so the trace of a lattice becomes a short straight-line program that only
contains the operations that depend on the inputs. :func:`generate` turns that program into
Python source, compiled with :func:`exec`, which evaluates with any numeric backend that
supports ``+ - * /`` and the primitives of :mod:`accelrl.physics.numerics`: torch tensors
(batched, with autograd), numpy arrays (batched) or Python floats (one beamline, lowest
latency).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Union

Value = Union[float, "Expr"]


class Expr:
    """A node of the traced program: an input, an operation or a primitive call.

    :param tracer: The :class:`Tracer` that owns the node.
    :param op: Operation name (``"input"``, ``"add"``, ``"sub"``, ``"mul"``, ``"div"``,
        ``"neg"``, ``"call"`` or ``"item"``).
    :param args: Operands (``Expr`` or ``float``) and, for ``"input"``/``"call"``/``"item"``,
        the static data of the node.
    """

    __slots__ = ("tracer", "op", "args")

    def __init__(self, tracer: Tracer, op: str, args: tuple) -> None:
        self.tracer = tracer
        self.op = op
        self.args = args

    def __add__(self, other: Value) -> Value:
        return self.tracer.add(self, other)

    def __radd__(self, other: Value) -> Value:
        return self.tracer.add(other, self)

    def __sub__(self, other: Value) -> Value:
        return self.tracer.sub(self, other)

    def __rsub__(self, other: Value) -> Value:
        return self.tracer.sub(other, self)

    def __mul__(self, other: Value) -> Value:
        return self.tracer.mul(self, other)

    def __rmul__(self, other: Value) -> Value:
        return self.tracer.mul(other, self)

    def __truediv__(self, other: Value) -> Value:
        return self.tracer.div(self, other)

    def __rtruediv__(self, other: Value) -> Value:
        return self.tracer.div(other, self)

    def __neg__(self) -> Value:
        return self.tracer.neg(self)

    def __repr__(self) -> str:
        return f"Expr({self.op}, {self.args!r})"


def _key(value: Value) -> tuple:
    return ("e", id(value)) if isinstance(value, Expr) else ("c", float(value))


class Tracer:
    """Builds :class:`Expr` nodes with constant folding, identity removal and hash-consing."""

    def __init__(self) -> None:
        self._nodes: dict[tuple, Expr] = {}

    def _node(self, op: str, args: tuple, static: tuple = ()) -> Expr:
        key = (op, static, tuple(_key(a) for a in args))
        node = self._nodes.get(key)
        if node is None:
            node = Expr(self, op, args + static)
            self._nodes[key] = node
        return node

    def input(self, group: str, index: int) -> Expr:
        """Placeholder for column ``index`` of input ``group`` (``"k"``, ``"b"`` or ``"m"``)."""
        return self._node("input", (), (group, index))

    def add(self, a: Value, b: Value) -> Value:
        if not isinstance(a, Expr) and not isinstance(b, Expr):
            return a + b
        if not isinstance(a, Expr) and a == 0.0:
            return b
        if not isinstance(b, Expr) and b == 0.0:
            return a
        return self._node("add", (a, b))

    def sub(self, a: Value, b: Value) -> Value:
        if not isinstance(a, Expr) and not isinstance(b, Expr):
            return a - b
        if not isinstance(b, Expr) and b == 0.0:
            return a
        if not isinstance(a, Expr) and a == 0.0:
            return self.neg(b)
        return self._node("sub", (a, b))

    def mul(self, a: Value, b: Value) -> Value:
        if not isinstance(a, Expr) and not isinstance(b, Expr):
            return a * b
        for x, y in ((a, b), (b, a)):
            if not isinstance(x, Expr):
                if x == 0.0:
                    return 0.0
                if x == 1.0:
                    return y
                if x == -1.0:
                    return self.neg(y)
        return self._node("mul", (a, b))

    def div(self, a: Value, b: Value) -> Value:
        if not isinstance(a, Expr) and not isinstance(b, Expr):
            return a / b
        if not isinstance(b, Expr) and b == 1.0:
            return a
        if not isinstance(a, Expr) and a == 0.0:
            return 0.0
        return self._node("div", (a, b))

    def neg(self, a: Value) -> Value:
        if not isinstance(a, Expr):
            return -a
        if a.op == "neg":
            return a.args[0]
        return self._node("neg", (a,))

    def call(self, name: str, *args: Value, n_out: int = 1) -> Value | tuple[Value, ...]:
        """Call primitive ``name`` of the numeric backend.

        With only float arguments the primitive is evaluated now (constant folding) with the
        scalar backend. ``n_out > 1`` returns a tuple of ``item`` nodes.
        """
        if not any(isinstance(a, Expr) for a in args):
            from accelrl.physics.numerics import SCALAR

            return getattr(SCALAR, name)(*args)
        node = self._node("call", args, (name,))
        if n_out == 1:
            return node
        return tuple(self._node("item", (node,), (i,)) for i in range(n_out))


def generate(
    outputs: Sequence[Value], name: str = "beamline_map", free_temporaries: bool = False
) -> tuple[Callable, str]:
    """Generate a Python function ``f(F, k, b, m) -> tuple`` evaluating ``outputs``.

    ``F`` is a numeric backend (see :mod:`accelrl.physics.numerics`); ``k``, ``b`` and ``m``
    are sequences of columns (knobs, incoming beam, misalignments). Constant outputs are
    broadcast with ``F.full_like`` to the batch of the first beam column.

    :param free_temporaries: Delete every temporary after its last use, so that array
        backends reuse (cache-hot) memory instead of keeping all intermediates alive.
    :return: The compiled function and its source code (for inspection).
    """
    names: dict[int, str] = {}
    statements: list[tuple[str, str, list[str]]] = []  # (target, expression, operands)

    def ref(value: Value) -> str:
        if isinstance(value, Expr):
            return names[id(value)]
        return repr(float(value))

    def visit(root: Expr) -> None:
        stack: list[tuple[Expr, bool]] = [(root, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in names:
                continue
            operands = [a for a in node.args if isinstance(a, Expr)]
            if not expanded:
                stack.append((node, True))
                stack.extend((a, False) for a in operands if id(a) not in names)
                continue
            var = f"t{len(names)}"
            names[id(node)] = var
            op, args = node.op, node.args
            if op == "input":
                rhs = f"{args[0]}[{args[1]}]"
            elif op in ("add", "sub", "mul", "div"):
                sym = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[op]
                rhs = f"{ref(args[0])} {sym} {ref(args[1])}"
            elif op == "neg":
                rhs = f"-{ref(args[0])}"
            elif op == "call":
                rhs = f"F.{args[-1]}({', '.join(ref(a) for a in args[:-1])})"
            elif op == "item":
                rhs = f"{ref(args[0])}[{args[1]}]"
            else:  # pragma: no cover - the tracer creates no other nodes
                raise AssertionError(op)
            statements.append((var, rhs, [names[id(a)] for a in operands]))

    for out in outputs:
        if isinstance(out, Expr):
            visit(out)
    rets = [ref(o) if isinstance(o, Expr) else f"F.full_like(_like, {float(o)!r})" for o in outputs]
    kept = set(rets)
    last_use: dict[str, int] = {}
    for i, (_, _, operands) in enumerate(statements):
        for operand in operands:
            last_use[operand] = i
    dead_after: dict[int, list[str]] = {}
    for var, i in last_use.items():
        if var not in kept:
            dead_after.setdefault(i, []).append(var)
    lines = [f"def {name}(F, k, b, m):", "    _like = b[0]"]
    for i, (var, rhs, _) in enumerate(statements):
        lines.append(f"    {var} = {rhs}")
        if free_temporaries and i in dead_after:
            lines.append(f"    del {', '.join(sorted(dead_after[i]))}")
    lines += [f"    return ({', '.join(rets)},)", ""]
    source = "\n".join(lines)
    return load(source, name), source


def load(source: str, name: str) -> Callable:
    """Compile generated ``source`` and return its function ``name``."""
    namespace: dict = {}
    exec(compile(source, f"<accelrl:{name}>", "exec"), namespace)  # noqa: S102
    return namespace[name]
