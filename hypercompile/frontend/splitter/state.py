"""What the splitter works on: environments of static and dynamic names, blocks, frames and
loops, the stand-ins for values only known at run time, and the errors it raises."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

from ...core.ir import HostCheck, ListOp, Terminator
from ...errors import UnsupportedModelError

MAX_UNROLL = 10_000
STATE_PREFIX = "__st_"  # program values standing for module attributes that forward assigns
SCALARS = (bool, int, float)
SIDE_EFFECTS = {"print", "input", "open", "exec", "eval", "breakpoint", "setattr", "delattr"}

DYN = object()  # a dynamic value: a `return` of one, or a name that is dynamic in a join
MISSING = object()  # a name a state does not define


class Unsupported(UnsupportedModelError):
    """The splitter cannot lower a construct; the whole-graph exporter may still manage it."""

    hard = False


class HardUnsupported(Unsupported):
    """A construct no compiled artifact can reproduce (side effects, recursion, generators):
    the build fails even when the whole-graph exporter would trace past it."""

    hard = True


class StaticLookupError(HardUnsupported):
    """Forward reads a missing attribute, key or index of a build-time object (`self.typo`):
    the user's code raises there too, and so would the whole-graph exporter tracing it."""


class SymList:
    """A list built at build time whose items are static values or dynamic program names."""

    def __init__(self, items: list[tuple[str, Any]] | None = None):
        self.items: list[tuple[str, Any]] = items or []  # ("s", value) | ("d", program name)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, SymList)
            and len(self.items) == len(other.items)
            and all(
                a[0] == b[0] and (a[1] is b[1] or (a[0] == "d" and a[1] == b[1]))
                for a, b in zip(self.items, other.items)
            )
        )


class DynRef:
    """A dynamic item of a `SymList`: the program name that holds it."""

    def __init__(self, name: str):
        self.name = name


def symitem(item: tuple[str, Any]) -> Any:
    """The value of a `SymList` item: the static value itself, or a `DynRef`."""
    if item[0] == "s":
        return item[1]
    return DynRef(item[1])


@dataclass
class Poisoned:
    """A name whose value differs between data-dependent paths in a way the host cannot carry."""

    reason: str


@dataclass
class Env:
    static: dict[str, Any] = field(default_factory=dict)
    dynamic: set[str] = field(default_factory=set)
    # dynamic names that are host lists: lists of tensors whose length depends on the path
    lists: set[str] = field(default_factory=set)

    def copy(self) -> Env:
        memo: dict[int, Any] = {}

        def cp(v: Any) -> Any:
            if not isinstance(v, SymList):
                return v
            if id(v) not in memo:  # nested lists too, aliases kept
                memo[id(v)] = new = SymList()
                new.items = [(k, cp(x) if k == "s" else x) for k, x in v.items]
            return memo[id(v)]

        static = {k: cp(v) for k, v in self.static.items()}
        return Env(static, set(self.dynamic), set(self.lists))

    def set_dynamic(self, name: str, host_list: bool = False) -> None:
        """`name` is a run-time value: a host list, or else a graph value."""
        self.static.pop(name, None)
        self.dynamic.add(name)
        if host_list:
            self.lists.add(name)
        else:
            self.lists.discard(name)

    def set_static(self, name: str, value: Any) -> None:
        self.dynamic.discard(name)
        self.lists.discard(name)
        self.static[name] = value


@dataclass
class Block:
    id: int
    stmts: list[ast.stmt] = field(default_factory=list)
    assign: dict[str, Any] = field(default_factory=dict)  # host literals, set after stmts
    host_checks: list[HostCheck] = field(default_factory=list)  # asserts, warnings, log lines
    lists: list[ListOp] = field(default_factory=list)  # host list work, after stmts and assign
    term: Terminator | None = None


@dataclass
class St:
    """Control reaches the end of `block` with `env`."""

    block: Block
    env: Env


@dataclass
class Frame:
    """One function being lowered: the top-level forward, or an inlined call."""

    globals: dict[str, Any]
    filename: str
    prefix: str  # "" for forward; a unique suffix for inlined frames
    ret_name: str | None  # program name a `return` assigns (inlined frames)
    rets: list[tuple[St, Any]] = field(default_factory=list)  # (state, static value or DYN)
    stack: tuple[Any, ...] = ()

    def prog(self, name: str) -> str:
        if name.startswith(STATE_PREFIX):
            return name  # module state cells are program-wide
        return f"{name}{self.prefix}" if self.prefix else name


@dataclass
class Loop:
    breaks: list[St] = field(default_factory=list)
    continues: list[St] = field(default_factory=list)


def loc(frame: Frame, node: ast.AST) -> str:
    return f"{frame.filename}:{getattr(node, 'lineno', '?')}"


def same(a: Any, b: Any) -> bool:
    """Whether two static values are interchangeable on the host (joins keep them static)."""
    if a is b:
        return True
    if isinstance(a, SCALARS + (str, type(None))) and type(a) is type(b):
        return a == b
    if isinstance(a, SymList):
        return a == b
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        return all(same(x, y) for x, y in zip(a, b))
    return False
