"""The host program IR and its one interpreter.

A dynamic network's `forward`, split into static blocks, is a `Program`: blocks that each call at
most one compiled graph (named values in, named values out), then set host literals (`assign`)
and copies (`moves`), then do their list work (`lists`: Python lists whose length depends on the
path, held by the host as lists of arrays), then make their host checks (`host_checks`: the
asserts, warnings and log lines of `forward`), then end in one terminator: `Goto`, `Branch` (on
a boolean value), `Switch` (on an integer index) or `Return`. The splitter builds it, the
manifest stores it (`to_json` / `from_json`), and `Interpreter` runs it: at build time over
PyTorch blocks (the probe that proves the split equal to `forward`) and at run time over
compiled runners, so the proof and the device run the same code. Torch-free.
"""

from __future__ import annotations

import builtins
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ..errors import BundleError, HypercompileError, ModelAssertionError
from .fields import Fields

DEFAULT_MAX_ITERATIONS = 10_000
MAX_ITERATIONS_LIMIT = 1_000_000  # a manifest may not ask for more (a hostile one would hang)


# -- terminators -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Goto:
    target: int
    KIND = 0


@dataclass(frozen=True, slots=True)
class Branch:
    cond: str  # a boolean value: true -> `then`, false -> `orelse`
    then: int
    orelse: int
    KIND = 1


@dataclass(frozen=True, slots=True)
class Switch:
    index: str  # an integer value choosing among `cases` (negative counts from the end)
    cases: tuple[int, ...]
    KIND = 2


@dataclass(frozen=True, slots=True)
class Return:
    values: tuple[str, ...]
    KIND = 3


Terminator = Goto | Branch | Switch | Return


def successors(term: Terminator) -> tuple[int, ...]:
    if isinstance(term, Goto):
        return (term.target,)
    if isinstance(term, Branch):
        return (term.then, term.orelse)
    if isinstance(term, Switch):
        return term.cases
    return ()


def retarget(term: Terminator, old: int, new: int) -> Terminator:
    """`term` with every jump to block `old` sent to `new`."""

    def r(b: int) -> int:
        return new if b == old else b

    if isinstance(term, Goto):
        return Goto(r(term.target))
    if isinstance(term, Branch):
        return Branch(term.cond, r(term.then), r(term.orelse))
    if isinstance(term, Switch):
        return Switch(term.index, tuple(r(b) for b in term.cases))
    return term


def term_uses(term: Terminator) -> set[str]:
    """The values a terminator reads."""
    if isinstance(term, Branch):
        return {term.cond}
    if isinstance(term, Switch):
        return {term.index}
    if isinstance(term, Return):
        return set(term.values)
    return set()


# -- host checks ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HostCheck:
    """A statement of `forward` the host makes after a block's graph: `assert` raises
    ModelAssertionError when `value` is false; `warn` (`warnings.warn`) and `log` (a logging
    call) fire when `value` is true, or whenever the block runs when `value` is None."""

    kind: str  # "assert" | "warn" | "log"
    value: str | None  # a boolean value of the block (None: unconditional; never for assert)
    message: str
    file: str  # where the statement is in the user's source
    line: int
    category: str = "UserWarning"  # warn: a built-in warning class
    module: str = ""  # warn: the module of the statement (for warning filters by module)
    logger: str = ""  # log: the logger's name ("root" for the root logger)
    level: int = logging.WARNING  # log: the record's level

    def uses(self) -> set[str]:
        return set() if self.value is None else {self.value}


HOST_CHECK_KINDS = {"assert": (), "warn": ("category", "module"), "log": ("logger", "level")}
WARNING_CLASSES = {
    n: c for n, c in vars(builtins).items() if isinstance(c, type) and issubclass(c, Warning)
}


def block_uses(b: Block) -> set[str]:
    """The values a block reads after its graph and host work: its checks and terminator."""
    out = term_uses(b.term)
    for c in b.host_checks:
        out |= c.uses()
    return out


# -- host lists ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ListOp:
    """Host work on a list of values (arrays or lists) whose length depends on the path:
    `list` sets `dst` to its `parts` in order, each part a value (a name) or a slice of a
    list (`(name, start, stop)`, None for an open end); `get` sets `dst` to item `index` of
    list `src`; `len` to its length; `stack` and `cat` to its items joined along `index` (the
    dim), as `torch.stack` and `torch.cat` do. `where` is the user's file:line, for errors."""

    op: str  # "list" | "get" | "len" | "stack" | "cat"
    dst: str
    src: str = ""  # get, len, stack, cat: the list
    parts: tuple[str | tuple[str, int | None, int | None], ...] = ()  # list
    index: int = 0  # get: the item (negative counts from the end); stack, cat: the dim
    where: str = ""

    def text(self) -> str:
        """The op as Python reads it (`xs = [*xs[:-1], a]`, `n = len(xs)`), for people."""
        if self.op == "list":
            parts = [
                p
                if isinstance(p, str)
                else f"*{p[0]}[{_end(p[1])}:{_end(p[2])}]".replace("[:]", "")
                for p in self.parts
            ]
            return f"{self.dst} = [{', '.join(parts)}]"
        if self.op == "get":
            return f"{self.dst} = {self.src}[{self.index}]"
        if self.op == "len":
            return f"{self.dst} = len({self.src})"
        return f"{self.dst} = {self.op}({self.src}, dim={self.index})"

    def uses(self) -> list[str]:
        if self.op != "list":
            return [self.src]
        return [p if isinstance(p, str) else p[0] for p in self.parts]


LIST_OPS = ("list", "get", "len", "stack", "cat")


def _end(i: int | None) -> str:
    return "" if i is None else str(i)


# -- blocks and programs ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Literal:
    """A host constant: a Python scalar with its array dtype (bool, int64 or float64)."""

    value: bool | int | float
    dtype: str

    @staticmethod
    def of(value: bool | int | float) -> Literal:
        if isinstance(value, bool):
            return Literal(value, "bool")
        if isinstance(value, int):
            return Literal(value, "int64")
        return Literal(float(value), "float64")


@dataclass
class Block:
    id: int
    term: Terminator
    graph: str | None = None  # the compiled graph this block calls (None: host work only)
    inputs: list[str] = field(default_factory=list)  # values fed to the graph, in its order
    outputs: list[str] = field(default_factory=list)  # values the graph sets, in its order
    assign: dict[str, Literal] = field(default_factory=dict)  # set after the graph runs
    moves: list[tuple[str, str]] = field(default_factory=list)  # (dst, src), after assign
    lists: list[ListOp] = field(default_factory=list)  # after moves, in order
    host_checks: list[HostCheck] = field(default_factory=list)  # after lists, in order
    loop_header: bool = False
    source: str | None = None  # the Python statements the graph was made from, for people
    body: Any = None  # build time only: the front end's statements and function, never stored


@dataclass(frozen=True)
class Decision:
    """Where a branch or switch came from in the user's source."""

    line: int | str
    source: str


@dataclass
class Program:
    entry: int
    inputs: list[str]
    blocks: dict[int, Block]
    max_iterations: int = DEFAULT_MAX_ITERATIONS
    decisions: dict[str, Decision] = field(default_factory=dict)  # decision value -> source
    # statements of forward left out because nothing they do can reach an answer, with why
    dropped: list[str] = field(default_factory=list)
    # a return holds a host list: the number of outputs depends on the path (named by position)
    outputs_vary: bool = False

    def predecessors(self) -> dict[int, list[int]]:
        preds: dict[int, list[int]] = {b: [] for b in self.blocks}
        for blk in self.blocks.values():
            for s in successors(blk.term):
                preds[s].append(blk.id)
        return preds

    def reachable(self) -> list[int]:
        """Ids of the blocks reachable from the entry, in depth-first preorder."""
        seen: dict[int, None] = {}
        stack = [self.entry]
        while stack:
            b = stack.pop()
            if b in seen:
                continue
            seen[b] = None
            stack.extend(reversed(successors(self.blocks[b].term)))
        return list(seen)

    def find_loop_headers(self) -> set[int]:
        """Targets of back edges in a depth-first walk from the entry: every cycle passes one,
        so counting their visits bounds every loop."""
        headers: set[int] = set()
        state: dict[int, int] = {self.entry: 1}
        stack = [(self.entry, iter(successors(self.blocks[self.entry].term)))]
        while stack:
            b, it = stack[-1]
            s = next(it, None)
            if s is None:
                state[b] = 2
                stack.pop()
            elif state.get(s) == 1:
                headers.add(s)
            elif s not in state:
                state[s] = 1
                stack.append((s, iter(successors(self.blocks[s].term))))
        return headers

    def mark_loop_headers(self) -> None:
        headers = self.find_loop_headers()
        for blk in self.blocks.values():
            blk.loop_header = blk.id in headers

    # -- manifest form -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return (
            {
                "entry": self.entry,
                "inputs": list(self.inputs),
                "blocks": [_block_json(self.blocks[k]) for k in sorted(self.blocks)],
                "max_iterations": self.max_iterations,
                "decisions": {
                    n: {"line": d.line, "source": d.source} for n, d in self.decisions.items()
                },
            }
            | ({"dropped": list(self.dropped)} if self.dropped else {})
            | ({"outputs_vary": True} if self.outputs_vary else {})
        )

    @staticmethod
    def from_json(data: Any, where: str = "program") -> Program:
        """Parse and check a manifest program; BundleError names what is wrong."""
        d = Fields(data, where)
        blocks: dict[int, Block] = {}
        for i, raw in enumerate(d.list("blocks")):
            blk = _block_from_json(raw, f"{where}.blocks[{i}]")
            if blk.id in blocks:
                raise BundleError(f"{where}: block {blk.id} appears twice")
            blocks[blk.id] = blk
        prog = Program(
            entry=d.int("entry"),
            inputs=d.names("inputs"),
            blocks=blocks,
            max_iterations=d.int("max_iterations", DEFAULT_MAX_ITERATIONS),
            decisions={
                str(n): Decision(
                    Fields(v, f"{where}.decisions.{n}").get("line", (int, str)),
                    Fields(v, f"{where}.decisions.{n}").str("source"),
                )
                for n, v in d.dict("decisions", {}).items()
            },
            dropped=d.names("dropped", []),
            outputs_vary=d.bool("outputs_vary", False),
        )
        d.ignore("coverage", "input_specs", "output_specs", "output_names", "fixed_batch")
        d.done()
        prog.validate(where)
        return prog

    def validate(self, where: str = "program") -> None:
        if not 1 <= self.max_iterations <= MAX_ITERATIONS_LIMIT:
            raise BundleError(
                f"{where}: max_iterations {self.max_iterations} is outside "
                f"1..{MAX_ITERATIONS_LIMIT}"
            )
        if self.entry not in self.blocks:
            raise BundleError(f"{where}: entry block {self.entry} does not exist")
        for blk in self.blocks.values():
            for s in successors(blk.term):
                if s not in self.blocks:
                    raise BundleError(
                        f"{where}: block {blk.id} jumps to block {s}, which does not exist"
                    )
            if isinstance(blk.term, Switch) and not blk.term.cases:
                raise BundleError(f"{where}: block {blk.id} switches over no cases")
        # the loop bound counts header visits: recompute the headers rather than trust the file
        self.mark_loop_headers()


def _block_json(b: Block) -> dict[str, Any]:
    t = b.term
    if isinstance(t, Goto):
        nxt: dict[str, Any] = {"goto": t.target}
    elif isinstance(t, Branch):
        nxt = {"branch": t.cond, "then": t.then, "else": t.orelse}
    elif isinstance(t, Switch):
        nxt = {"switch": t.index, "cases": list(t.cases)}
    else:
        nxt = {"return": list(t.values)}
    out: dict[str, Any] = {
        "id": b.id,
        "graph": b.graph,
        "inputs": list(b.inputs),
        "outputs": list(b.outputs),
        "assign": {n: {"value": v.value, "dtype": v.dtype} for n, v in b.assign.items()},
        "moves": [[d, s] for d, s in b.moves],
        "next": nxt,
    }
    if b.lists:
        out["lists"] = [_list_op_json(op) for op in b.lists]
    if b.host_checks:
        out["host_checks"] = [_host_check_json(c) for c in b.host_checks]
    if b.loop_header:
        out["loop_header"] = True
    if b.source is not None:
        out["source"] = b.source
    return out


def _host_check_json(c: HostCheck) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": c.kind, "value": c.value, "message": c.message}
    out |= {"file": c.file, "line": c.line}
    for f in HOST_CHECK_KINDS[c.kind]:
        out[f] = getattr(c, f)
    return out


def _list_op_json(op: ListOp) -> dict[str, Any]:
    out: dict[str, Any] = {"op": op.op, "dst": op.dst}
    if op.op == "list":
        out["parts"] = [p if isinstance(p, str) else list(p) for p in op.parts]
    else:
        out["src"] = op.src
    if op.op in ("get", "stack", "cat"):
        out["index"] = op.index
    if op.where:
        out["where"] = op.where
    return out


def _list_op_from_json(raw: Any, where: str) -> ListOp:
    """A list op; fields of another op are refused like unknown ones."""
    f = Fields(raw, where)
    op = f.str("op")
    if op not in LIST_OPS:
        raise BundleError(f"{where}.op {op!r} is not one of {', '.join(LIST_OPS)}")
    parts: list[Any] = []
    src, index = "", 0
    if op == "list":
        for p in f.list("parts"):
            if isinstance(p, str):
                parts.append(p)
            elif (
                isinstance(p, list)
                and len(p) == 3
                and isinstance(p[0], str)
                and all(x is None or (type(x) is int) for x in p[1:])
            ):
                parts.append((p[0], p[1], p[2]))
            else:
                raise BundleError(f"{where}.parts holds {p!r}, not a name or [name, start, stop]")
    else:
        src = f.str("src")
    if op in ("get", "stack", "cat"):
        index = f.int("index")
    out = ListOp(op, f.str("dst"), src, tuple(parts), index, f.str("where", ""))
    f.done()
    return out


def _host_check_from_json(raw: Any, where: str) -> HostCheck:
    """A host check; fields of another kind are refused like unknown ones."""
    f = Fields(raw, where)
    kind = f.str("kind")
    if kind not in HOST_CHECK_KINDS:
        raise BundleError(f"{where}.kind {kind!r} is not one of {', '.join(HOST_CHECK_KINDS)}")
    value = f.get("value", (str, type(None)))
    if kind == "assert" and value is None:
        raise BundleError(f"{where}: an assert checks a value")
    extra: dict[str, Any] = {}
    if kind == "warn":
        extra["category"] = f.str("category")
        if extra["category"] not in WARNING_CLASSES:
            raise BundleError(f"{where}.category {extra['category']!r} is not a warning class")
        extra["module"] = f.str("module", "")
    elif kind == "log":
        extra["logger"] = f.str("logger")
        extra["level"] = f.int("level")
        if not 0 <= extra["level"] <= logging.CRITICAL:
            raise BundleError(f"{where}.level {extra['level']} is not a logging level")
    c = HostCheck(kind, value, f.str("message"), f.str("file"), f.int("line"), **extra)
    f.done()
    return c


_LITERAL_DTYPES = {"bool": bool, "int64": int, "float64": float}


def _block_from_json(raw: Any, where: str) -> Block:
    d = Fields(raw, where)
    nxt = Fields(d.dict("next"), f"{where}.next")
    if "goto" in nxt.data:
        term: Terminator = Goto(nxt.int("goto"))
    elif "branch" in nxt.data:
        term = Branch(nxt.str("branch"), nxt.int("then"), nxt.int("else"))
    elif "switch" in nxt.data:
        cases = nxt.list("cases")
        if not all(type(c) is int for c in cases):
            raise BundleError(f"{where}.next.cases must be block ids")
        term = Switch(nxt.str("switch"), tuple(cases))
    elif "return" in nxt.data:
        term = Return(tuple(nxt.names("return")))
    else:
        raise BundleError(f"{where}.next has no goto, branch, switch or return")
    nxt.done()
    assign = {}
    for name, lit in d.dict("assign", {}).items():
        f = Fields(lit, f"{where}.assign.{name}")
        dtype = f.str("dtype")
        if dtype not in _LITERAL_DTYPES:
            raise BundleError(f"{where}.assign.{name}: dtype {dtype!r} is not a host literal")
        value = f.get("value", (bool, int, float))
        f.done()
        assign[str(name)] = Literal(_LITERAL_DTYPES[dtype](value), dtype)
    moves = []
    for m in d.list("moves", []):
        if not (isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m)):
            raise BundleError(f"{where}.moves holds {m!r}, not a [dst, src] pair")
        moves.append((m[0], m[1]))
    graph = d.get("graph", (str, type(None)))
    blk = Block(
        id=d.int("id"),
        term=term,
        graph=graph,
        inputs=d.names("inputs"),
        outputs=d.names("outputs"),
        assign=assign,
        moves=moves,
        lists=[
            _list_op_from_json(op, f"{where}.lists[{i}]")
            for i, op in enumerate(d.list("lists", []))
        ],
        host_checks=[
            _host_check_from_json(c, f"{where}.host_checks[{i}]")
            for i, c in enumerate(d.list("host_checks", []))
        ],
        loop_header=bool(d.get("loop_header", bool, False)),
        source=d.get("source", str, None),
    )
    d.done()
    if graph is None and (blk.inputs or blk.outputs):
        raise BundleError(f"{where}: a block without a graph has graph inputs or outputs")
    return blk


# -- the interpreter -------------------------------------------------------------------------
class Observer(Protocol):
    """Sees a run: every block entered and every decision taken (coverage, traces, probes)."""

    def enter(self, block: Block, env: dict[str, Any]) -> None: ...

    def decide(self, block: Block, env: dict[str, Any], side: str) -> None: ...


class Interpreter:
    """Runs a Program over an environment of named values. Subclasses give the two hooks:
    `bind` (how a block's graph runs: a PyTorch function at build time, a compiled runner at run
    time) and `literal` (how a host constant becomes a value). `run` takes an optional Observer
    for decisions and visits (coverage, traces)."""

    def __init__(self, program: Program):
        self.program = program
        self.max_iterations = program.max_iterations
        headers = program.find_loop_headers()
        self._steps: dict[int, tuple] = {}
        for b, blk in program.blocks.items():
            t = blk.term
            kind = t.KIND
            arg = (
                t.target
                if kind == 0
                else (t.cond, t.then, t.orelse)
                if kind == 1
                else (t.index, t.cases)
                if kind == 2
                else t.values
            )
            self._steps[b] = (
                blk,
                self.bind(blk),
                list(blk.assign.items()),
                blk.moves,
                tuple(blk.lists),
                tuple(blk.host_checks),
                b in headers,
                kind,
                arg,
            )
        self._warned: dict[Any, Any] = {}  # warnings' "once per location" registry

    def bind(self, block: Block) -> Callable[[dict[str, Any]], None] | None:
        """Hook: a function running `block`'s graph over the environment (reading its inputs,
        setting its outputs), or None when it has no graph."""
        raise NotImplementedError

    def literal(self, lit: Literal) -> Any:
        """Hook: a host constant as a value of this interpreter."""
        raise NotImplementedError

    # Hook: a value as the host reads it (a decision, a check, a list join, a returned value):
    # the value itself, or a copy from the device where block outputs stay there between calls
    host: Callable[[Any], Any] | None = None

    def exceeded(self) -> Exception:
        return HypercompileError(
            f"program exceeded its bound of {self.max_iterations} loop iterations"
        )

    def list_op(self, op: ListOp, env: dict[str, Any]) -> Any:
        """The value one list op sets. A list is a Python list, copied on every change (no
        value is ever changed in place, so environments can share them)."""
        if op.op == "list":
            out: list[Any] = []
            for p in op.parts:
                if isinstance(p, str):
                    out.append(env[p])
                else:
                    out.extend(self._list(env, p[0], op)[p[1] : p[2]])
            return out
        items = self._list(env, op.src, op)
        if op.op == "len":
            return self.literal(Literal.of(len(items)))
        if op.op == "get":
            if not -len(items) <= op.index < len(items):
                raise self.list_error(op, f"index {op.index} is out of range for {len(items)}")
            return items[op.index]
        try:
            return self.join(items, op.index, op.op == "stack")
        except (ValueError, IndexError, TypeError, RuntimeError) as e:
            raise self.list_error(op, f"{op.op} of {len(items)} items: {e}") from None

    def _list(self, env: dict[str, Any], name: str, op: ListOp) -> list[Any]:
        items = env[name]
        if type(items) is not list:
            raise self.list_error(op, f"value {name!r} is not a list")
        return items

    def join(self, items: list[Any], dim: int, stack: bool) -> Any:
        """Hook: `torch.stack(items, dim)` (or `torch.cat` when not `stack`) in this
        interpreter's arrays; numpy here."""
        if not items:
            raise ValueError("expected a non-empty list")
        host = self.host or _same
        arrays = [np.asarray(host(a)) for a in items]
        return np.stack(arrays, axis=dim) if stack else np.concatenate(arrays, axis=dim)

    def list_error(self, op: ListOp, why: str) -> Exception:
        where = f"{op.where}: " if op.where else ""
        return HypercompileError(f"{where}a list whose length depends on the path: {why}")

    def check(self, c: HostCheck, env: dict[str, Any]) -> None:
        """Make one host check: raise `failed(c)` for a failing assert, `notify(c)` for a
        warning or log line whose condition holds."""
        host = self.host or _same
        holds = True if c.value is None else bool(host(env[c.value]))
        if c.kind == "assert":
            if not holds:
                raise self.failed(c)
        elif holds:
            self.notify(c)

    def failed(self, c: HostCheck) -> Exception:
        return ModelAssertionError(f"{c.file}:{c.line}: assertion failed: {c.message}")

    def notify(self, c: HostCheck) -> None:
        """Issue the warning or log line as `forward` does, at its source location."""
        if c.kind == "warn":
            category = WARNING_CLASSES[c.category]
            module = c.module or c.file.removesuffix(".py")  # as Python names it from the file
            warnings.warn_explicit(c.message, category, c.file, c.line, module, self._warned)
            return
        logger = logging.getLogger(c.logger)
        if logger.isEnabledFor(c.level):
            logger.handle(
                logger.makeRecord(logger.name, c.level, c.file, c.line, c.message, (), None)
            )

    def run(
        self,
        env: dict[str, Any],
        *,
        start: int | None = None,
        observer: Observer | None = None,
    ) -> list[Any]:
        """Run from the entry (or block `start`) until a Return; returns its values. `env` is
        updated in place with every value the program sets."""
        steps, literal = self._steps, self.literal
        host = self.host or _same
        b = self.program.entry if start is None else start
        visits = 0
        while True:
            blk, call, assign, moves, lists, checks, header, kind, arg = steps[b]
            if observer is not None:
                observer.enter(blk, env)
            if call is not None:
                call(env)
            for n, lit in assign:
                env[n] = literal(lit)
            for dst, src in moves:
                env[dst] = env[src]
            for op in lists:
                env[op.dst] = self.list_op(op, env)
            for c in checks:
                self.check(c, env)
            if kind == 3:
                return [env[n] for n in arg]
            if header:
                visits += 1
                if visits > self.max_iterations:
                    raise self.exceeded()
            if kind == 0:
                b = arg
            elif kind == 1:
                taken = bool(host(env[arg[0]]))
                if observer is not None:
                    observer.decide(blk, env, "then" if taken else "else")
                b = arg[1] if taken else arg[2]
            else:
                cases = arg[1]
                i = int(host(env[arg[0]]))
                if not -len(cases) <= i < len(cases):
                    raise HypercompileError(
                        f"dispatch index {i} out of range for {len(cases)} alternatives"
                    )
                i %= len(cases)
                if observer is not None:
                    observer.decide(blk, env, str(i))
                b = cases[i]


def _same(value: Any) -> Any:
    return value


class Coverage:
    """An Observer counting the sides every branch and switch block took."""

    def __init__(self) -> None:
        self.counts: dict[int, dict[str, int]] = {}

    def enter(self, block: Block, env: dict[str, Any]) -> None:
        pass

    def decide(self, block: Block, env: dict[str, Any], side: str) -> None:
        c = self.counts.setdefault(block.id, {})
        c[side] = c.get(side, 0) + 1


class Trace:
    """An Observer recording the id of every block a run enters, in order."""

    def __init__(self) -> None:
        self.blocks: list[int] = []

    def enter(self, block: Block, env: dict[str, Any]) -> None:
        self.blocks.append(block.id)

    def decide(self, block: Block, env: dict[str, Any], side: str) -> None:
        pass


def source_coverage(program: Program, counts: dict[int, dict[str, int]]) -> dict[str, Any]:
    """Per source-level decision (copies made by tail duplication counted together): how often
    each side or case was taken, with the line and text of the test."""
    out: dict[str, Any] = {}
    for name, info in program.decisions.items():
        taken: dict[str, int] = {}
        branches = [
            b
            for b in program.blocks.values()
            if (isinstance(b.term, Branch) and b.term.cond == name)
            or (isinstance(b.term, Switch) and b.term.index == name)
        ]
        if any(isinstance(b.term, Branch) for b in branches):
            taken = {"then": 0, "else": 0}
        for b in branches:
            for side, n in counts.get(b.id, {}).items():
                taken[side] = taken.get(side, 0) + n
        out[name] = {"line": info.line, "source": info.source, "taken": taken}
    return out


def untaken_sides(program: Program, counts: dict[int, dict[str, int]]) -> list[tuple[str, str]]:
    """(decision, side) pairs no run took: `then`/`else` of a branch, case `i` of a switch."""
    out = []
    for name in program.decisions:
        blocks = [
            b
            for b in program.blocks.values()
            if (isinstance(b.term, Branch) and b.term.cond == name)
            or (isinstance(b.term, Switch) and b.term.index == name)
        ]
        if not blocks:
            continue
        t = blocks[0].term
        sides = ("then", "else") if isinstance(t, Branch) else tuple(map(str, range(len(t.cases))))
        seen = {side for b in blocks for side, n in counts.get(b.id, {}).items() if n}
        out += [(name, side) for side in sides if side not in seen]
    return out


class ArrayLiterals:
    """Host literals as read-only numpy arrays, made once (the run-time `literal` hook)."""

    def __init__(self) -> None:
        self._cache: dict[Literal, np.ndarray] = {}

    def __call__(self, lit: Literal) -> np.ndarray:
        arr = self._cache.get(lit)
        if arr is None:
            arr = np.asarray(lit.value, dtype=lit.dtype)
            arr.flags.writeable = False
            self._cache[lit] = arr
        return arr
