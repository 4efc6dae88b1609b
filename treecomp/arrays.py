"""A small vocabulary of array operations, for the ideas every target runs the same way.

An idea that several targets compute (a link, the native outputs, the inputs' preparation) is
written once, as a Python function of :class:`Value` s; :func:`record` calls it and writes
down a :class:`Program`: steps, each an operation of :data:`OPERATIONS` on earlier values,
with every value's type known. A target renders programs from the operations alone and
never sees an idea: NumPy here (:meth:`Program.run`), torch in
:func:`strategies.programs.run_steps`, ONNX in :func:`treecomp.onnx.graph.emit_program`
(the way tinygrad keeps its targets to a few primitives). Exactness is a contract of each
operation: the type it computes in, the order of its adds.

    >>> program = record(lambda x: 1.0 / (1.0 + exp(-x)), "float64")
    >>> [step.op for step in program.steps]
    ['neg', 'exp', 'const', 'add', 'div']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The operations and their contracts. Values are arrays of one type (float32, float64,
# int32, int64 or bool): (rows, columns) arrays, (rows,) vectors, or tables that ``take``
# reads; an operation on two values broadcasts them, and arithmetic keeps their one type.
OPERATIONS = {
    "const": "a scalar of the step's type and value",
    "neg": "-x",
    "exp": "e**x in x's type, as the target computes it (at most an ulp from exact)",
    "log1p": "log(1 + x), accurate where x is tiny",
    "sign": "-1, 0 or 1 (NaN stays NaN)",
    "abs": "|x|",
    "add": "x + y",
    "sub": "x - y",
    "mul": "x * y",
    "div": "x / y",
    "pow": "x ** y",
    "minimum": "the smaller of x and y",
    "mod": "x mod y, for integers x >= 0 and y > 0",
    "floordiv": "x // y, for integers x >= 0 and y > 0",
    "equal": "x == y, a bool",
    "less": "x < y, a bool",
    "less_equal": "x <= y, a bool",
    "greater": "x > y, a bool",
    "greater_equal": "x >= y, a bool",
    "isnan": "whether x is NaN, a bool",
    "and": "x and y, of bools",
    "or": "x or y, of bools",
    "not": "not x, of a bool",
    "take": "table x's entries at the integer positions y (any shape), in x's type",
    "broadcast": "x repeated to the shape of y, which x broadcasts to, in x's type",
    "column": "for each walker, the value at column y of its row of x (how walkers lie along"
    " the rows is the target's layout: NumPy and ONNX (rows, walkers); torch row blocks)",
    "where": "x where the bool c holds, else y (args c, x, y)",
    "float32": "x rounded to float32",
    "float64": "x widened to float64",
    "int32": "x as int32: bools as 0 and 1, int64 within int32's range",
    "int64": "x as int64: bools as 0 and 1, finite floats truncated, int32 widened",
    "softmax": "exp(x - row max) / its row sum, along the columns",
    "row_max": "each row's largest value, as a column",
    "ordered_sum": "the sums of y outputs (an int64 constant) whose terms are x's columns,"
    " step-major (column s * y + j is output j's term s): each output's terms added one after"
    " the other, from z where given (a value per output, laid out along the target's output"
    " axis), in x's type; (rows, y)",
    "columns_at": "x's columns at the int64 positions y (a vector); a position equal to x's"
    " column count gives zeros",
    "group_matmul": "x's columns in groups of a, each group times its matrix of the float32"
    " table y (groups, a, b), the groups' b columns side by side; exact where every product"
    " and partial sum is an integer of at most 2**24",
    "group_argmax": "in each of y groups of z columns of x (int64 constants), the position of"
    " the largest value (the first of equal ones), an int64 (rows, y)",
    "argmax": "each row's column of the largest value (the first of equal ones), an int64 vector",
    "concat": "the columns of x, then those of y",
    "squeeze": "a one-column array as a vector",
    "interleave": "the columns of two or three arrays side by side: x0, y0, (z0,) x1, ...",
}
CASTS = frozenset(("float32", "float64", "int32", "int64"))
COMPARISONS = frozenset(("equal", "less", "less_equal", "greater", "greater_equal"))
LOGICAL = frozenset(("and", "or", "not"))
BINARY = frozenset(("add", "sub", "mul", "div", "pow", "minimum", "mod", "floordiv", "concat"))
BINARY |= COMPARISONS | frozenset(("and", "or", "take", "column", "broadcast"))
TYPES = ("float32", "float64", "int64", "int32", "bool")  # flat()'s code of a constant
# The integer constants a program may hold: int32's range, and int64's integers that a
# step's float value holds exactly.
_INTEGER_RANGE = {"int32": 2**31 - 1, "int64": 2**53}


@dataclass(frozen=True, slots=True)
class Step:
    """One operation: ``op`` of the values ``args`` (the program's inputs are values
    ``0 .. len(inputs) - 1``, step ``i``'s result is value ``len(inputs) + i``), giving a
    value of type ``dtype``; a ``const`` step's value is ``value``."""

    op: str
    args: tuple[int, ...]
    dtype: str
    value: float = 0.0


@dataclass(frozen=True, slots=True)
class Program:
    """Steps from arrays of the types ``inputs`` to the values ``outputs``, called
    ``names``."""

    inputs: tuple[str, ...]
    steps: tuple[Step, ...]
    outputs: tuple[int, ...]
    names: tuple[str, ...]

    def only(self, *names: str) -> Program:
        """The program of the outputs ``names`` alone: the steps they need, no other."""
        outputs = tuple(self.outputs[self.names.index(name)] for name in names)
        first = len(self.inputs)
        needed = set(outputs)
        for i in range(len(self.steps) - 1, -1, -1):
            if first + i in needed:
                needed.update(self.steps[i].args)
        kept = [i for i in range(len(self.steps)) if first + i in needed]
        renumber = {v: v for v in range(first)}
        renumber.update({first + i: first + n for n, i in enumerate(kept)})
        steps = tuple(
            Step(s.op, tuple(renumber[a] for a in s.args), s.dtype, s.value)
            for s in (self.steps[i] for i in kept)
        )
        return Program(self.inputs, steps, tuple(renumber[o] for o in outputs), names)

    def flat(self) -> list[tuple[str, int, int, int, float]]:
        """A one-output program whose last value is its output, as ``(op, a, b, c, value)``
        tuples, for a renderer that takes plain lists (TorchScript): arguments ``a``, ``b``,
        ``c`` (``-1`` where unused); a ``const`` step is ``("const", kind, -1, -1, value)``,
        ``value`` (exact for any float32 and any integer up to 2**53) of type
        ``TYPES[kind]``."""
        if self.outputs != (len(self.inputs) + len(self.steps) - 1,):
            raise ValueError("flat() takes a program whose last value is its one output")
        flat: list[tuple[str, int, int, int, float]] = []
        for step in self.steps:
            if step.op == "const":
                flat.append(("const", TYPES.index(step.dtype), -1, -1, step.value))
            else:
                a, b, c = (*step.args, -1, -1)[:3]
                flat.append((step.op, a, b, c, 0.0))
        return flat

    def run(self, *inputs: Any) -> list[Any]:
        """The outputs, computed with NumPy (:func:`numpy_function`)."""
        return numpy_function(self)(*inputs)


# Each operation in NumPy, as an expression of its arguments {a}, {b}, {c} (or all {args}).
_NUMPY = {
    "neg": "-{a}",
    "exp": "np.exp({a})",
    "log1p": "np.log1p({a})",
    "sign": "np.sign({a})",
    "abs": "np.abs({a})",
    "add": "{a} + {b}",
    "sub": "{a} - {b}",
    "mul": "{a} * {b}",
    "div": "{a} / {b}",
    "pow": "np.power({a}, {b})",
    "minimum": "np.minimum({a}, {b})",
    "mod": "{a} % {b}",
    "floordiv": "{a} // {b}",
    "less": "{a} < {b}",
    "less_equal": "{a} <= {b}",
    "greater": "{a} > {b}",
    "greater_equal": "{a} >= {b}",
    "equal": "{a} == {b}",
    "isnan": "np.isnan({a})",
    "and": "{a} & {b}",
    "or": "{a} | {b}",
    "not": "~{a}",
    "take": "{a}[{b}]",
    "column": "np.take_along_axis({a}, {b}, axis=1)",
    "broadcast": "np.broadcast_to({a}, np.shape({b}))",
    "where": "np.where({a}, {b}, {c})",
    "float32": "np.asarray({a}, dtype=np.float32)",
    "float64": "np.asarray({a}, dtype=np.float64)",
    "int32": "np.asarray({a}, dtype=np.int32)",
    "int64": "np.asarray({a}, dtype=np.int64)",
    "softmax": "_softmax({a})",
    "row_max": "{a}.max(axis=1, keepdims=True)",
    "ordered_sum": "_ordered_sum({args})",
    "columns_at": "_columns_at({a}, {b})",
    "group_matmul": "_group_matmul({a}, {b})",
    "group_argmax": "_group_argmax({a}, {b}, {c})",
    "argmax": "np.asarray(np.argmax({a}, axis=1), dtype=np.int64)",
    "concat": "np.concatenate(({a}, {b}), axis=1)",
    "squeeze": "{a}[:, 0]",
    "interleave": "_interleave({args})",
}
# Operations whose overflow or division by zero (to infinity, as their contract allows) is
# silent. (Sums of finite scores do not overflow; outputs need no errstate, whose entry costs
# a microsecond at one row.)
_QUIET = frozenset(("exp", "div", "pow", "log1p", "softmax"))


def _interleave(*parts: Any) -> Any:
    stacked = np.stack(parts, axis=2)
    return stacked.reshape(stacked.shape[0], -1)


def _softmax(x: Any) -> Any:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ordered_sum(x: Any, outputs: Any, start: Any = None) -> Any:
    k = int(outputs)
    total = np.zeros((x.shape[0], k), x.dtype) if start is None else start
    if start is None and x.shape[1] >= k:  # from the first terms: no 0.0 + -0.0
        total = x[:, :k]
    else:
        total = total + x[:, :k]
    for first in range(k, x.shape[1], k):  # one add after the other: np.sum adds pairwise
        total = total + x[:, first : first + k]
    return np.array(total, copy=True)


def _columns_at(x: Any, positions: Any) -> Any:
    if positions.size and positions.max() >= x.shape[1]:
        x = np.concatenate((x, np.zeros((x.shape[0], 1), x.dtype)), axis=1)
    return x[:, positions]


def _group_matmul(x: Any, table: Any) -> Any:
    groups, a, b = table.shape
    products = np.einsum("rga,gab->rgb", x.reshape(x.shape[0], groups, a), table)
    return products.reshape(x.shape[0], groups * b)


def _group_argmax(x: Any, groups: Any, size: Any) -> Any:
    by_group = x.reshape(x.shape[0], int(groups), int(size))
    return np.asarray(by_group.argmax(axis=2), dtype=np.int64)


# What the expressions of _NUMPY read besides their arguments.
_SCOPE = {
    "np": np,
    "_softmax": _softmax,
    "_interleave": _interleave,
    "_ordered_sum": _ordered_sum,
    "_columns_at": _columns_at,
    "_group_matmul": _group_matmul,
    "_group_argmax": _group_argmax,
}


def _expression(op: str, names: list[str]) -> str:
    """Operation ``op`` of the values called ``names``, as a NumPy expression."""
    arguments = dict(zip("abc", names, strict=False), args=", ".join(names))
    return _NUMPY[op].format(**arguments)


def numpy_function(program: Program) -> Callable[..., list[Any]]:
    """``program`` as a Python function of NumPy arrays returning its outputs: straight
    code, one line per step, so that a call costs what the NumPy calls cost (it runs at one
    row, where every microsecond counts)."""
    n = len(program.inputs)
    names: dict[str, Any] = dict(_SCOPE)
    lines = []
    for i, step in enumerate(program.steps):
        target = f"v{n + i}"
        if step.op == "const":
            names[target] = np.array(step.value, dtype=step.dtype)[()]
            continue
        lines.append(f"{target} = {_expression(step.op, [f'v{a}' for a in step.args])}")
    body = lines or ["pass"]
    if any(step.op in _QUIET for step in program.steps):
        body = ["with np.errstate(all='ignore'):"] + ["    " + line for line in body]
    result = ", ".join(f"v{i}" for i in program.outputs)
    inputs = ", ".join(f"v{i}" for i in range(n))
    source = "\n    ".join([f"def run({inputs}):", *body, f"return [{result}]"])
    exec(source, names)  # made above from the program's operations only
    function: Callable[..., list[Any]] = names["run"]
    function.__doc__ = source
    return function


def evaluate(step: Step, *args: Any) -> Any:
    """Step ``step`` (not a ``const``) on the NumPy arrays ``args``, as :func:`numpy_function`
    computes it: for a renderer that folds steps of constants."""
    names = [f"a{i}" for i in range(len(args))]
    scope = dict(_SCOPE, **dict(zip(names, args, strict=True)))
    return np.asarray(eval(_expression(step.op, names), scope), dtype=step.dtype)


class Value:
    """A value of a program being recorded, of type ``dtype``: arithmetic on it records
    steps. A Python number beside it is a constant of its type."""

    __slots__ = ("_recorder", "dtype", "index")

    def __init__(self, recorder: _Recorder, index: int, dtype: str) -> None:
        self._recorder = recorder
        self.index = index
        self.dtype = dtype

    def __neg__(self) -> Value:
        return apply("neg", self)

    def __add__(self, other: Value | float) -> Value:
        return apply("add", self, other)

    def __radd__(self, other: float) -> Value:
        return apply("add", other, self)

    def __sub__(self, other: Value | float) -> Value:
        return apply("sub", self, other)

    def __rsub__(self, other: float) -> Value:
        return apply("sub", other, self)

    def __mul__(self, other: Value | float) -> Value:
        return apply("mul", self, other)

    def __rmul__(self, other: float) -> Value:
        return apply("mul", other, self)

    def __truediv__(self, other: Value | float) -> Value:
        return apply("div", self, other)

    def __rtruediv__(self, other: float) -> Value:
        return apply("div", other, self)

    def __pow__(self, other: Value | float) -> Value:
        return apply("pow", self, other)

    def __rpow__(self, other: float) -> Value:
        return apply("pow", other, self)

    def __lt__(self, other: Value | float) -> Value:
        return apply("less", self, other)

    def __gt__(self, other: Value | float) -> Value:
        return apply("greater", self, other)

    def __ge__(self, other: Value | float) -> Value:
        return apply("greater_equal", self, other)

    def __le__(self, other: Value | float) -> Value:
        return apply("less_equal", self, other)

    def __mod__(self, other: Value | int) -> Value:
        return apply("mod", self, other)

    def __floordiv__(self, other: Value | int) -> Value:
        return apply("floordiv", self, other)

    def __abs__(self) -> Value:
        return apply("abs", self)

    def __and__(self, other: Value) -> Value:
        return apply("and", self, other)

    def __or__(self, other: Value) -> Value:
        return apply("or", self, other)

    def __invert__(self) -> Value:
        return apply("not", self)


class _Recorder:
    def __init__(self, inputs: tuple[str, ...]) -> None:
        self.inputs = inputs
        self.steps: list[Step] = []
        self._constants: dict[tuple[str, str], Value] = {}

    def add(self, op: str, args: tuple[Value, ...], dtype: str, value: float = 0.0) -> Value:
        self.steps.append(Step(op, tuple(a.index for a in args), dtype, value))
        return Value(self, len(self.inputs) + len(self.steps) - 1, dtype)

    def dtype(self, index: int) -> str:
        n = len(self.inputs)
        return self.inputs[index] if index < n else self.steps[index - n].dtype

    def widened(self, x: Value) -> Value | None:
        """The float32 value ``x`` is the float64 of, if a cast made it."""
        i = x.index - len(self.inputs)
        if i < 0 or self.steps[i].op != "float64":
            return None
        (source,) = self.steps[i].args
        return Value(self, source, "float32") if self.dtype(source) == "float32" else None

    def constant(self, value: float, dtype: str) -> Value:
        if dtype in _INTEGER_RANGE and not abs(value) <= _INTEGER_RANGE[dtype]:
            raise TypeError(f"{value} is no {dtype} constant (at most {_INTEGER_RANGE[dtype]})")
        key = (float(value).hex(), dtype)  # -0.0 is not 0.0 here
        if key not in self._constants:
            self._constants[key] = self.add("const", (), dtype, float(value))
        return self._constants[key]


def apply(op: str, *args: Value | float) -> Value:
    """The value of operation ``op`` on ``args`` (at least one a :class:`Value`; numbers
    become constants of the values' type)."""
    values = [a for a in args if isinstance(a, Value)]
    if not values:
        raise TypeError(f"{op} needs a recorded value among its arguments")
    recorder = values[0]._recorder
    if op == "broadcast":
        x, like = args
        if not isinstance(x, Value) or not isinstance(like, Value):
            raise TypeError("broadcast repeats a value to another value's shape")
        return recorder.add(op, (x, like), x.dtype)
    if op in ("take", "column", "columns_at"):
        table, index = args
        if not isinstance(table, Value) or not isinstance(index, Value):
            raise TypeError(f"{op} reads a value at index values")
        if index.dtype not in ("int32", "int64"):
            raise TypeError(f"{op}'s positions are integers, not {index.dtype}")
        return recorder.add(op, (table, index), table.dtype)
    operands = values[1:] if op == "where" else values  # where's condition is a bool
    types = {v.dtype for v in operands}
    if len(types) > 1:
        raise TypeError(f"{op} of values of types {sorted(types)}: cast one first")
    dtype = types.pop() if types else ("int64" if isinstance(args[1], int) else "float64")
    for a in args:
        if not isinstance(a, Value) and dtype in ("int32", "int64", "bool") and a != int(a):
            raise TypeError(f"{op} of {dtype} values and the number {a}")
    integer = dtype in ("int32", "int64")
    if (op in LOGICAL and dtype != "bool") or (op in ("mod", "floordiv") and not integer):
        raise TypeError(f"{op} of {dtype} values")
    if op in ("div", "pow") and (integer or dtype == "bool"):  # the renderers give floats
        raise TypeError(f"{op} of {dtype} values: cast them to a float type first")
    typed = tuple(a if isinstance(a, Value) else recorder.constant(a, dtype) for a in args)
    if op in CASTS:
        if dtype == op:
            return typed[0]  # a cast to the value's own type is no step
        source = recorder.widened(typed[0]) if op == "float32" else None
        if source is not None:
            return source  # float32 widened and rounded back: itself, exactly
        dtype = op
    elif op in COMPARISONS or op == "isnan":
        dtype = "bool"
    elif op == "argmax":
        dtype = "int64"
    return recorder.add(op, typed, dtype)


def record(
    idea: Callable[..., Value | Sequence[Value]], *inputs: str, names: Sequence[str] = ()
) -> Program:
    """The program of ``idea``, a function of values of the types ``inputs`` returning one
    value or a sequence of them (called ``names``: by default ``output_0`` and on)."""
    recorder = _Recorder(tuple(inputs))
    out = idea(*[Value(recorder, i, dtype) for i, dtype in enumerate(inputs)])
    outputs = (out,) if isinstance(out, Value) else tuple(out)
    named = tuple(names) or tuple(f"output_{i}" for i in range(len(outputs)))
    program = Program(tuple(inputs), tuple(recorder.steps), tuple(v.index for v in outputs), named)
    return program.only(*named)  # without the steps no output needs


def _unary(op: str) -> Callable[[Value], Value]:
    def operation(x: Value) -> Value:
        return apply(op, x)

    operation.__name__ = operation.__qualname__ = op
    operation.__doc__ = f"``{op}``: {OPERATIONS[op]}."
    return operation


exp = _unary("exp")
log1p = _unary("log1p")
sign = _unary("sign")
float32 = _unary("float32")
float64 = _unary("float64")
int64 = _unary("int64")
softmax = _unary("softmax")
row_max = _unary("row_max")
argmax = _unary("argmax")
squeeze = _unary("squeeze")
isnan = _unary("isnan")
int32 = _unary("int32")


def take(table: Value, index: Value) -> Value:
    """``take``: ``table``'s entries at the integer positions ``index``."""
    return apply("take", table, index)


def ordered_sum(x: Value, outputs: int, start: Value | None = None) -> Value:
    """``ordered_sum``: the sums of ``outputs`` outputs whose terms are ``x``'s columns,
    step-major, added one after the other (after ``start``, one value per output)."""
    recorder = x._recorder
    if outputs < 1 or int(outputs) != outputs:
        raise TypeError(f"ordered_sum of {outputs} outputs")
    if x.dtype not in ("float32", "float64") or (start is not None and start.dtype != x.dtype):
        raise TypeError("ordered_sum adds floats, and its start is of their type")
    k = recorder.constant(outputs, "int64")
    args = (x, k) if start is None else (x, k, start)
    return recorder.add("ordered_sum", args, x.dtype)


def group_matmul(x: Value, table: Value) -> Value:
    """``group_matmul``: ``x``'s column groups, each times its matrix of ``table``."""
    if x.dtype != "float32" or table.dtype != "float32":
        raise TypeError("group_matmul multiplies float32 values by a float32 table")
    return apply("group_matmul", x, table)


def group_argmax(x: Value, groups: int, size: int) -> Value:
    """``group_argmax``: the largest value's position in each of ``groups`` groups of
    ``size`` columns."""
    if x.dtype not in ("float32", "float64") or groups < 1 or size < 1:
        raise TypeError(f"group_argmax of {x.dtype} values in {groups} groups of {size}")
    counts = (x._recorder.constant(groups, "int64"), x._recorder.constant(size, "int64"))
    return x._recorder.add("group_argmax", (x, *counts), "int64")


def row_sum(x: Value) -> Value:
    """Each row's sum as a column, added from the first column to the last in ``x``'s type
    (``ordered_sum`` of one output)."""
    return ordered_sum(x, 1)


def columns_at(x: Value, positions: Value) -> Value:
    """``columns_at``: ``x``'s columns at ``positions`` (one past the last: zeros)."""
    return apply("columns_at", x, positions)


def broadcast(x: Value, like: Value) -> Value:
    """``broadcast``: ``x`` repeated to the shape of ``like``."""
    return apply("broadcast", x, like)


def column(x: Value, columns: Value) -> Value:
    """``column``: each walker's value at column ``columns`` of its row of ``x``."""
    return apply("column", x, columns)


def cast(x: Value, dtype: str) -> Value:
    """``x`` as ``dtype`` (``float32``, ``float64``, ``int32`` or ``int64``)."""
    return apply(dtype, x)


def interleave(*parts: Value) -> Value:
    """``interleave``: the columns of two or three arrays side by side."""
    if len(parts) not in (2, 3):
        raise TypeError("interleave takes two or three arrays")
    return apply("interleave", *parts)


def minimum(x: Value, y: Value | float) -> Value:
    """``minimum``: the smaller of ``x`` and ``y``."""
    return apply("minimum", x, y)


def equal(x: Value, y: Value | float) -> Value:
    """``equal``: whether ``x == y`` (``==`` on Values stays Python's identity test)."""
    return apply("equal", x, y)


def concat(x: Value, y: Value) -> Value:
    """``concat``: the columns of ``x``, then those of ``y``."""
    return apply("concat", x, y)


def where(condition: Value, x: Value | float, y: Value | float) -> Value:
    """``where``: ``x`` where ``condition`` holds, else ``y``."""
    return apply("where", condition, x, y)
