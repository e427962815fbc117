"""Lowering of loops: `for` over a build-time iterable is unrolled, and so is a `while` whose
condition stays static; a data-dependent `while` becomes a header block with a back edge."""

from __future__ import annotations

import ast
from typing import Any

from ...core.ir import Branch, Goto
from .astutil import assigned_names, has_control_flow, with_test
from .state import (
    MAX_UNROLL,
    MISSING,
    SCALARS,
    Block,
    Frame,
    Loop,
    Poisoned,
    St,
    SymList,
    Unsupported,
    loc,
    symitem,
)


class LoopsMixin:
    """`for` and `while`, for `Lowerer`."""

    def lower_for(self, stmt: ast.For, st: St, frame: Frame, loop: Loop | None):
        ok, iterable = self.static_eval(stmt.iter, st.env, frame)
        if not ok:
            if not has_control_flow(stmt.body) and not stmt.orelse:
                return self.emit(stmt, st, frame)  # traced by the exporter as it stands
            raise Unsupported(
                f"{loc(frame, stmt)}: a loop over a data-dependent iterable with control flow "
                "inside cannot be split"
            )
        if isinstance(iterable, SymList):
            items = [symitem(it) for it in iterable.items]
        else:
            try:
                items = list(iterable)
            except TypeError:
                what = type(iterable).__name__
                raise Unsupported(f"{loc(frame, stmt)}: cannot iterate over {what}") from None
        if len(items) > MAX_UNROLL:
            raise Unsupported(f"{loc(frame, stmt)}: loop of {len(items)} > {MAX_UNROLL} steps")
        inner = Loop()
        cur: St | None = st
        for item in items:
            if cur is None:
                break
            self.bind_target(stmt.target, item, cur, frame)
            res = self._static_branch(stmt.body, cur, frame, inner)
            if isinstance(res, tuple):
                kind, s = res
                if kind == "break":
                    inner.breaks.append(s)
                    cur = None
                    break
                res = s
            conts, inner.continues = inner.continues, []
            cur = self.join([s for s in [res, *conts] if s is not None], frame, stmt)
        if stmt.orelse:
            if inner.breaks:
                raise Unsupported(f"{loc(frame, stmt)}: for/else with break is not supported")
            cur = self.lower_body(stmt.orelse, cur, frame, loop)
        return self.join([s for s in [cur, *inner.breaks] if s is not None], frame, stmt)

    def lower_while(self, stmt: ast.While, st: St, frame: Frame):
        stmt = with_test(stmt, self.state_cells(stmt.test, st.env, frame))
        if stmt.orelse:
            raise Unsupported(f"{loc(frame, stmt)}: while/else is not supported")
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
            raise Unsupported(f"{loc(frame, stmt)}: static while loop runs > {MAX_UNROLL} times")
        return self._dynamic_while(stmt, cur, frame)

    def _dynamic_while(self, stmt: ast.While, st: St, frame: Frame):
        assigned = assigned_names(stmt.body)
        kept = self._loop_entry(assigned, st, frame, stmt)
        header = self.new_block()
        st.block.term = Goto(header.id)
        henv = st.env.copy()
        for name in assigned - set(kept):
            if not isinstance(henv.static.get(name), Poisoned):
                henv.set_dynamic(name, host_list=name in henv.lists)
        ok, value = self.static_eval(stmt.test, henv, frame)
        body_b, exit_b = self.new_block(), self.new_block()
        if ok:
            header.term = Goto(body_b.id if value else exit_b.id)
        else:
            test, hst = stmt.test, St(header, henv)
            if self.reads_host_list(test, henv):  # `while len(xs) < n`: the host reads first
                expr, hst = self.host_list_reads(ast.Expr(test), hst, frame)
                test = expr.value  # type: ignore[attr-defined]
            pred = self.emit_predicate(test, hst, frame)
            hst.block.term = Branch(pred, body_b.id, exit_b.id)
        inner = Loop()
        end = self.lower_body(stmt.body, St(body_b, henv.copy()), frame, inner)
        for s in [end, *inner.continues]:
            if s is not None:
                self._back_edge(s, header, assigned, kept, henv.lists, frame, stmt)
        return self.join([St(exit_b, henv.copy()), *inner.breaks], frame, stmt)

    def _loop_entry(self, assigned: set[str], st: St, frame: Frame, stmt: ast.While):
        """Before a data-dependent loop: the host carries the scalars the body assigns and the
        lists it grows (or else they become unusable), other static values must stay as they
        are (returned)."""
        kept: dict[str, Any] = {}
        for name in assigned:
            value = st.env.static.get(name, MISSING)
            if value is MISSING:
                continue
            if isinstance(value, SCALARS) or value is None:
                self.demote(name, st, frame, stmt)
            elif isinstance(value, SymList):
                why = self.hold_list(name, value, st, frame, stmt)
                if why:
                    st.env.static[name] = Poisoned(
                        f"list `{name}` grows inside a data-dependent loop ({why})"
                    )
            else:
                kept[name] = value
        return kept

    def _back_edge(
        self,
        s: St,
        header: Block,
        assigned: set[str],
        kept: dict[str, Any],
        lists: set[str],
        frame: Frame,
        stmt: ast.While,
    ) -> None:
        """From the end of one pass through the loop body back to its header; `lists`: the
        host lists at the header."""
        for name, value in kept.items():
            if s.env.static.get(name, MISSING) is not value:
                raise Unsupported(
                    f"{loc(frame, stmt)}: `{name}` changes inside a data-dependent loop"
                )
        for name in assigned:
            v = s.env.static.get(name, MISSING)
            if name in lists and isinstance(v, SymList):
                why = self.hold_list(name, v, s, frame, stmt)
                if why:
                    raise Unsupported(f"{loc(frame, stmt)}: list `{name}` in the loop: {why}")
            elif (name in lists) != (name in s.env.lists) and (
                v is not MISSING or name in s.env.dynamic
            ):
                raise Unsupported(
                    f"{loc(frame, stmt)}: `{name}` is a list on some passes through a "
                    "data-dependent loop and not on others"
                )
            elif v is not MISSING and name not in kept and not isinstance(v, Poisoned):
                self.demote(name, s, frame, stmt)
        s.block.term = Goto(header.id)
