"""How often each side of every decision in the zoo's ``forward``s is taken on random inputs.

Runs every model of ``zoo.ZOO`` (or the ones named on the command line) on N random
``1x3x32x32`` inputs and records, with a ``sys.settrace`` line tracer over the model's
``forward`` (the model code is not modified or wrapped), for each decision point:

* ``if`` / ``elif``: whether the body, the ``else`` part, or nothing (fall-through, "skip")
  ran next. Inside ``for`` loops, a row per value of the loop's integer variables (``g=1 i=2``);
  loops over modules (``for blk in self.blocks``) use the per-call occurrence number (``#2``).
* ``while`` and ``for`` loops containing ``break``: histogram of iterations per loop execution.
* subscripts indexed by ``int(<expr>)`` (e.g. ``self.experts[int(idx)]``): the index values.

Rows whose outcome never varies are marked ``const`` (static conditions such as ``if i == 0``
show up like this); a varying branch taken less than 20 % or more than 80 % of the time is
marked ``!``. The latency column is plain eager execution without the tracer.

Usage (from the repo root)::

    python examples/dynamic/branch_stats.py [-n 300] [--seed 0] [model ...]
"""

from __future__ import annotations

import argparse
import ast
import collections
import inspect
import re
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402

ZOO_FILE = str(Path(zoo.__file__).resolve())


@dataclass(eq=False)
class Decision:
    kind: str  # "if", "while", "for-break", "index"
    line: int  # line of the test / loop header / subscript
    text: str
    body: tuple[int, int] = (0, 0)
    orelse: tuple[int, int] | None = None
    header: tuple[int, int] = (0, 0)  # lines of the test (if/while) or of the loop header
    loop_vars: tuple[str, ...] = ()  # names bound by enclosing ``for`` loops
    expr: object = None  # compiled index expression (kind == "index")
    # context key -> Counter(outcome)
    outcomes: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))


def _span(stmts, off):
    return (stmts[0].lineno + off, max(s.end_lineno for s in stmts) + off)


def _names(target) -> tuple[str, ...]:
    return tuple(n.id for n in ast.walk(target) if isinstance(n, ast.Name))


def _decisions_of(fn) -> list[Decision]:
    """Decision points in the source of ``fn`` (absolute line numbers in zoo.py)."""
    lines, first = inspect.getsourcelines(fn)
    src = textwrap.dedent("".join(lines))  # dedent keeps line numbers
    off = first - 1
    out: list[Decision] = []

    def seg(node):
        return " ".join(ast.get_source_segment(src, node).split())

    def visit(node, loop_vars):
        if isinstance(node, ast.If):
            out.append(
                Decision(
                    "if",
                    node.lineno + off,
                    "if " + seg(node.test),
                    body=_span(node.body, off),
                    orelse=_span(node.orelse, off) if node.orelse else None,
                    header=(node.test.lineno + off, node.test.end_lineno + off),
                    loop_vars=loop_vars,
                )
            )
        elif isinstance(node, ast.While):
            out.append(
                Decision(
                    "while",
                    node.lineno + off,
                    "while " + seg(node.test),
                    body=_span(node.body, off),
                    header=(node.test.lineno + off, node.test.end_lineno + off),
                    loop_vars=loop_vars,
                )
            )
        elif isinstance(node, ast.For):
            breaks = any(isinstance(n, ast.Break) for n in _walk_same_loop(node))
            if breaks:
                out.append(
                    Decision(
                        "for-break",
                        node.lineno + off,
                        "for " + seg(node.target) + " in " + seg(node.iter) + ": ...break",
                        body=_span(node.body, off),
                        header=(node.lineno + off, node.iter.end_lineno + off),
                        loop_vars=loop_vars,
                    )
                )
        elif isinstance(node, ast.Subscript):
            s = node.slice
            if isinstance(s, ast.Call) and isinstance(s.func, ast.Name) and s.func.id == "int":
                out.append(
                    Decision(
                        "index",
                        node.lineno + off,
                        seg(node),
                        expr=compile(ast.Expression(s), ZOO_FILE, "eval"),
                    )
                )
        inner = loop_vars + _names(node.target) if isinstance(node, ast.For) else loop_vars
        body = node.body if isinstance(node, ast.For) else ()
        for child in ast.iter_child_nodes(node):
            visit(child, inner if any(child is b for b in body) else loop_vars)

    visit(ast.parse(src), ())
    return out


def _walk_same_loop(loop):
    """Nodes of ``loop``'s body, not descending into nested loops (whose breaks are theirs)."""
    todo = list(loop.body)
    while todo:
        n = todo.pop()
        yield n
        if not isinstance(n, (ast.For, ast.While, ast.FunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(n))


class Tracer:
    """Line tracer over the frames of one function; feeds outcomes into its decisions."""

    def __init__(self, code, decisions: list[Decision]):
        self.code = code
        self.tests = collections.defaultdict(list)  # line -> if/index decisions evaluated there
        self.loops = []
        for d in decisions:
            if d.kind in ("while", "for-break"):
                self.loops.append(d)
            else:
                self.tests[d.line].append(d)

    def run(self, model, x):
        self.occ = collections.Counter()  # decision -> occurrences in this call
        self.pending = None  # (if-decision, context key) waiting for the next line
        self.last_line = 0
        self.iters = {}  # active loop decision -> iterations so far
        sys.settrace(self._global)
        try:
            with torch.no_grad():
                model(x)
        finally:
            sys.settrace(None)
        self._close_loops(lambda d: True)

    def _global(self, frame, event, arg):
        return self._local if frame.f_code is self.code else None

    def _close_loops(self, pred):
        for d in [d for d in self.iters if pred(d)]:
            d.outcomes["-"][self.iters.pop(d)] += 1

    def _context(self, d, frame):
        values = [frame.f_locals.get(v) for v in d.loop_vars]
        if d.loop_vars and all(isinstance(v, int) for v in values):
            return " ".join(f"{n}={v}" for n, v in zip(d.loop_vars, values))
        k = self.occ[d]
        self.occ[d] += 1
        return f"#{k}" if d.loop_vars else "-"

    def _local(self, frame, event, arg):
        if event == "return":
            if self.pending:
                d, key = self.pending
                d.outcomes[key]["skip"] += 1
                self.pending = None
            return None
        if event != "line":
            return self._local
        line, prev = frame.f_lineno, self.last_line
        self.last_line = line
        if self.pending:
            d, key = self.pending
            if d.header[0] <= line <= d.header[1]:
                return self._local  # still evaluating a multi-line test
            self.pending = None
            if d.body[0] <= line <= d.body[1]:
                d.outcomes[key]["then"] += 1
            elif d.orelse and d.orelse[0] <= line <= d.orelse[1]:
                d.outcomes[key]["else"] += 1
            else:
                d.outcomes[key]["skip"] += 1
        for d in self.loops:
            inside = d.header[0] <= line <= d.body[1]
            if d in self.iters and not inside:
                self._close_loops(lambda e, d=d: e is d)  # left the loop (exhausted, break, return)
            elif d.header[0] <= line <= d.header[1] and not (d.header[0] <= prev <= d.body[1]):
                self._close_loops(lambda e, d=d: e is d)
                self.iters[d] = 0  # (re-)entered the loop from outside
            elif line == d.body[0] and d in self.iters:
                self.iters[d] += 1
        for d in self.tests.get(line, ()):
            if d.kind == "if":
                self.pending = (d, self._context(d, frame))
            else:  # index
                d.outcomes["-"][eval(d.expr, frame.f_globals, frame.f_locals)] += 1
        return self._local


def _row(d: Decision, key, counts):
    total = sum(counts.values())
    where = f"L{d.line}"
    if d.kind == "if":
        then = counts.get("then", 0)
        other = total - then
        other_name = "else" if d.orelse else "skip"
        pct = 100.0 * then / total
        flag = "const" if then == 0 or other == 0 else ("!" if pct < 20 or pct > 80 else "")
        return (
            f"  {where:5s} {d.text[:52]:52s} {key:16s} n={total:<4d} "
            f"taken {pct:5.1f}% / {other_name} {100 - pct:5.1f}%  {flag}"
        )
    hist = "  ".join(f"{v}:{c}" for v, c in sorted(counts.items()))
    label = "values" if d.kind == "index" else "iterations"
    flag = "const" if len(counts) <= 1 else ""
    return f"  {where:5s} {d.text[:52]:52s} {'':16s} n={total:<4d} {label} {hist}  {flag}"


def _sort_key(key):
    return [int(v) for v in re.findall(r"\d+", key)]


def stats(name, ctor, n=300, seed=0):
    """Trace ``n`` random inputs through ``ctor()``; print and return (decisions, latency_ms)."""
    model = ctor()
    forward = type(model).forward
    decisions = _decisions_of(forward)
    tracer = Tracer(forward.__code__, decisions)
    g = torch.Generator().manual_seed(seed)
    shape = model.example_inputs()[0].shape  # one image, or a batch for branchynet_b8
    inputs = [torch.randn(shape, generator=g) for _ in range(n)]
    for x in inputs:
        tracer.run(model, x)
    with torch.no_grad():  # eager latency, untraced: median over the inputs
        for x in inputs[:10]:
            model(x)
        times = []
        for x in inputs[:100]:
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    ms = sorted(times)[len(times) // 2] * 1e3
    print(f"== {name} ({type(model).__name__}): {n} inputs, eager median {ms:.2f} ms/forward")
    for d in sorted(decisions, key=lambda d: d.line):
        for key in sorted(d.outcomes, key=_sort_key):
            print(_row(d, key, d.outcomes[key]))
    return decisions, ms


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", help="zoo names (default: all)")
    ap.add_argument("-n", type=int, default=300, help="random inputs per model")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    summary = []
    for name in args.models or list(zoo.ZOO):
        decisions, ms = stats(name, zoo.ZOO[name], args.n, args.seed)
        ifs = [
            c.get("then", 0) / sum(c.values())
            for d in decisions
            if d.kind == "if"
            for c in d.outcomes.values()
        ]
        varying = [p for p in ifs if 0 < p < 1]
        out_of_range = sum(1 for p in varying if p < 0.2 or p > 0.8)
        other = [len(c) for d in decisions if d.kind != "if" for c in d.outcomes.values()]
        summary.append(
            (
                name,
                ms,
                len(varying),
                len(ifs) - len(varying),
                out_of_range,
                sum(1 for k in other if k > 1),
                len(other),
            )
        )
        print()
    print(
        f"{'model':18s} {'eager ms':>8s} {'if rows varying':>16s} {'const':>6s} "
        f"{'outside 20-80%':>15s} {'loops/index varying':>20s}"
    )
    for name, ms, nv, nc, bad, ov, on in summary:
        print(f"{name:18s} {ms:8.2f} {nv:16d} {nc:6d} {bad:15d} {f'{ov}/{on}':>20s}")


if __name__ == "__main__":
    main()
