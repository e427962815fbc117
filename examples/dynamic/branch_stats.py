"""How often each side of every data-dependent decision in the zoo is taken on random inputs.

Runs every model of ``zoo.ZOO`` (or the ones named on the command line) on N random
``1x3x32x32`` inputs and, with a ``sys.settrace`` line tracer over the code of ``zoo.py`` (the
model code is not modified), records for each decision point:

* ``if`` / ``elif``: whether the body, the ``else`` part, or nothing (fall-through) ran next.
  Decisions inside loops are reported per occurrence within one forward call (``#k``) so that,
  e.g., every SkipNet gate gets its own row.
* ``while``: the number of iterations per call (histogram).
* ``for`` loops containing ``break``: the number of iterations per call (histogram).
* subscripts indexed by ``int(<expr>)`` (e.g. ``self.experts[int(idx)]``): the index values.

Rows whose outcome never varies are marked ``const`` (static conditions such as ``if i == 0``
show up like this); a data-dependent branch that is taken less than 20 % or more than 80 % of
the time is marked ``!``.

Usage (from the repo root)::

    python examples/dynamic/branch_stats.py [-n 300] [--seed 0] [model ...]
"""

from __future__ import annotations

import argparse
import ast
import collections
import inspect
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
    line: int  # the line whose execution marks the decision
    text: str
    body: tuple[int, int] = (0, 0)
    orelse: tuple[int, int] | None = None
    test_lines: tuple[int, int] = (0, 0)
    expr: object = None  # compiled index expression (kind == "index")
    # occurrence -> Counter(outcome)
    outcomes: dict = field(default_factory=lambda: collections.defaultdict(collections.Counter))


def _span(stmts):
    return (stmts[0].lineno, max(s.end_lineno for s in stmts))


def _decisions_of(fn) -> list[Decision]:
    """Decision points in the source of ``fn`` (absolute line numbers in zoo.py)."""
    lines, first = inspect.getsourcelines(fn)
    src = textwrap.dedent("".join(lines))  # dedent keeps line numbers
    tree = ast.parse(src)
    off = first - 1
    out = []

    def seg(node):
        return ast.get_source_segment(src, node)

    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            d = Decision("if", node.lineno + off, "if " + seg(node.test),
                         body=tuple(x + off for x in _span(node.body)),
                         orelse=tuple(x + off for x in _span(node.orelse)) if node.orelse else None,
                         test_lines=(node.test.lineno + off, node.test.end_lineno + off))
            out.append(d)
        elif isinstance(node, ast.While):
            out.append(Decision("while", node.lineno + off, "while " + seg(node.test),
                                body=tuple(x + off for x in _span(node.body)),
                                test_lines=(node.test.lineno + off, node.test.end_lineno + off)))
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            has_break = any(isinstance(n, ast.Break) for n in ast.walk(node)
                            if not isinstance(n, (ast.For, ast.While)) or n is node)
            if has_break:
                out.append(Decision("for-break", node.lineno + off,
                                    "for " + seg(node.target) + " in " + seg(node.iter) + ": ... break",
                                    body=tuple(x + off for x in _span(node.body)),
                                    test_lines=(node.lineno + off, node.iter.end_lineno + off)))
        elif isinstance(node, ast.Subscript):
            s = node.slice
            if isinstance(s, ast.Call) and isinstance(s.func, ast.Name) and s.func.id == "int":
                out.append(Decision("index", node.lineno + off, seg(node),
                                    expr=compile(ast.Expression(s), ZOO_FILE, "eval")))
    return out


class Tracer:
    """Line tracer over zoo.py frames; feeds outcomes into the decisions of one model."""

    def __init__(self, decisions: list[Decision]):
        self.by_line = collections.defaultdict(list)
        for d in decisions:
            self.by_line[d.line].append(d)
        self.code_names = set()

    def run(self, model, x):
        self.occ = collections.Counter()  # decision -> occurrences in this call
        self.pending = {}  # frame -> (decision, occurrence)
        self.loop_iters = {}  # (frame, decision) -> iteration count for the active loop
        sys.settrace(self._global)
        try:
            with torch.no_grad():
                model(x)
        finally:
            sys.settrace(None)
        for (frame, d), n in self.loop_iters.items():
            d.outcomes[0][n] += 1

    def _global(self, frame, event, arg):
        if frame.f_code.co_filename == ZOO_FILE:
            return self._local
        return None

    def _resolve(self, frame, line):
        """Close the pending decision of ``frame`` given that ``line`` executes next."""
        d, k = self.pending.pop(frame)
        if d.kind == "if":
            if d.body[0] <= line <= d.body[1]:
                d.outcomes[k]["then"] += 1
            elif d.orelse and d.orelse[0] <= line <= d.orelse[1]:
                d.outcomes[k]["else"] += 1
            else:
                d.outcomes[k]["skip"] += 1

    def _local(self, frame, event, arg):
        if event == "line":
            line = frame.f_lineno
            if frame in self.pending:
                d, _ = self.pending[frame]
                if d.test_lines[0] <= line <= d.test_lines[1]:
                    return self._local  # still evaluating a multi-line test
                self._resolve(frame, line)
            for d in self.by_line.get(line, ()):
                if d.kind == "if":
                    k = self.occ[d]
                    self.occ[d] += 1
                    self.pending[frame] = (d, k)
                elif d.kind == "index":
                    value = eval(d.expr, frame.f_globals, frame.f_locals)
                    d.outcomes[0][value] += 1
            # loop iteration counting: a line in the loop body that is the body's first line
            for d in self.by_line_body_start.get(line, ()):
                key = (frame, d)
                self.loop_iters[key] = self.loop_iters.get(key, 0) + 1
            for d in self.by_line.get(line, ()):
                if d.kind in ("while", "for-break") and (frame, d) not in self.loop_iters:
                    self.loop_iters[(frame, d)] = 0
        elif event == "return" and frame in self.pending:
            d, k = self.pending.pop(frame)
            d.outcomes[k]["skip"] += 1
        return self._local

    def prepare(self):
        self.by_line_body_start = collections.defaultdict(list)
        for ds in self.by_line.values():
            for d in ds:
                if d.kind in ("while", "for-break"):
                    self.by_line_body_start[d.body[0]].append(d)


def _methods(cls):
    """forward and every other function defined in zoo.py on the model class (not submodules:
    in the zoo all data-dependent control flow is in the top-level forward)."""
    fns = []
    for klass in cls.__mro__:
        for name, obj in vars(klass).items():
            if inspect.isfunction(obj) and obj.__code__.co_filename == ZOO_FILE and name == "forward":
                fns.append(obj)
        if fns:
            break
    return fns


def _fmt_row(d: Decision, k, counts, n_calls):
    total = sum(counts.values())
    if d.kind == "if":
        then = counts.get("then", 0)
        other = counts.get("else", 0) + counts.get("skip", 0)
        other_name = "else" if d.orelse else "not taken"
        pct = 100.0 * then / total if total else 0.0
        const = then == 0 or other == 0
        flag = "const" if const else ("!" if pct < 20 or pct > 80 else "")
        return (f"L{d.line:<4d} #{k:<2d} {d.text[:58]:58s} n={total:<5d} "
                f"taken {pct:5.1f}%  {other_name} {100 - pct:5.1f}%  {flag}")
    hist = " ".join(f"{v}:{c}" for v, c in sorted(counts.items()))
    label = {"while": "iterations", "for-break": "iterations", "index": "values"}[d.kind]
    flag = "const" if len(counts) <= 1 else ""
    return f"L{d.line:<4d}     {d.text[:58]:58s} n={total:<5d} {label} {hist}  {flag}"


def stats(name, ctor, n, seed, verbose=True):
    model = ctor()
    decisions = [d for fn in _methods(type(model)) for d in _decisions_of(fn)]
    tracer = Tracer(decisions)
    tracer.prepare()
    g = torch.Generator().manual_seed(seed)
    inputs = [torch.randn(1, 3, 32, 32, generator=g) for _ in range(n)]
    for x in inputs:
        tracer.run(model, x)
    # eager latency (untraced)
    with torch.no_grad():
        for x in inputs[:20]:
            model(x)
        t0 = time.perf_counter()
        for x in inputs[:200]:
            model(x)
        ms = (time.perf_counter() - t0) / min(200, n) * 1e3
    if verbose:
        print(f"== {name} ({type(model).__name__}): {n} inputs, eager {ms:.2f} ms/forward")
        for d in sorted(decisions, key=lambda d: d.line):
            for k in sorted(d.outcomes):
                print("  " + _fmt_row(d, k, d.outcomes[k], n))
    return decisions, ms


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", help="zoo names (default: all)")
    ap.add_argument("-n", type=int, default=300, help="random inputs per model")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    names = args.models or list(zoo.ZOO)
    for name in names:
        stats(name, zoo.ZOO[name], args.n, args.seed)
        print()


if __name__ == "__main__":
    main()
