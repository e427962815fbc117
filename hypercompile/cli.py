"""Command line: a thin skin over the Python API. User errors print one line and exit 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import HypercompileError, InputError

out = Console() if sys.stdout.isatty() else Console(width=140)
err = Console(stderr=True)


def _scalar(text: str) -> Any:
    """`3` -> 3, `0.5` -> 0.5, `true` -> True, anything else stays a string."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float, str, bool)) else text


def _pairs(items: tuple[str, ...], what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HypercompileError(f"{what} {item!r} must look like KEY=VALUE")
        pairs.append((key, value))
    return pairs


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _arch_text(v: dict[str, Any], m: dict[str, Any]) -> str:
    if "program" in v:
        n = len({b["graph"] for b in m["programs"][v["program"]]["blocks"] if b["graph"]})
        return f"{v['program']} ({n} subgraphs)"
    return f"{v['graph']} ({m['graphs'][v['graph']]['arch'][:8]})"


def _cond_text(cond: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in cond.items()) or "-"


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HypercompileError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(package_name="hypercompile")
def main() -> None:
    """Compile hypernetworks and dynamic networks into bundles, and run them without torch."""


@main.command()
@click.argument("model_ref")
@click.option("--target", "target", default=None, help="Target name or TOML path [x86-cpu].")
@click.option("--backend", "backends", multiple=True, help="Back end(s); default: the target's.")
@click.option("--where", multiple=True, help="Keep conditions with KEY in V1,V2,... (repeatable).")
@click.option("--out", "out_dir", default=None, help="Bundle directory [build/<model name>].")
@click.option("--rtol", default=1e-4, show_default=True, help="Parity tolerance (relative).")
@click.option(
    "--parity-inputs", type=int, default=None, help="Random parity inputs [3; 200 for dynamic]."
)
@click.option(
    "--tune-trials",
    type=int,
    default=None,
    help="TVM: MetaSchedule trials per graph, measured on this CPU; the database stays in the "
    "bundle and a rebuild into the same --out reuses it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def build(
    model_ref, target, backends, where, out_dir, rtol, parity_inputs, tune_trials, as_json
) -> None:
    """Build a bundle from MODEL_REF (path/file.py:NAME or package.module:NAME)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .builder import build as do_build

    where_map: dict[str, list[Any]] = {}
    for key, values in _pairs(where, "--where"):
        where_map.setdefault(key, []).extend(_scalar(v) for v in values.split(","))
    out_path = Path(out_dir or Path("build") / model_ref.rsplit(":", 1)[-1].lower())
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(
        *columns, console=err, transient=True, disable=as_json or not err.is_terminal
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        path = do_build(
            model_ref,
            target,
            out_path,
            backends=list(backends) or None,
            where=where_map or None,
            rtol=rtol,
            parity_inputs=parity_inputs,
            progress=progress,
            tune_trials=tune_trials,
        )
    manifest = json.loads((path / "manifest.json").read_text())
    summary = {
        "bundle": str(path),
        "target": manifest["target"]["name"],
        "variants": len(manifest["variants"]),
        "graphs": len(manifest["graphs"]),
        "build_s": manifest["build_s"],
        "max_rel": max(p["max_rel"] for v in manifest["variants"] for p in v["parity"].values()),
    }
    tuned = [g["tvm_tuning"] for g in manifest["graphs"].values() if "tvm_tuning" in g]
    if tuned:
        summary["tuning"] = {
            "trials_run": sum(t["trials_run"] for t in tuned),
            "tuning_s": round(sum(t["tuning_s"] for t in tuned), 3),
            "reused": sum(1 for t in tuned if t["reused"]),
        }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        out.print(
            f"built [bold]{path}[/]: {summary['variants']} variant(s), {summary['graphs']} "
            f"graph(s) for {summary['target']} in {summary['build_s']:.1f} s; "
            f"worst parity {summary['max_rel']:.2e} rel",
            highlight=False,
        )
        if tuned:
            t = summary["tuning"]
            out.print(
                f"TVM tuning: {t['trials_run']} trial(s) in {t['tuning_s']:.1f} s; "
                f"database reused for {t['reused']} of {len(tuned)} graph(s)",
                highlight=False,
            )


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--input", "inputs", multiple=True, help="NAME=FILE.npy (repeatable).")
@click.option("--cond", multiple=True, help="KEY=VALUE selecting the variant (repeatable).")
@click.option("--budget-ms", type=float, default=None, help="Latency budget in milliseconds.")
@click.option("--backend", default=None, help="Back end to run on; default: the target's order.")
@click.option("--out", "out_file", default=None, help="Write outputs to FILE.npz.")
@click.option("--json", "as_json", is_flag=True, help="Print outputs as JSON.")
def run(bundle, inputs, cond, budget_ms, backend, out_file, as_json) -> None:
    """Run a bundle on inputs saved as .npy files."""
    from .runtime import load

    feeds = {}
    for name, file in _pairs(inputs, "--input"):
        try:
            feeds[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"--input {name}: cannot read {file}: {e}") from None
    conds = {k: _scalar(v) for k, v in _pairs(cond, "--cond")}
    b = load(bundle)
    if budget_ms is not None:
        conds["budget_ms"] = budget_ms
    results = b.run(feeds, backend=backend, **conds)
    if out_file:
        np.savez(out_file, **results)
    if as_json:
        payload = {
            k: {"shape": list(v.shape), "dtype": v.dtype.name, "data": v.tolist()}
            for k, v in results.items()
        }
        click.echo(json.dumps({"outputs": payload}))
        return
    for name, value in results.items():
        arr = np.array2string(value, precision=4, threshold=20, edgeitems=3)
        out.print(
            f"[bold]{name}[/] {value.dtype.name}{escape(str(list(value.shape)))}", highlight=False
        )
        out.print(arr, markup=False, highlight=False)


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
def inspect(bundle, as_json) -> None:
    """Show a bundle's variants, graphs, sizes and parity."""
    from .runtime import load

    b = load(bundle)
    m = b.manifest
    if as_json:
        keep = ("producer", "target", "inputs", "outputs", "graphs", "variants", "programs")
        click.echo(json.dumps({k: m.get(k) for k in keep} | {"profile": m.get("profile", {})}))
        return
    size = sum((b.path / rel).stat().st_size for rel in m["files"])
    io = escape(", ".join(f"{s['name']}:{s['dtype']}{s['shape']}" for s in m["inputs"]))
    oo = escape(", ".join(f"{s['name']}:{s['dtype']}{s['shape']}" for s in m["outputs"]))
    out.print(
        f"[bold]{b.path}[/]  target {m['target']['name']}, {len(m['variants'])} variant(s), "
        f"{len(m['graphs'])} graph(s), {_human_bytes(size)}\n  inputs {io}\n  outputs {oo}",
        highlight=False,
    )
    table = Table(title="variants")
    for col in ("condition", "graph", "params", "bytes", "backends", "parity max abs", "max rel"):
        table.add_column(col, justify="right" if col not in ("condition", "backends") else "left")
    for v in m["variants"]:
        parity = v.get("parity", {})
        worst_abs = max((p["max_abs"] for p in parity.values()), default=float("nan"))
        worst_rel = max((p["max_rel"] for p in parity.values()), default=float("nan"))
        table.add_row(
            _cond_text(v["cond"]),
            _arch_text(v, m),
            f"{v['params']:,}",
            _human_bytes(v["bytes"]),
            ", ".join(v["artifacts"]),
            f"{worst_abs:.2e}",
            f"{worst_rel:.2e}",
        )
    out.print(table)
    programs = m.get("programs") or {}
    for pid, program in programs.items():
        users = [_cond_text(v["cond"]) for v in m["variants"] if v.get("program") == pid]
        out.print(program_tree(pid, program, ", ".join(users)))
    if programs:
        out.print(coverage_table(programs))


def program_tree(pid: str, program: dict[str, Any], label: str) -> Any:
    """The host program as a tree: blocks with their statements, decisions with the line of
    the test and how often each side was taken at build time."""
    from rich.tree import Tree

    blocks = {b["id"]: b for b in program["blocks"]}
    decisions = program.get("decisions", {})
    coverage = program.get("coverage", {})
    seen: set[int] = set()
    root = Tree(
        f"[bold]program {pid}[/] ({escape(label)}): {len(blocks)} blocks, "
        f"{len({b['graph'] for b in blocks.values() if b['graph']})} subgraphs"
    )

    def describe(b: dict) -> str:
        head = f"[cyan]b{b['id']}[/]"
        if b["graph"]:
            head += (
                f" [dim]{b['graph']}[/] {escape(', '.join(b['inputs']) or '-')} -> "
                f"{escape(', '.join(b['outputs']) or '-')}"
            )
        if b.get("loop_header"):
            head += " [magenta](loop header)[/]"
        extra = [f"{k} = {v['value']}" for k, v in b.get("assign", {}).items()]
        extra += [f"{d} = {s}" for d, s in b.get("moves", [])]
        if extra:
            head += f" [dim]host: {escape('; '.join(extra))}[/]"
        return head

    def walk(node: Any, bid: int) -> None:
        while True:
            if bid in seen:
                node.add(f"[dim]-> b{bid}[/]")
                return
            seen.add(bid)
            b = blocks[bid]
            node.add(describe(b))
            nxt = b["next"]
            if "goto" in nxt:
                bid = nxt["goto"]
                continue
            if "return" in nxt:
                node.add(f"[green]return[/] {escape(', '.join(nxt['return']))}")
                return
            name = nxt.get("branch") or nxt.get("switch")
            info = decisions.get(name, {})
            taken = coverage.get(name, {}).get("taken", {})
            where = f"line {info.get('line', '?')}: {escape(info.get('source', name))}"
            if "branch" in nxt:
                sub = node.add(f"[yellow]if[/] {where}")
                walk(sub.add(f"then [dim]({taken.get('then', 0)} of build inputs)[/]"), nxt["then"])
                walk(sub.add(f"else [dim]({taken.get('else', 0)})[/]"), nxt["else"])
            else:
                sub = node.add(f"[yellow]switch[/] {where}")
                for i, case in enumerate(nxt["cases"]):
                    walk(sub.add(f"case {i} [dim]({taken.get(str(i), 0)})[/]"), case)
            return

    walk(root, program["entry"])
    return root


def coverage_table(programs: dict[str, Any]) -> Any:
    table = Table(title="branch coverage at build time (parity inputs)")
    for col in ("program", "line", "decision", "taken", "never taken"):
        table.add_column(col)
    for pid, program in programs.items():
        for name, c in program.get("coverage", {}).items():
            taken = c.get("taken", {})
            never = [k for k, n in taken.items() if n == 0]
            table.add_row(
                pid,
                str(c.get("line")),
                escape(c.get("source", name)),
                ", ".join(f"{k}: {n}" for k, n in taken.items()),
                "[red]" + ", ".join(never) + "[/]" if never else "-",
            )
    return table


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print targets as JSON.")
def targets(as_json) -> None:
    """List the device targets shipped with hypercompile."""
    from .targets import list_targets

    found = list_targets()
    if as_json:
        click.echo(json.dumps([t.to_json() for t in found]))
        return
    table = Table(title="targets")
    for col in ("name", "arch", "back ends", "ORT providers", "TVM target", "memory"):
        table.add_column(col)
    for t in found:
        table.add_row(
            t.name,
            t.arch,
            ", ".join(t.backends),
            ", ".join(t.ort_providers),
            json.dumps(t.tvm_target) if t.tvm_target else "-",
            f"{t.memory_mb} MiB" if t.memory_mb else "-",
        )
    out.print(table)


if __name__ == "__main__":
    main()
