"""Split a module's unmodified `forward` into straight-line blocks and a control-flow graph.

A partial evaluator walks the AST of `forward` (and of the methods and submodules it calls that
have data-dependent control flow) with two kinds of names: *static* ones, whose Python values
are known at build time (the module, its attributes, loop counters of unrolled loops, lists
built with `append`), and *dynamic* ones, computed from tensors at run time. Static `if`s are
decided, loops over static iterables unrolled, static subexpressions replaced by their values;
what depends on tensors is emitted into blocks, and data-dependent `if` / `while` / `break` /
early `return` / `container[int(index)]` become branches, back edges, exits and switches.
"""

from __future__ import annotations

import ast
import builtins
import copy
import inspect
import textwrap
import types
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.ir import Branch, Goto, Return, Switch, Terminator
from ..errors import UnsupportedModelError

MAX_UNROLL = 10_000
STATE_PREFIX = "__st_"  # program values standing for module attributes that forward assigns
_SCALARS = (bool, int, float)
_SIDE_EFFECTS = {"print", "input", "open", "exec", "eval", "breakpoint", "setattr", "delattr"}
_PURE_BUILTINS = {
    "len", "range", "enumerate", "zip", "isinstance", "issubclass", "getattr", "hasattr",
    "int", "float", "bool", "str", "min", "max", "abs", "round", "tuple", "list", "dict",
    "reversed", "sorted", "sum", "any", "all", "type", "divmod", "pow",
}  # fmt: skip


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


@dataclass
class Poisoned:
    """A name whose value differs between data-dependent paths in a way the host cannot carry."""

    reason: str


@dataclass
class Env:
    static: dict[str, Any] = field(default_factory=dict)
    dynamic: set[str] = field(default_factory=set)

    def copy(self) -> Env:
        memo: dict[int, Any] = {}
        static = {}
        for k, v in self.static.items():
            if isinstance(v, SymList):
                v = memo.setdefault(id(v), SymList(list(v.items)))
            static[k] = v
        return Env(static, set(self.dynamic))

    def set_dynamic(self, name: str) -> None:
        self.static.pop(name, None)
        self.dynamic.add(name)

    def set_static(self, name: str, value: Any) -> None:
        self.dynamic.discard(name)
        self.static[name] = value


@dataclass
class Block:
    id: int
    stmts: list[ast.stmt] = field(default_factory=list)
    assign: dict[str, Any] = field(default_factory=dict)  # host literals, set after stmts
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
    rets: list[tuple[St, Any]] = field(default_factory=list)  # (state, static value or _DYN)
    stack: tuple[Any, ...] = ()

    def prog(self, name: str) -> str:
        if name.startswith(STATE_PREFIX):
            return name  # module state cells are program-wide
        return f"{name}{self.prefix}" if self.prefix else name


@dataclass
class Loop:
    breaks: list[St] = field(default_factory=list)
    continues: list[St] = field(default_factory=list)


_DYN = object()  # marks a dynamic return value


class Unsupported(UnsupportedModelError):
    """The splitter cannot lower a construct; the whole-graph exporter may still manage it."""

    hard = False


class HardUnsupported(Unsupported):
    """A construct no compiled artifact can reproduce (side effects, recursion, generators):
    the build fails even when the whole-graph exporter would trace past it."""

    hard = True


def _loc(frame: Frame, node: ast.AST) -> str:
    return f"{frame.filename}:{getattr(node, 'lineno', '?')}"


def function_ast(fn: Any) -> tuple[ast.FunctionDef, str, dict[str, Any]]:
    """The AST of a Python function with line numbers of its file."""
    fn = inspect.unwrap(fn)
    func = getattr(fn, "__func__", fn)
    try:
        lines, start = inspect.getsourcelines(func)
        filename = inspect.getsourcefile(func) or "<unknown>"
    except (OSError, TypeError) as e:
        name = getattr(fn, "__qualname__", fn)
        raise Unsupported(f"cannot read the source of {name}: {e}") from None
    tree = ast.parse(textwrap.dedent("".join(lines)))
    ast.increment_lineno(tree, start - 1)
    node = tree.body[0]
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise Unsupported(f"{filename}:{start}: expected a function definition")
    if isinstance(node, ast.AsyncFunctionDef):
        raise Unsupported(f"{filename}:{start}: async functions are not supported")
    return node, filename, func.__globals__


def _bound_names(node: ast.AST) -> set[str]:
    """Names bound inside comprehensions and lambdas (their own scopes)."""
    out: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.comprehension):
            out |= {t.id for t in ast.walk(n.target) if isinstance(t, ast.Name)}
        elif isinstance(n, ast.Lambda):
            out |= {a.arg for a in n.args.args}
    return out


def _free_names(node: ast.AST) -> set[str]:
    bound = _bound_names(node)
    return {
        n.id for n in ast.walk(node)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in bound
    }  # fmt: skip


def _assigned_names(stmts: list[ast.stmt]) -> set[str]:
    out: set[str] = set()
    for s in stmts:
        for n in ast.walk(s):
            if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
                out.add(n.id)
            elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
                recv = n.func.value
                if isinstance(recv, ast.Name) and (
                    n.func.attr.endswith("_") or n.func.attr in ("append", "extend", "insert")
                ):
                    out.add(recv.id)
    return out - _bound_names(ast.Module(body=stmts, type_ignores=[]))


def has_control_flow(stmts: list[ast.stmt]) -> bool:
    return any(
        isinstance(n, (ast.If, ast.While, ast.For, ast.Break, ast.Continue, ast.Return))
        for s in stmts
        for n in ast.walk(s)
    )


class Lowerer:
    """Lowers `root.forward` into blocks; see the module docstring."""

    def __init__(self, root: torch.nn.Module):
        self.root = root
        self.blocks: list[Block] = []
        self.consts: list[Any] = []
        self._counter = 0
        self.module_paths = {id(m): n for n, m in root.named_modules()}
        self.tensor_paths = {id(t): n for n, t in root.named_parameters()}
        self.tensor_paths |= {id(t): n for n, t in root.named_buffers()}
        self._inline_cache: dict[int, bool] = {}
        self.globals: dict[str, Any] = {}  # global names the blocks use, shared by all blocks
        self.decisions: dict[str, tuple[int, str]] = {}  # predicate/index name -> (line, source)
        self.cells: dict[tuple[int, str], str] = {}  # (module id, attribute) -> program name

    # -- bookkeeping ---------------------------------------------------------------------------
    def new_block(self) -> Block:
        b = Block(len(self.blocks))
        self.blocks.append(b)
        return b

    def fresh(self, stem: str) -> str:
        self._counter += 1
        return f"__{stem}{self._counter}"

    def const_ref(self, value: Any) -> ast.expr:
        for i, c in enumerate(self.consts):
            if c is value:
                return _subscript("__c", i)
        self.consts.append(value)
        return _subscript("__c", len(self.consts) - 1)

    # -- entry ---------------------------------------------------------------------------------
    def lower_forward(self) -> tuple[Block, list[str]]:
        fn = type(self.root).forward
        node, filename, globs = function_ast(fn)
        frame = Frame(globs, filename, "", None, stack=(fn,))
        for n in ast.walk(node):
            if isinstance(n, (ast.Yield, ast.YieldFrom)):
                raise HardUnsupported(f"{_loc(frame, n)}: forward is a generator (yield)")
            if isinstance(n, (ast.Global, ast.Nonlocal)):
                raise HardUnsupported(f"{_loc(frame, n)}: global/nonlocal state in forward")
        params = self._params(node, frame)
        if not params or params[0] != "self":
            raise Unsupported(f"{_loc(frame, node)}: forward must be a method taking self")
        env = Env({"self": self.root})
        inputs = params[1:]
        for p in inputs:
            env.dynamic.add(p)
        entry = self.new_block()
        end = self.lower_body(node.body, St(entry, env), frame, None)
        if end is not None:  # fell off the end: returns None
            raise Unsupported(f"{_loc(frame, node)}: forward can end without returning a value")
        return entry, inputs

    def _params(self, node: ast.FunctionDef, frame: Frame) -> list[str]:
        a = node.args
        if a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs:
            raise Unsupported(
                f"{_loc(frame, node)}: *args, **kwargs and keyword-only "
                "parameters are not supported in split functions"
            )
        return [x.arg for x in a.args]

    # -- statements ----------------------------------------------------------------------------
    def lower_body(self, stmts, st: St | None, frame: Frame, loop: Loop | None) -> St | None:
        """Lower a statement list; static break/continue are handed to the loop as states."""
        for stmt in stmts:
            if st is None:
                return None
            res = self.lower_stmt(stmt, st, frame, loop)
            if isinstance(res, tuple):  # ("break" | "continue", state)
                kind, s = res
                if loop is None:
                    raise Unsupported(f"{_loc(frame, stmt)}: {kind} outside a loop")
                (loop.breaks if kind == "break" else loop.continues).append(s)
                return None
            st = res
        return st

    def lower_stmt(self, stmt: ast.stmt, st: St, frame: Frame, loop: Loop | None):
        if isinstance(stmt, ast.If):
            return self.lower_if(stmt, st, frame, loop)
        if isinstance(stmt, ast.For):
            return self.lower_for(stmt, st, frame, loop)
        if isinstance(stmt, ast.While):
            return self.lower_while(stmt, st, frame, loop)
        if isinstance(stmt, ast.Break):
            return ("break", st)
        if isinstance(stmt, ast.Continue):
            return ("continue", st)
        if isinstance(stmt, ast.Return):
            return self.lower_return(stmt, st, frame)
        if isinstance(stmt, ast.Pass):
            return st
        if isinstance(stmt, ast.With):
            return self.lower_with(stmt, st, frame, loop)
        if isinstance(stmt, ast.Assert):
            ok, value = self.static_eval(stmt.test, st.env, frame)
            if not ok:
                raise Unsupported(f"{_loc(frame, stmt)}: assert on a data-dependent value")
            if not value:
                raise Unsupported(f"{_loc(frame, stmt)}: assertion fails at build time")
            return st
        if isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr)):
            return self.lower_simple(stmt, st, frame)
        names = {
            ast.Try: "try/except", ast.Raise: "raise", ast.Global: "global", ast.Nonlocal:
            "nonlocal", ast.FunctionDef: "a nested function", ast.ClassDef: "a class definition",
            ast.Delete: "del", ast.Import: "import", ast.ImportFrom: "import",
        }  # fmt: skip
        what = names.get(type(stmt), type(stmt).__name__)
        raise Unsupported(f"{_loc(frame, stmt)}: {what} is not supported in a split forward")

    def lower_with(self, stmt: ast.With, st: St, frame: Frame, loop: Loop | None):
        for item in stmt.items:
            ok, ctx = self.static_eval(item.context_expr, st.env, frame)
            if not ok or not isinstance(ctx, (torch.no_grad, torch.inference_mode)):
                raise Unsupported(f"{_loc(frame, stmt)}: only `with torch.no_grad()` is supported")
        return self._static_branch(stmt.body, st, frame, loop)

    def lower_if(self, stmt: ast.If, st: St, frame: Frame, loop: Loop | None):
        stmt = _with_test(stmt, self.state_cells(stmt.test, st.env, frame))
        if self.find_special_call(ast.Expr(stmt.test), st.env, frame) is not None:
            # a call to inline or dispatch inside the test: evaluate it first, then branch
            local = self.fresh("test")
            assign = ast.copy_location(ast.Assign([ast.Name(local, ast.Store())], stmt.test), stmt)
            st = self.lower_simple(assign, st, frame)
            if st is None:
                return None
            stmt = _with_test(stmt, ast.copy_location(ast.Name(local, ast.Load()), stmt.test))
        ok, value = self.static_eval(stmt.test, st.env, frame)
        if ok:
            return self._static_branch(stmt.body if value else stmt.orelse, st, frame, loop)
        pred = self.emit_predicate(stmt.test, st, frame)
        then_b, else_b = self.new_block(), self.new_block()
        st.block.term = Branch(pred, then_b.id, else_b.id)
        outs = [
            self.lower_body(stmt.body, St(then_b, st.env.copy()), frame, loop),
            self.lower_body(stmt.orelse, St(else_b, st.env.copy()), frame, loop),
        ]
        return self.join([o for o in outs if o is not None], frame, stmt)

    def _static_branch(self, body, st: St, frame: Frame, loop: Loop | None):
        """Lower a statically chosen branch; pass a static break/continue up unchanged."""
        for stmt in body:
            res = self.lower_stmt(stmt, st, frame, loop)
            if isinstance(res, tuple) or res is None:
                return res
            st = res
        return st

    def lower_for(self, stmt: ast.For, st: St, frame: Frame, loop: Loop | None):
        ok, iterable = self.static_eval(stmt.iter, st.env, frame)
        if not ok:
            if not has_control_flow(stmt.body) and not stmt.orelse:
                return self.emit(stmt, st, frame)  # traced by the exporter as it stands
            raise Unsupported(
                f"{_loc(frame, stmt)}: a loop over a data-dependent iterable with control flow "
                "inside cannot be split"
            )
        if isinstance(iterable, SymList):
            items = [self._symitem(it, frame) for it in iterable.items]
        else:
            try:
                items = list(iterable)
            except TypeError:
                what = type(iterable).__name__
                raise Unsupported(f"{_loc(frame, stmt)}: cannot iterate over {what}") from None
        if len(items) > MAX_UNROLL:
            raise Unsupported(f"{_loc(frame, stmt)}: loop of {len(items)} > {MAX_UNROLL} steps")
        inner = Loop()
        cur: St | None = st
        broke = False
        for item in items:
            if cur is None:
                break
            self.bind_target(stmt.target, item, cur, frame)
            res = self._static_branch(stmt.body, cur, frame, inner)
            if isinstance(res, tuple):
                kind, s = res
                if kind == "break":
                    inner.breaks.append(s)
                    cur, broke = None, True
                    break
                res = s
            conts, inner.continues = inner.continues, []
            cur = self.join([s for s in [res, *conts] if s is not None], frame, stmt)
        if stmt.orelse:
            if inner.breaks or broke:
                raise Unsupported(f"{_loc(frame, stmt)}: for/else with break is not supported")
            cur = self.lower_body(stmt.orelse, cur, frame, loop)
        return self.join([s for s in [cur, *inner.breaks] if s is not None], frame, stmt)

    def _symitem(self, item: tuple[str, Any], frame: Frame) -> Any:
        if item[0] == "s":
            return item[1]
        return _DynRef(item[1])

    def lower_while(self, stmt: ast.While, st: St, frame: Frame, loop: Loop | None):
        stmt = _with_test(stmt, self.state_cells(stmt.test, st.env, frame))
        if stmt.orelse:
            raise Unsupported(f"{_loc(frame, stmt)}: while/else is not supported")
        has_break = any(isinstance(n, ast.Break) for s in stmt.body for n in ast.walk(s))
        cur: St | None = st
        for _ in range(MAX_UNROLL):  # a static condition without break: unroll
            ok, value = self.static_eval(stmt.test, cur.env, frame)
            if not ok or has_break:
                break
            if not value:
                return cur
            inner = Loop()
            res = self._static_branch(stmt.body, cur, frame, inner)
            if isinstance(res, tuple):
                res = res[1]
            cur = self.join([s for s in [res, *inner.continues] if s is not None], frame, stmt)
            if cur is None:
                return None
        else:
            raise Unsupported(f"{_loc(frame, stmt)}: static while loop runs > {MAX_UNROLL} times")
        return self._dynamic_while(stmt, cur, frame)

    def _dynamic_while(self, stmt: ast.While, st: St, frame: Frame):
        assigned = _assigned_names(stmt.body)
        pre = st
        kept: dict[str, Any] = {}
        for name in assigned:
            value = pre.env.static.get(name, _MISSING)
            if value is _MISSING:
                continue
            if isinstance(value, _SCALARS) or value is None:
                self.demote(name, pre, frame, stmt)
            elif isinstance(value, SymList):
                pre.env.static[name] = Poisoned(f"list `{name}` grows inside a data-dependent loop")
            else:
                kept[name] = value
        header = self.new_block()
        pre.block.term = Goto(header.id)
        henv = pre.env.copy()
        for name in assigned - set(kept):
            if not isinstance(henv.static.get(name), Poisoned):
                henv.set_dynamic(name)
        hst = St(header, henv)
        ok, value = self.static_eval(stmt.test, henv, frame)
        body_b, exit_b = self.new_block(), self.new_block()
        if ok:
            header.term = Goto(body_b.id if value else exit_b.id)
        else:
            pred = self.emit_predicate(stmt.test, hst, frame)
            header.term = Branch(pred, body_b.id, exit_b.id)
        inner = Loop()
        end = self.lower_body(stmt.body, St(body_b, henv.copy()), frame, inner)
        for s in [end, *inner.continues]:
            if s is None:
                continue
            for name, value in kept.items():
                if s.env.static.get(name, _MISSING) is not value:
                    raise Unsupported(
                        f"{_loc(frame, stmt)}: `{name}` changes inside a data-dependent loop"
                    )
            for name in assigned:
                v = s.env.static.get(name, _MISSING)
                if v is not _MISSING and name not in kept and not isinstance(v, Poisoned):
                    self.demote(name, s, frame, stmt)
            s.block.term = Goto(header.id)
        exit_env = henv.copy()
        return self.join([St(exit_b, exit_env), *inner.breaks], frame, stmt)

    def lower_return(self, stmt: ast.Return, st: St, frame: Frame):
        value_node = stmt.value if stmt.value is not None else ast.Constant(None)
        local = self.fresh("ret")
        assign = ast.copy_location(ast.Assign([ast.Name(local, ast.Store())], value_node), stmt)
        end = self.lower_simple(assign, st, frame)  # dispatch / inlining inside the value
        if end is None:
            return None
        static = end.env.static.get(local, _MISSING)
        if (
            frame.ret_name is not None
            and static is not _MISSING
            and not isinstance(static, torch.Tensor)
        ):
            frame.rets.append((end, static))
            return None
        target = frame.ret_name or frame.prog(local)
        if static is not _MISSING or frame.ret_name is not None:
            self.emit(
                ast.Assign([ast.Name(target, ast.Store())], ast.Name(local, ast.Load())),
                end,
                frame,
                program_targets=True,
                node=stmt,
            )
        if frame.ret_name is None:
            end.block.term = Return((target,))
        else:
            frame.rets.append((end, _DYN))
        return None

    # -- simple statements ---------------------------------------------------------------------
    def lower_simple(self, stmt: ast.stmt, st: St, frame: Frame):
        stmt = self.state_cells(stmt, st.env, frame)
        special = self.find_special_call(stmt, st.env, frame)
        if special is not None:
            kind, node, payload = special
            if kind == "switch":
                return self.lower_switch(stmt, node, payload, st, frame)
            return self.lower_inline_call(stmt, node, payload, st, frame)
        if isinstance(stmt, ast.Expr):
            return self.lower_expr_stmt(stmt, st, frame)
        if isinstance(stmt, ast.AugAssign):
            target = stmt.target
            if isinstance(target, ast.Name) and target.id in st.env.static:
                binop = ast.BinOp(ast.Name(target.id, ast.Load()), stmt.op, stmt.value)
                ast.copy_location(binop, stmt)
                assign = ast.Assign([ast.Name(target.id, ast.Store())], binop)
                return self.lower_simple(ast.copy_location(assign, stmt), st, frame)
            return self.emit(stmt, st, frame)
        if isinstance(stmt, ast.AnnAssign):
            if stmt.value is None:
                return st
            assign = ast.copy_location(ast.Assign([stmt.target], stmt.value), stmt)
            return self.lower_simple(assign, st, frame)
        assert isinstance(stmt, ast.Assign)
        for t in stmt.targets:
            self._check_store_target(t, st.env, frame)
        if all(_is_name_target(t) for t in stmt.targets):
            ok, value = self.static_eval(stmt.value, st.env, frame, allow_list=True)
            if ok and not isinstance(value, torch.Tensor):
                for t in stmt.targets:
                    self.bind_target(t, value, st, frame)
                return st
        return self.emit(stmt, st, frame)

    def lower_expr_stmt(self, stmt: ast.Expr, st: St, frame: Frame):
        call = stmt.value
        if isinstance(call, ast.Constant):
            return st  # a docstring or a bare constant
        if isinstance(call, (ast.Yield, ast.YieldFrom, ast.Await)):
            raise HardUnsupported(f"{_loc(frame, stmt)}: generators (yield) are not supported")
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute):
            recv = call.func.value
            if isinstance(recv, ast.Name) and isinstance(st.env.static.get(recv.id), SymList):
                return self.lower_list_method(call, st.env.static[recv.id], st, frame)
            if isinstance(recv, ast.Name) and isinstance(st.env.static.get(recv.id), Poisoned):
                if call.func.attr in ("append", "extend"):
                    return st  # stays unusable; an error only if it is read later
        if isinstance(call, ast.Call):
            ok, fn = self.static_eval(call.func, st.env, frame)
            if ok and getattr(fn, "__name__", "") in _SIDE_EFFECTS | {"info", "debug", "warning"}:
                raise HardUnsupported(
                    f"{_loc(frame, stmt)}: side effect `{ast.unparse(call.func)}`"
                    " in forward cannot be compiled"
                )
            if isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name):
                if call.func.value.id in st.env.dynamic:
                    return self.emit(stmt, st, frame)  # e.g. x.add_(1): mutates a tensor
        raise Unsupported(
            f"{_loc(frame, stmt)}: expression statement `{ast.unparse(stmt)[:60]}` has effects "
            "hypercompile cannot reproduce"
        )

    def lower_list_method(self, call: ast.Call, lst: SymList, st: St, frame: Frame):
        method = call.func.attr  # type: ignore[attr-defined]
        if method not in ("append", "extend") or len(call.args) != 1 or call.keywords:
            raise Unsupported(f"{_loc(frame, call)}: list method {method} is not supported")
        arg = call.args[0]
        ok, value = self.static_eval(arg, st.env, frame, allow_list=True)
        if method == "append":
            if ok and not isinstance(value, torch.Tensor):
                lst.items.append(("s", value))
            else:
                name = self.fresh("item")
                self.emit(
                    ast.Assign([ast.Name(name, ast.Store())], arg),
                    st,
                    frame,
                    program_targets=True,
                    node=call,
                )
                lst.items.append(("d", name))
            return st
        if ok and isinstance(value, SymList):
            lst.items.extend(value.items)
        elif ok and isinstance(value, (list, tuple)):
            lst.items.extend(("s", v) for v in value)
        else:
            raise Unsupported(f"{_loc(frame, call)}: extend with a data-dependent list")
        return st

    def _check_store_target(self, t: ast.expr, env: Env, frame: Frame) -> None:
        for n in ast.walk(t):
            if isinstance(n, (ast.Attribute, ast.Subscript)) and isinstance(n.ctx, ast.Store):
                base = n.value
                while isinstance(base, (ast.Attribute, ast.Subscript)):
                    base = base.value
                if not (isinstance(base, ast.Name) and base.id in env.dynamic):
                    raise HardUnsupported(
                        f"{_loc(frame, t)}: assigning to `{ast.unparse(n)}` mutates "
                        "module or build-time state"
                    )

    def bind_target(self, target: ast.expr, value: Any, st: St, frame: Frame) -> None:
        if isinstance(target, ast.Name):
            if isinstance(value, _DynRef):
                st.env.set_dynamic(target.id)
                self._alias(target.id, value.name, st, frame)
            else:
                st.env.set_static(target.id, value)
            return
        if isinstance(target, (ast.Tuple, ast.List)):
            if isinstance(value, SymList):
                value = [self._symitem(it, frame) for it in value.items]
            try:
                values = list(value)
            except TypeError:
                what = type(value).__name__
                raise Unsupported(f"{_loc(frame, target)}: cannot unpack {what}") from None
            if len(values) != len(target.elts):
                raise Unsupported(
                    f"{_loc(frame, target)}: unpacking {len(values)} values into "
                    f"{len(target.elts)} names"
                )
            for t, v in zip(target.elts, values):
                self.bind_target(t, v, st, frame)
            return
        raise Unsupported(f"{_loc(frame, target)}: unsupported assignment target")

    def _alias(self, local: str, program_name: str, st: St, frame: Frame) -> None:
        """Make `local` (dynamic) refer to an existing program value."""
        if frame.prog(local) != program_name:
            stmt = ast.Assign(
                [ast.Name(frame.prog(local), ast.Store())], ast.Name(program_name, ast.Load())
            )
            st.block.stmts.append(stmt)

    def demote(self, name: str, st: St, frame: Frame, node: ast.AST) -> None:
        """A static scalar whose value now depends on the path: the host carries it."""
        value = st.env.static[name]
        if not (isinstance(value, _SCALARS) or value is None):
            raise Unsupported(
                f"{_loc(frame, node)}: `{name}` ({type(value).__name__}) would "
                "depend on a data-dependent path"
            )
        if value is None:
            raise Unsupported(f"{_loc(frame, node)}: `{name}` is None on some data-dependent paths")
        st.block.assign[frame.prog(name)] = value
        st.env.set_dynamic(name)

    # -- joins ---------------------------------------------------------------------------------
    def join(self, states: list[St], frame: Frame, node: ast.AST) -> St | None:
        if not states:
            return None
        if len(states) == 1:
            return states[0]
        names = set().union(*(set(s.env.static) | s.env.dynamic for s in states))
        merged = Env()
        for name in sorted(names):
            vals = [
                s.env.static.get(name, _DYN if name in s.env.dynamic else _MISSING) for s in states
            ]
            if any(v is _MISSING for v in vals):
                merged.static[name] = Poisoned(f"`{name}` is not defined on every path")
                continue
            first = vals[0]
            if all(v is not _DYN and _same(v, first) for v in vals):
                merged.static[name] = first
            elif any(isinstance(v, (SymList, Poisoned)) for v in vals):
                merged.static[name] = Poisoned(f"`{name}` differs between data-dependent paths")
            elif all(v is _DYN or isinstance(v, _SCALARS) for v in vals):
                for s, v in zip(states, vals):
                    if v is not _DYN:
                        self.demote(name, s, frame, node)
                merged.dynamic.add(name)
            else:
                merged.static[name] = Poisoned(f"`{name}` differs between data-dependent paths")
        j = self.new_block()
        for s in states:
            s.block.term = Goto(j.id)
        return St(j, merged)

    # -- module state assigned in forward ------------------------------------------------------
    def state_cells(self, node: ast.AST, env: Env, frame: Frame) -> Any:
        """Attributes of modules that forward assigns (`self.hidden = ...`, SkipNet's recurrent
        gate) become program values: a store creates the cell, later loads read it."""

        def cell(attr_node: ast.Attribute, create: bool) -> str | None:
            if not (
                isinstance(attr_node.value, (ast.Name, ast.Attribute))
                and not (_free_names(attr_node.value) & env.dynamic)
            ):
                return None
            ok, obj = self.static_eval(attr_node.value, env, frame)
            if not ok or not isinstance(obj, torch.nn.Module):
                return None
            attr = attr_node.attr
            if attr in obj._parameters or attr in obj._buffers or attr in obj._modules:
                return None
            key = (id(obj), attr)
            if create and key not in self.cells:
                self.cells[key] = f"{STATE_PREFIX}{len(self.cells)}_{attr}"
            return self.cells.get(key)

        def walk(n: Any) -> Any:
            if isinstance(n, ast.Attribute):
                name = cell(n, isinstance(n.ctx, ast.Store))
                if name is not None:
                    return ast.copy_location(ast.Name(name, n.ctx), n)
            if isinstance(n, (ast.Assign, ast.AugAssign)):
                stores = [
                    t
                    for t in ast.walk(n)
                    if isinstance(t, ast.Attribute) and isinstance(t.ctx, ast.Store)
                ]
                reads = {ast.unparse(t) for t in ast.walk(n.value) if isinstance(t, ast.Attribute)}
                for t in stores:
                    new_cell = cell(t, False) is None and cell(t, True) is not None
                    if new_cell and (isinstance(n, ast.AugAssign) or ast.unparse(t) in reads):
                        raise HardUnsupported(
                            f"{_loc(frame, n)}: `{ast.unparse(t)}` is read before forward "
                            "assigns it: module state carried between calls cannot be compiled"
                        )
            if not isinstance(n, ast.AST):
                return n
            clone = copy.copy(n)
            for fname, value in ast.iter_fields(n):
                if isinstance(value, list):
                    setattr(clone, fname, [walk(v) for v in value])
                elif isinstance(value, ast.AST):
                    setattr(clone, fname, walk(value))
            return clone

        if not self.cells and not any(
            isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store) for n in ast.walk(node)
        ):
            return node  # the common case: no module state involved
        return walk(node)

    # -- calls that need splitting -------------------------------------------------------------
    def find_special_call(self, stmt: ast.stmt, env: Env, frame: Frame):
        """The first call in `stmt` that must be dispatched (container[dynamic index]) or inlined
        (a user function or submodule whose own forward has data-dependent control flow)."""
        for node in ast.walk(stmt):
            try:
                if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
                    if _free_names(node.slice) & env.dynamic:
                        ok, container = self.static_eval(node.value, env, frame)
                        if ok and _is_dispatch_container(container):
                            return ("switch", node, container)
                if isinstance(node, ast.Call):
                    ok, fn = self.static_eval(node.func, env, frame)
                    if ok and self.needs_inline(fn, frame):
                        return ("inline", node, fn)
            except Unsupported:
                continue  # reading a poisoned name: reported where the value is used
        return None

    def needs_inline(self, fn: Any, frame: Frame) -> bool:
        target = _python_target(fn)
        if target is None:
            return False
        key = id(target)
        if key not in self._inline_cache:
            self._inline_cache[key] = False  # recursion guard during the trial
            try:
                node, filename, globs = function_ast(target)
            except Unsupported:
                return False
            if any(
                isinstance(n, ast.Attribute)
                and isinstance(n.ctx, ast.Store)
                and isinstance(n.value, ast.Name)
                and n.value.id == "self"
                for n in ast.walk(node)
            ):
                self._inline_cache[key] = True  # it assigns module state: inline so it flows
                return True
            trial = Lowerer(self.root)
            trial._inline_cache = self._inline_cache  # shared: guards against recursion
            trial_frame = Frame(globs, filename, "_trial", "__trial_ret", stack=(target,))
            params = [a.arg for a in node.args.args]
            env = Env()
            if isinstance(fn, torch.nn.Module) or inspect.ismethod(fn):
                params = params[1:]
                env.static["self"] = fn if isinstance(fn, torch.nn.Module) else fn.__self__
            env.dynamic |= set(params)
            b = trial.new_block()
            try:
                end = trial.lower_body(node.body, St(b, env), trial_frame, None)
                dynamic = len(trial.blocks) > 1 or end is None and len(trial_frame.rets) > 1
                dynamic = dynamic or any(
                    blk.term and not isinstance(blk.term, Goto) for blk in trial.blocks
                )
            except UnsupportedModelError:
                dynamic = False  # leave it opaque: the exporter traces it or says why not
            self._inline_cache[key] = dynamic
        return self._inline_cache[key]

    def lower_inline_call(self, stmt, call: ast.Call, fn: Any, st: St, frame: Frame):
        target = _python_target(fn)
        if target in frame.stack:
            raise HardUnsupported(f"{_loc(frame, call)}: recursion into {target.__qualname__}")
        node, filename, globs = function_ast(target)
        self._counter += 1
        result_local = f"__inl{self._counter}"
        callee = Frame(
            globs,
            filename,
            f"__{self._counter}",
            frame.prog(result_local),
            stack=(*frame.stack, target),
        )
        params = self._params(node, callee)
        env = Env()
        if isinstance(fn, torch.nn.Module) or inspect.ismethod(fn):
            env.static["self"] = fn if isinstance(fn, torch.nn.Module) else fn.__self__
            params = params[1:]
        if call.keywords and any(k.arg is None for k in call.keywords):
            raise Unsupported(f"{_loc(frame, call)}: **kwargs in a call that must be inlined")
        if any(isinstance(a, ast.Starred) for a in call.args):
            raise Unsupported(f"{_loc(frame, call)}: *args in a call that must be inlined")
        bound: dict[str, ast.expr] = dict(zip(params, call.args))
        bound |= {k.arg: k.value for k in call.keywords if k.arg}
        defaults = dict(zip(params[len(params) - len(node.args.defaults) :], node.args.defaults))
        for p in params:
            if p in bound:
                arg = bound[p]
                ok, value = self.static_eval(arg, st.env, frame, allow_list=True)
                if ok and not isinstance(value, torch.Tensor):
                    env.static[p] = value
                else:
                    self.emit(
                        ast.Assign([ast.Name(callee.prog(p), ast.Store())], arg),
                        st,
                        frame,
                        program_targets=True,
                        node=call,
                    )
                    env.dynamic.add(p)
            elif p in defaults:
                ok, value = self.static_eval(defaults[p], Env(), callee)
                if not ok:
                    raise Unsupported(f"{_loc(callee, node)}: default of {p} is not a constant")
                env.static[p] = value
            else:
                raise Unsupported(f"{_loc(frame, call)}: missing argument {p}")
        end = self.lower_body(node.body, St(st.block, env), callee, None)
        if end is not None:
            callee.rets.append((end, None))
        # back in the caller: the call's value is `result_local`
        states = []
        static_vals = {id(v): v for _, v in callee.rets if v is not _DYN}
        all_static = all(v is not _DYN for _, v in callee.rets)
        for s, v in callee.rets:
            cst = St(s.block, st.env.copy())
            if all_static and len(static_vals) == 1:
                cst.env.set_static(result_local, next(iter(static_vals.values())))
            elif v is _DYN:
                cst.env.set_dynamic(result_local)
            elif isinstance(v, _SCALARS):
                cst.block.assign[frame.prog(result_local)] = v
                cst.env.set_dynamic(result_local)
            else:
                raise Unsupported(
                    f"{_loc(callee, node)}: returns a {type(v).__name__} on some "
                    "paths and a tensor on others"
                )
            states.append(cst)
        # the caller's env is unchanged by the call except for new names; carry its own
        # data-dependent demotions (none happen to caller names inside a callee)
        joined = self.join(states, frame, call)
        if joined is None:
            return None
        new_stmt = _replace_node(stmt, call, ast.Name(result_local, ast.Load()))
        return self.lower_simple(new_stmt, joined, frame)

    def lower_switch(self, stmt, sub: ast.Subscript, container: Any, st: St, frame: Frame):
        index = self.fresh("idx")
        self.decisions[index] = (getattr(sub, "lineno", 0), ast.unparse(sub))
        self.emit(
            ast.Assign(
                [ast.Name(index, ast.Store())],
                ast.Call(ast.Name("_hc_int", ast.Load()), [sub.slice], []),
            ),
            st,
            frame,
            program_targets=True,
            node=sub,
        )
        items = list(container)
        cases = [self.new_block() for _ in items]
        st.block.term = Switch(index, tuple(c.id for c in cases))
        outs = []
        local = f"__case{self._counter}"
        for case, item in zip(cases, items):
            env = st.env.copy()
            env.set_static(local, item)
            new_stmt = _replace_node(stmt, sub, ast.Name(local, ast.Load()))
            outs.append(self.lower_simple(new_stmt, St(case, env), frame))
        return self.join([o for o in outs if o is not None], frame, stmt)

    # -- expressions ---------------------------------------------------------------------------
    def static_eval(self, node: ast.expr, env: Env, frame: Frame, allow_list: bool = False):
        """(True, value) when `node` depends only on build-time values, else (False, None).
        A tensor that is not module state counts as run-time (it is recomputed in the graph)."""
        if isinstance(node, ast.List) and not node.elts and allow_list:
            return True, SymList()
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and allow_list:
            if node.func.id == "list" and not node.args and node.func.id not in env.static:
                return True, SymList()
        names = _free_names(node)
        scope: dict[str, Any] = {}
        for n in names:
            if n in env.dynamic or n.startswith(STATE_PREFIX):
                return False, None
            if n in env.static:
                v = env.static[n]
                if isinstance(v, Poisoned):
                    raise Unsupported(f"{_loc(frame, node)}: {v.reason}")
                if isinstance(v, SymList):
                    if any(k == "d" for k, _ in v.items):
                        return False, None
                    v = [x for _, x in v.items]
                scope[n] = v
        for n in ast.walk(node):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
                if n.func.id in _SIDE_EFFECTS and n.func.id not in scope:
                    return False, None
            if isinstance(n, (ast.Attribute)) and n.attr in ("item", "tolist", "numpy"):
                return False, None
        try:
            expr = ast.fix_missing_locations(ast.Expression(body=node))
            code = compile(expr, frame.filename, "eval")
            value = eval(code, frame.globals, scope)  # noqa: S307 - the user's own forward
        except Exception:
            return False, None
        if isinstance(value, torch.Tensor) and id(value) not in self.tensor_paths:
            return False, None
        if isinstance(value, types.GeneratorType):
            return False, None
        return True, value

    def embed(self, value: Any, frame: Frame, node: ast.AST) -> ast.expr:
        """An expression that yields `value` inside a block function."""
        if isinstance(value, _DynRef):
            return ast.Name(value.name, ast.Load())
        if value is None or isinstance(value, (bool, int, str)):
            return ast.Constant(value)
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                return ast.Call(ast.Name("float", ast.Load()), [ast.Constant(repr(value))], [])
            return ast.Constant(value)
        if isinstance(value, SymList):
            return ast.List(
                [self.embed(self._symitem(it, frame), frame, node) for it in value.items],
                ast.Load(),
            )
        if isinstance(value, tuple) and type(value) is tuple:
            return ast.Tuple([self.embed(v, frame, node) for v in value], ast.Load())
        if isinstance(value, list) and type(value) is list and len(value) < 64:
            if all(isinstance(v, (bool, int, float, str, type(None))) for v in value):
                return ast.List([self.embed(v, frame, node) for v in value], ast.Load())
        path = None
        if isinstance(value, torch.nn.Module):
            path = self.module_paths.get(id(value))
        elif isinstance(value, torch.Tensor):
            path = self.tensor_paths.get(id(value))
        if path is not None:
            return ast.Call(
                ast.Name("_hc_get", ast.Load()),
                [ast.Name("__root", ast.Load()), ast.Constant(path)],
                [],
            )
        if isinstance(value, Poisoned):
            raise Unsupported(f"{_loc(frame, node)}: {value.reason}")
        return self.const_ref(value)

    def rewrite(self, node: ast.AST, env: Env, frame: Frame, bound: frozenset = frozenset()):
        """Substitute static subexpressions and program names; map Python truthiness and
        `.item()` / `int()` / `float()` / `bool()` on tensors to graph operations."""
        if isinstance(node, ast.expr) and not isinstance(node, (ast.Starred, ast.Name)):
            names = _free_names(node)
            if names & set(env.static) and not names & (bound | env.dynamic):
                ok, value = self.static_eval(node, env, frame)
                if ok and not _is_plain_container(value):
                    return ast.copy_location(self.embed(value, frame, node), node)
        if isinstance(node, ast.Name):
            if node.id in bound:
                return node
            if isinstance(node.ctx, ast.Store):
                return ast.copy_location(ast.Name(frame.prog(node.id), ast.Store()), node)
            if node.id in env.dynamic:
                return ast.copy_location(ast.Name(frame.prog(node.id), ast.Load()), node)
            if node.id in env.static:
                return ast.copy_location(self.embed(env.static[node.id], frame, node), node)
            if node.id.startswith(("_hc_", "__root", "__c", STATE_PREFIX)):
                return node  # helpers the splitter itself wrote, module state cells
            if node.id in frame.globals or hasattr(builtins, node.id):
                value = frame.globals.get(node.id, getattr(builtins, node.id, None))
                known = self.globals.setdefault(node.id, value)
                return node if known is value else self.const_ref(value)
            raise Unsupported(f"{_loc(frame, node)}: name `{node.id}` is not defined here")
        if isinstance(
            node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp, ast.Lambda)
        ):
            inner = bound | _bound_names(node)
            return self._generic(node, env, frame, frozenset(inner))
        if isinstance(node, ast.BoolOp):
            if _free_names(node) & env.dynamic:
                helper = "_hc_and" if isinstance(node.op, ast.And) else "_hc_or"
                values = [self.rewrite(v, env, frame, bound) for v in node.values]
                out = values[0]
                for v in values[1:]:
                    out = ast.Call(ast.Name(helper, ast.Load()), [out, v], [])
                return ast.copy_location(out, node)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            if _free_names(node) & env.dynamic:
                inner = self.rewrite(node.operand, env, frame, bound)
                return ast.copy_location(
                    ast.Call(ast.Name("_hc_not", ast.Load()), [inner], []), node
                )
        if isinstance(node, ast.Compare) and len(node.ops) > 1 and _free_names(node) & env.dynamic:
            parts = []
            left = node.left
            for op, right in zip(node.ops, node.comparators):
                parts.append(ast.Compare(left, [op], [right]))
                left = right
            chained = ast.copy_location(ast.BoolOp(ast.And(), parts), node)
            return self.rewrite(chained, env, frame, bound)
        if isinstance(node, ast.IfExp):
            ok, value = self.static_eval(node.test, env, frame)
            if ok:
                return self.rewrite(node.body if value else node.orelse, env, frame, bound)
            raise Unsupported(
                f"{_loc(frame, node)}: a conditional expression on a data-dependent "
                "value; write it as an if statement"
            )
        if isinstance(node, ast.Call):
            f = node.func
            dyn = bool(_free_names(node) & env.dynamic)
            if dyn and isinstance(f, ast.Attribute) and f.attr == "item" and not node.args:
                return self._helper("_hc_item", [f.value], node, env, frame, bound)
            if (
                dyn
                and isinstance(f, ast.Name)
                and f.id in ("int", "float", "bool")
                and f.id not in env.static
                and len(node.args) == 1
            ):
                return self._helper(f"_hc_{f.id}", node.args, node, env, frame, bound)
        return self._generic(node, env, frame, bound)

    def _helper(self, name, args, node, env, frame, bound):
        new = ast.Call(
            ast.Name(name, ast.Load()), [self.rewrite(a, env, frame, bound) for a in args], []
        )
        return ast.copy_location(new, node)

    def _generic(self, node: ast.AST, env: Env, frame: Frame, bound: frozenset):
        node = copy.copy(node)
        for fname, value in ast.iter_fields(node):
            if isinstance(value, list):
                setattr(
                    node,
                    fname,
                    [
                        self.rewrite(v, env, frame, bound) if isinstance(v, ast.AST) else v
                        for v in value
                    ],
                )
            elif isinstance(value, ast.AST):
                setattr(node, fname, self.rewrite(value, env, frame, bound))
        return node

    def emit(
        self,
        stmt: ast.stmt,
        st: St,
        frame: Frame,
        program_targets: bool = False,
        node: ast.AST | None = None,
    ) -> St:
        """Append a run-time statement to the current block; its targets become dynamic."""
        loc = node or stmt
        if program_targets:
            assert isinstance(stmt, ast.Assign)
            value = self.rewrite(stmt.value, st.env, frame)
            new: ast.stmt = ast.Assign(stmt.targets, value)
        else:
            new = self.rewrite(stmt, st.env, frame)
            for name in _assigned_names([stmt]):
                st.env.set_dynamic(name)
        ast.copy_location(new, loc)
        ast.fix_missing_locations(new)
        st.block.stmts.append(new)
        return st

    def emit_predicate(self, test: ast.expr, st: St, frame: Frame) -> str:
        """Compute the branch condition at the end of the current block; returns its name."""
        if isinstance(test, ast.Name) and test.id in st.env.dynamic:
            return frame.prog(test.id)
        name = self.fresh("p")
        self.decisions[name] = (getattr(test, "lineno", 0), ast.unparse(test))
        call = ast.Call(ast.Name("_hc_bool", ast.Load()), [test], [])
        self.emit(
            ast.Assign([ast.Name(name, ast.Store())], ast.copy_location(call, test)),
            st,
            frame,
            program_targets=True,
            node=test,
        )
        return name


class _DynRef:
    def __init__(self, name: str):
        self.name = name


_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, _SCALARS + (str, type(None))) and type(a) is type(b):
        return a == b
    if isinstance(a, SymList):
        return a == b
    if isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b):
        return all(_same(x, y) for x, y in zip(a, b))
    return False


def _is_name_target(t: ast.expr) -> bool:
    if isinstance(t, ast.Name):
        return True
    return isinstance(t, (ast.Tuple, ast.List)) and all(_is_name_target(e) for e in t.elts)


def _is_plain_container(value: Any) -> bool:
    """Lists/dicts are embedded element-wise by the generic rewrite, not as constants."""
    return type(value) in (list, dict) and len(value) >= 64


def _is_dispatch_container(value: Any) -> bool:
    return isinstance(value, (torch.nn.ModuleList, torch.nn.Sequential, list, tuple)) and all(
        not isinstance(v, torch.Tensor) for v in value
    )


def _python_target(fn: Any) -> Any:
    """The Python function to inline for `fn` (a user submodule's forward, a method of a module,
    or a plain function defined in user code), or None to keep the call opaque."""
    if isinstance(fn, torch.nn.Module):
        forward = type(fn).forward
        mod = getattr(forward, "__module__", "") or ""
        if mod.startswith("torch.") or not isinstance(forward, types.FunctionType):
            return None
        return forward
    func = getattr(fn, "__func__", fn)
    if not isinstance(func, types.FunctionType):
        return None
    mod = getattr(func, "__module__", "") or ""
    if mod.startswith(("torch", "numpy", "hypercompile")):
        return None
    return func


def _subscript(name: str, i: int) -> ast.expr:
    return ast.Subscript(ast.Name(name, ast.Load()), ast.Constant(i), ast.Load())


def _with_test(stmt: Any, test: ast.expr) -> Any:
    if test is stmt.test:
        return stmt
    clone = copy.copy(stmt)
    clone.test = test
    return clone


def _replace_node(stmt: ast.stmt, old: ast.AST, new: ast.expr) -> ast.stmt:
    """A copy of `stmt` with the node `old` (by identity) replaced by `new`."""
    return _copy_tree(stmt, old, new)


def _copy_tree(stmt: ast.stmt, old: ast.AST, new: ast.expr) -> ast.stmt:
    """A copy of `stmt` with the node `old` (by identity) replaced by `new`."""

    def walk(node):
        if node is old:
            return ast.copy_location(new, old)
        if not isinstance(node, ast.AST):
            return node
        clone = copy.copy(node)
        for fname, value in ast.iter_fields(node):
            if isinstance(value, list):
                setattr(clone, fname, [walk(v) for v in value])
            elif isinstance(value, ast.AST):
                setattr(clone, fname, walk(value))
        return clone

    return walk(stmt)
