"""The host-program interpreter: runs a DyNN's control flow over named arrays, calling one
compiled subgraph per block. Torch-free; the program is data from the manifest."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backends import Runner
from ..errors import BundleError, HypercompileError


class _Block:
    __slots__ = ("runner", "feeds", "outputs", "assign", "moves", "kind", "a", "b", "c", "header")

    def __init__(self, spec: dict[str, Any], runner: Runner | None, graph: dict | None):
        self.runner = runner
        names = [i["name"] for i in graph["inputs"]] if graph else []
        if graph is not None and len(names) != len(spec["inputs"]):
            raise BundleError(f"program block {spec['id']}: inputs do not match its graph")
        self.feeds = list(zip(names, spec["inputs"]))
        self.outputs = list(spec["outputs"])
        self.assign = [
            (n, np.asarray(v["value"], dtype=v["dtype"])) for n, v in spec.get("assign", {}).items()
        ]
        self.moves = [tuple(m) for m in spec.get("moves", [])]
        self.header = bool(spec.get("loop_header"))
        nxt = spec["next"]
        if "goto" in nxt:
            self.kind, self.a, self.b, self.c = 0, nxt["goto"], None, None
        elif "branch" in nxt:
            self.kind, self.a, self.b, self.c = 1, nxt["branch"], nxt["then"], nxt["else"]
        elif "switch" in nxt:
            self.kind, self.a, self.b, self.c = 2, nxt["switch"], list(nxt["cases"]), None
        elif "return" in nxt:
            self.kind, self.a, self.b, self.c = 3, list(nxt["return"]), None, None
        else:
            raise BundleError(f"program block {spec['id']} has no valid `next`")


class ProgramRunner:
    """Interprets one host program; `stats` (optional) counts the sides each branch took and
    `trace` (optional, a list) records the id of every block a run visits, in order."""

    def __init__(
        self, program: dict[str, Any], graphs: dict[str, dict], runners: dict[str, Runner]
    ):
        self.blocks: dict[int, _Block] = {}
        for spec in program["blocks"]:
            gid = spec.get("graph")
            self.blocks[spec["id"]] = _Block(spec, runners.get(gid), graphs.get(gid))
        self.entry = program["entry"]
        self.inputs = list(program["inputs"])
        self.max_iterations = int(program.get("max_iterations", 10_000))
        for blk in self.blocks.values():
            targets = (
                [blk.a]
                if blk.kind == 0
                else [blk.b, blk.c]
                if blk.kind == 1
                else blk.b
                if blk.kind == 2
                else []
            )
            if any(t not in self.blocks for t in targets):
                raise BundleError("program jumps to a block that does not exist")
        if self.entry not in self.blocks:
            raise BundleError("program entry block does not exist")
        self.stats: dict[int, dict[str, int]] | None = None
        self.trace: list[int] | None = None

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        env = dict(feeds)
        blocks, stats, trace = self.blocks, self.stats, self.trace
        b = self.entry
        loops = 0
        while True:
            blk = blocks[b]
            if trace is not None:
                trace.append(b)
            if blk.runner is not None:
                outs = blk.runner.run({g: env[n] for g, n in blk.feeds})
                for n, v in zip(blk.outputs, outs):
                    env[n] = v
            for n, v in blk.assign:
                env[n] = v
            for dst, src in blk.moves:
                env[dst] = env[src]
            kind = blk.kind
            if kind == 3:
                return [env[n] for n in blk.a]
            if blk.header:
                loops += 1
                if loops > self.max_iterations:
                    raise HypercompileError(
                        f"program exceeded its bound of {self.max_iterations} loop iterations"
                    )
            if kind == 0:
                b = blk.a
            elif kind == 1:
                taken = bool(env[blk.a])
                if stats is not None:
                    c = stats.setdefault(b, {"then": 0, "else": 0})
                    c["then" if taken else "else"] += 1
                b = blk.b if taken else blk.c
            else:
                cases = blk.b
                i = int(env[blk.a])
                if not -len(cases) <= i < len(cases):
                    raise HypercompileError(
                        f"dispatch index {i} out of range for {len(cases)} alternatives"
                    )
                i %= len(cases)
                if stats is not None:
                    c = stats.setdefault(b, {})
                    c[str(i)] = c.get(str(i), 0) + 1
                b = cases[i]


def source_coverage(program: dict[str, Any], stats: dict[int, dict[str, int]]) -> dict[str, Any]:
    """Per source-level decision (copies made by tail duplication counted together): how often
    each side or case was taken, with the line and text of the test."""
    by_id = {b["id"]: b for b in program["blocks"]}
    out: dict[str, Any] = {}
    for name, info in program.get("decisions", {}).items():
        entry = {"line": info["line"], "source": info["source"], "taken": {}}
        for bid, counts in stats.items():
            nxt = by_id[bid]["next"]
            if nxt.get("branch") == name or nxt.get("switch") == name:
                for side, n in counts.items():
                    entry["taken"][side] = entry["taken"].get(side, 0) + n
        if "branch" in str([by_id[b]["next"] for b in by_id if name in by_id[b]["next"].values()]):
            entry["taken"] = {"then": 0, "else": 0} | entry["taken"]
        out[name] = entry
    return out
