"""Command line: a thin skin over the Python API. User errors print one line and exit 1."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .core.conditions import parse_value, show
from .errors import HypercompileError, InputError, ModelRefError

out = Console() if sys.stdout.isatty() else Console(width=140)
err = Console(stderr=True)


def _value(text: str, what: str) -> Any:
    """A condition value: JSON first (`3`, `true`, `"3"`, `[3,5,7]`), else the plain string."""
    try:
        return parse_value(text)
    except ValueError as e:
        raise HypercompileError(f"{what}: {e}") from None


def _pairs(items: tuple[str, ...], what: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HypercompileError(f"{what} {item!r} must look like KEY=VALUE")
        if any(k == key for k, _ in pairs):
            raise HypercompileError(f"{what} {key} is given twice")
        pairs.append((key, value))
    return pairs


# -- arguments: parsed and checked while click reads the command line, before any command imports
# the builder (and torch) or loads a bundle; a bad value is one line on stderr and exit 1
def _option(param: click.Parameter | None) -> str:
    return param.opts[0] if param is not None and param.opts else "value"


class _Number(click.ParamType):
    """An int or float option that must be finite and >= `low` (> `low` unless `inclusive`)."""

    def __init__(self, kind: type, low: float, *, inclusive: bool = True) -> None:
        self.kind, self.low, self.inclusive = kind, low, inclusive
        self.name = "integer" if kind is int else "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: Any) -> Any:
        what = "an integer" if self.kind is int else "a number"
        want = f"{what} {'>=' if self.inclusive else '>'} {self.low:g}"
        try:
            number = self.kind(value)  # int("2.5") fails too
        except (TypeError, ValueError):
            raise HypercompileError(f"{_option(param)} must be {want}, not {value!r}") from None
        if not math.isfinite(number) or not (
            number >= self.low if self.inclusive else number > self.low
        ):
            raise HypercompileError(f"{_option(param)} must be {want}, not {value}")
        return number


def _pairs_arg(ctx: Any, param: click.Parameter, values: tuple[str, ...]) -> list[tuple[str, str]]:
    """NAME=VALUE options (repeatable) -> [(NAME, VALUE), ...]."""
    return _pairs(values, _option(param))


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _cond_arg(ctx: Any, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    """--cond KEY=VALUE (repeatable) -> {KEY: JSON value or string}."""
    cond: dict[str, Any] = {}
    for key, value in _pairs(values, _option(param)):
        if key in cond:
            raise HypercompileError(f"{_option(param)} {key} is given twice")
        cond[key] = _value(value, f"{_option(param)} {key}")
    return cond


def _where_arg(ctx: Any, param: click.Parameter, values: tuple[str, ...]) -> dict[str, list[Any]]:
    """--where KEY=V1,V2,... (repeatable) -> {KEY: [V1, V2, ...]}; the values are JSON, so
    commas inside a list or object do not split (`ks=[3,5],[7,7]`), else plain strings."""
    where: dict[str, list[Any]] = {}
    for key, value in _pairs(values, "--where"):
        try:
            items = json.loads(f"[{value}]", parse_constant=_not_json)
        except ValueError as e:
            if "[" in value or "{" in value:
                first = str(e).splitlines()[0]
                raise HypercompileError(
                    f"--where {key}={value!r} is not valid JSON ({first})"
                ) from None
            items = None
        if items is None or not value.strip():
            texts = value.split(",")
            if not all(texts):
                raise HypercompileError(
                    f"--where {key}={value!r} has an empty value: use KEY=V1,V2"
                )
            items = [_value(v, f"--where {key}") for v in texts]
        where.setdefault(key, []).extend(items)
    return where


INPUT_DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


def _input_specs_arg(
    ctx: Any, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, tuple[list[int], str]]:
    """build --input NAME=1x3x32x32[:DTYPE] (repeatable) -> {NAME: (shape, dtype)}."""
    specs: dict[str, tuple[list[int], str]] = {}
    for name, text in _pairs(values, "--input"):
        shape, _, dtype = text.partition(":")
        dims = shape.lower().split("x")
        if not name.isidentifier():
            raise HypercompileError(f"--input {name!r}: NAME must be a parameter name of forward")
        if name in specs:
            raise HypercompileError(f"--input {name} is given twice")
        if not all(d.isascii() and d.isdigit() and int(d) > 0 for d in dims):
            raise HypercompileError(
                f"--input {name}={text}: the shape must be sizes >= 1 joined by x, like 1x3x32x32"
            )
        dtype = dtype or "float32"
        if dtype not in INPUT_DTYPES:
            raise HypercompileError(
                f"--input {name}: unknown dtype {dtype!r} (one of {', '.join(INPUT_DTYPES)})"
            )
        specs[name] = ([int(d) for d in dims], dtype)
    return specs


def _model_ref_arg(ctx: Any, param: click.Parameter, ref: str) -> str:
    """The form of a model reference (the loader imports it later, with torch)."""
    where, sep, name = ref.rpartition(":")
    if not sep or not where:
        raise ModelRefError(
            f"model reference {ref!r} must look like path/file.py:NAME or module:NAME"
        )
    if not name:
        raise ModelRefError(f"model reference {ref!r} names no object after ':'")
    if where.endswith(".py") and not Path(where).is_file():
        raise ModelRefError(f"model file {where} does not exist")
    return ref


def _target_arg(ctx: Any, param: click.Parameter, target: str | None) -> str | None:
    """A target name or TOML file that loads (targets are torch-free)."""
    if target is not None:
        from .core.targets import load_target

        load_target(target)
    return target


def _backends_arg(ctx: Any, param: click.Parameter, names: tuple[str, ...]) -> list[str]:
    from .compilers import compiler_names

    known = compiler_names()
    for name in names:
        if name != "auto" and name not in known:
            raise HypercompileError(
                f"unknown back end {name!r} (known: {', '.join(known)}, or auto)"
            )
    return list(names)


def _rpc_arg(ctx: Any, param: click.Parameter, address: str | None) -> str | None:
    if address is not None:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise HypercompileError(f"--rpc {address!r} must look like HOST:PORT")
    return address


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _arch_text(v: Any, m: Any) -> str:
    if v.program is not None:
        return f"{v.program} ({len(m.graphs_of(v))} subgraphs)"
    return f"{v.graph} ({(m.graphs[v.graph].arch or '')[:8]})"


def _cond_text(cond: dict[str, Any]) -> str:
    return " ".join(f"{k}={show(v)}" for k, v in cond.items()) or "-"


_BUILD_MODULES = {"torch", "onnx", "onnxscript"}  # what the runtime-only install lacks


class _Group(click.Group):
    """Every failure is one line on stderr: hypercompile's errors and the system's (a file that
    cannot be written) exit 1; anything else is a bug, reported as one line that says so (exit
    2), with the traceback under `--debug`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HypercompileError as e:
            _fail(str(e), 1)
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            _fail(f"{e.strerror or e}{where}", 1)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except ModuleNotFoundError as e:
            if e.name not in _BUILD_MODULES:
                raise
            _fail(
                f"this command needs {e.name}, which is not installed: building needs torch "
                "(install the build that fits the machine first, e.g. pip install "
                "torch==2.13.0) and pip install 'hypercompile[build]'",
                1,
            )
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001  # one line, not a traceback, unless --debug
            if ctx.params.get("debug"):
                raise
            text = str(e).strip().splitlines()[0] if str(e).strip() else ""
            _fail(
                f"internal error ({type(e).__name__}: {text}); this is a hypercompile bug: "
                "please report it with the command (--debug shows the traceback)",
                2,
            )


def _fail(message: str, code: int) -> None:
    """One line on stderr; with --json, also `{"error": ..., "exit_code": ...}` on stdout, so a
    script reading JSON gets JSON."""
    if "--json" in sys.argv[1:]:
        click.echo(json.dumps({"error": message, "exit_code": code}))
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hypercompile")
@click.option("--debug", is_flag=True, help="Show the traceback of an internal error.")
def main(debug: bool) -> None:
    """Compile hypernetworks and dynamic networks into bundles, and run them without torch."""


def _terminated(signum: int, frame: Any) -> None:
    raise HypercompileError("terminated (SIGTERM); nothing was written")


_GENERIC = {"model", "models", "main", "net", "network", "__init__", "hypernet"}
_FACTORY = {"make", "model", "build", "create", "get_model", "make_model"}


def _default_name(model_ref: str) -> str:
    """The bundle's default directory name: the model's file (its folder for a generic name
    such as model.py) and the factory, when the factory's name says more than `make`."""
    source, _, attr = model_ref.rpartition(":")
    if source.endswith(".py"):
        path = Path(source)
        stem = path.stem if path.stem not in _GENERIC else (path.parent.name or path.stem)
    else:
        stem = source.rsplit(".", 1)[-1]
    stem = stem.replace("_", "-") or "model"
    return stem if attr in _FACTORY else f"{stem}-{attr.lower()}"


@contextlib.contextmanager
def _progress_bar(quiet: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A transient progress bar on stderr, or where stderr is not a terminal (a log, CI) one
    line as each stage starts; yields the `progress(stage, done, total)` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    lines = not quiet and not err.is_terminal
    with Progress(*columns, console=err, transient=True, disable=quiet or lines) as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
                if lines:
                    err.print(f"{stage}: {total} step(s)", highlight=False, soft_wrap=True)
            bar.update(tasks[stage], completed=done, total=total)

        yield progress


@main.command(short_help="Build a bundle from a model file (path/file.py:NAME).")
@click.argument("model_ref", callback=_model_ref_arg)
@click.option(
    "--target",
    "target",
    default=None,
    callback=_target_arg,
    help="Target name or TOML path [x86-cpu].",
)
@click.option(
    "--backend",
    "backends",
    multiple=True,
    callback=_backends_arg,
    help="Back end(s): onnxruntime, tvm, tensorrt (repeatable); default: the target's; auto: "
    "all that build here, profiled briefly.",
)
@click.option(
    "--where",
    multiple=True,
    callback=_where_arg,
    help="Keep conditions with KEY in V1,V2,... (repeatable); values as for run --cond, "
    "commas inside [...] or {...} do not split.",
)
@click.option(
    "--input",
    "input_specs",
    multiple=True,
    callback=_input_specs_arg,
    help="NAME=SHAPE[:DTYPE], e.g. x=1x3x32x32 or ids=1x16:int64 (repeatable): example inputs "
    "for a plain nn.Module, one per forward parameter (random: floats normal, integers and "
    "booleans 0 or 1); DTYPE defaults to float32.",
)
@click.option("--out", "out_dir", default=None, help="Bundle directory [build/<model name>].")
@click.option(
    "--rtol",
    type=_Number(float, 0, inclusive=False),
    default=None,
    help="Parity tolerance (relative) [1e-4; 1e-2 with --weights fp16].",
)
@click.option(
    "--parity-inputs",
    type=_Number(int, 0),
    default=None,
    help="Random parity inputs [3; 200 for dynamic].",
)
@click.option(
    "--parity-data",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Folder with NAME.npy per input (first axis: samples): real inputs for the parity check.",
)
@click.option(
    "--allow-untested",
    is_flag=True,
    help="Build even when the parity check cannot fail (constant outputs, a branch side never "
    "taken); recorded in the bundle.",
)
@click.option(
    "--tune-trials",
    type=_Number(int, 1),
    default=None,
    help="TVM: MetaSchedule trials per graph, measured on this CPU (or a board: --tune-rpc); "
    "the database stays in the bundle and a rebuild into the same --out reuses it.",
)
@click.option(
    "--tune-rpc",
    default=None,
    metavar="HOST:PORT",
    help="With --tune-trials: a TVM RPC tracker; candidates built here are measured on the "
    "board registered there under --key.",
)
@click.option("--key", "tune_key", default=None, help="The board's device key (with --tune-rpc).")
@click.option(
    "--storage",
    type=click.Choice(["auto", "materialize", "generate"]),
    default="auto",
    show_default=True,
    help="Weights per architecture: every condition's (materialize), or the model's "
    "generator() with its inputs per condition (generate); auto: the smaller on disk.",
)
@click.option(
    "--weights",
    "weight_dtype",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="Store floating weights as float16 (computed in float32 at bind; parity recorded).",
)
@click.option(
    "--max-switch-ms",
    type=_Number(float, 0, inclusive=False),
    default=None,
    help="--storage auto: materialize an architecture whose generator takes longer than this "
    "to switch to a new condition (measured here).",
)
@click.option(
    "--calib-data",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="TensorRT int8: folder with NAME.npy per input (first axis: samples), stored in the "
    "bundle to calibrate the engines on the device.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def build(
    model_ref,
    target,
    backends,
    where,
    input_specs,
    out_dir,
    rtol,
    parity_inputs,
    parity_data,
    allow_untested,
    tune_trials,
    tune_rpc,
    tune_key,
    storage,
    weight_dtype,
    max_switch_ms,
    calib_data,
    as_json,
) -> None:
    """Build a bundle from MODEL_REF (path/file.py:NAME or package.module:NAME)."""
    from .builder import build as do_build  # imports torch: every argument is checked by now
    from .frontend.loader import random_inputs

    example = random_inputs(input_specs) if input_specs else None
    out_path = Path(out_dir or Path("build") / _default_name(model_ref))
    # killed by SIGTERM, the build still removes its temporary directory
    signal.signal(signal.SIGTERM, _terminated)
    with _progress_bar(quiet=as_json) as progress:
        path = do_build(
            model_ref,
            target,
            out_path,
            backends=backends or None,
            where=where or None,
            rtol=rtol,
            parity_inputs=parity_inputs,
            parity_data=parity_data,
            allow_untested=allow_untested,
            progress=progress,
            tune_trials=tune_trials,
            tune_rpc=tune_rpc,
            tune_key=tune_key,
            calib_data=calib_data,
            example_inputs=example,
            storage=storage,
            weights=weight_dtype,
            max_switch_ms=max_switch_ms,
        )
    from .core.manifest import Manifest

    manifest = Manifest.load(path)
    parities = [p for v in manifest.variants for p in v.parity.values()]
    summary = {
        "bundle": str(path),
        "target": manifest.target.name,
        "variants": len(manifest.variants),
        "graphs": len(manifest.graphs),
        "build_s": manifest.build_s,
        "max_rel": max(
            (p.max_rel for p in parities if p.max_rel is not None), default=float("nan")
        ),
        "deferred": sorted(
            {b for v in manifest.variants for b, p in v.parity.items() if p.deferred}
        ),
        "storage": {gid: g.storage["mode"] for gid, g in manifest.graphs.items() if g.storage},
        "weight_dtype": manifest.weight_dtype or "float32",
    }
    tuned = [g.tvm_tuning for g in manifest.graphs.values() if g.tvm_tuning is not None]
    if tuned:
        summary["tuning"] = {
            "trials_run": sum(t["trials_run"] for t in tuned),
            "tuning_s": round(sum(t["tuning_s"] for t in tuned), 3),
            "reused": sum(1 for t in tuned if t["reused"]),
            "functions": sum(t["functions"] for t in tuned),
            "tuned_functions": sum(t.get("tuned_functions", 0) for t in tuned),
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
        for gid, mode in summary["storage"].items():
            out.print(f"graph {gid}: weights {mode}d", highlight=False)
        for b in summary["deferred"]:
            out.print(
                f"{b} artifacts cannot run on this machine: their parity checks are stored in "
                "the bundle and run on the device before first use",
                highlight=False,
            )
        if tuned:
            t = summary["tuning"]
            out.print(
                f"TVM tuning: {t['trials_run']} trial(s) in {t['tuning_s']:.1f} s; faster "
                f"schedules for {t['tuned_functions']} of {t['functions']} function(s); "
                f"database reused for {t['reused']} of {len(tuned)} graph(s)",
                highlight=False,
            )


@main.command()
@click.argument("bundle", type=click.Path())
@click.option(
    "--input", "inputs", multiple=True, callback=_pairs_arg, help="NAME=FILE.npy (repeatable)."
)
@click.option(
    "--cond",
    multiple=True,
    callback=_cond_arg,
    help="KEY=VALUE selecting the variant (repeatable); VALUE is read as JSON (3, true, "
    "[3,5,7], '\"1\"' for the string 1), else taken as a plain string (en).",
)
@click.option(
    "--budget-ms",
    type=_Number(float, 0, inclusive=False),
    default=None,
    help="Latency budget: run the best matching variant whose profiled p90 here fits.",
)
@click.option(
    "--backend",
    default=None,
    help="Back end to run on: onnxruntime, tvm or tensorrt (the bundle's); default: the fastest "
    "profiled.",
)
@click.option("--device", default=None, help="Use the stored profile with this key (see inspect).")
@click.option("--out", "out_file", default=None, help="Write outputs to FILE.npz.")
@click.option("--json", "as_json", is_flag=True, help="Print outputs as JSON.")
@click.option(
    "--allow-unlisted",
    is_flag=True,
    help="Run a condition the bundle was not built for, when its generator can make its "
    "weights (unverified: no parity check covered it).",
)
@click.option(
    "--stream",
    is_flag=True,
    help="Stateful bundles: each input's first axis is a sequence of calls, run in order from "
    "the initial state; outputs are stacked the same way.",
)
def run(
    bundle, inputs, cond, budget_ms, backend, device, out_file, as_json, allow_unlisted, stream
) -> None:
    """Run a bundle on inputs saved as .npy files."""
    from .runtime import load
    from .runtime.bundle import batch_of

    feeds = {}
    for name, file in inputs:
        try:
            feeds[name] = np.load(file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise InputError(f"--input {name}: cannot read {file}: {e}") from None
    conds = dict(cond)
    b = load(bundle, device=device)
    selected = None
    if budget_ms is not None:
        choice = b.choose(budget_ms, batch_size=batch_of(feeds, b.inputs), backend=backend, **conds)
        conds, backend = dict(choice.variant.cond), choice.backend
        selected = {
            "cond": conds,
            "backend": backend,
            "p90_ms": choice.p90_ms,
            "batch": choice.batch,
            "profiled_batch": choice.profiled_batch,
            "budget_ms": budget_ms,
            "device": b.device_key(),
        }
    unverified = False
    if stream:
        results = _run_stream(b, feeds, backend, conds)
    else:
        import warnings

        from .errors import UnverifiedConditionWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnverifiedConditionWarning)  # said below instead
            results = b.run(feeds, backend=backend, allow_unlisted=allow_unlisted, **conds)
        unverified = allow_unlisted and b.select(allow_unlisted=True, **conds).unverified
    if out_file:
        np.savez(out_file, **results)
    if as_json:
        payload = {
            k: {"shape": list(v.shape), "dtype": v.dtype.name, "data": v.tolist()}
            for k, v in results.items()
        }
        extra = {"selected": selected} if selected else {}
        click.echo(json.dumps({"outputs": payload} | extra | {"unverified": unverified}))
        return
    if unverified:
        out.print(
            f"[yellow]unverified[/]: {escape(_cond_text(conds))} was not listed at build time; "
            "its weights come from the bundle's generator, unchecked against PyTorch",
            highlight=False,
        )
    elif selected:
        out.print(
            f"selected [bold]{escape(_cond_text(conds))}[/] on {backend}: p90 "
            f"{selected['p90_ms']:.4g} ms at batch {selected['profiled_batch']} <= budget "
            f"{budget_ms:g} ms",
            highlight=False,
        )
    for name, value in results.items():
        arr = np.array2string(value, precision=4, threshold=20, edgeitems=3)
        out.print(
            f"[bold]{name}[/] {value.dtype.name}{escape(str(list(value.shape)))}", highlight=False
        )
        out.print(arr, markup=False, highlight=False)


def _run_stream(b, feeds: dict, backend, conds: dict) -> dict:
    """Run a stateful bundle over a sequence of calls (the inputs' first axis)."""
    lengths = {a.shape[0] if a.ndim else None for a in feeds.values()}
    if len(lengths) != 1 or None in lengths:
        raise InputError("--stream: every input needs a first axis of the same length (calls)")
    s = b.stream(backend=backend, **conds)
    steps = [s.run({k: a[i] for k, a in feeds.items()}) for i in range(lengths.pop())]
    return {k: np.stack([r[k] for r in steps]) for k in (steps[0] if steps else {})}


@main.command()
@click.argument("bundle", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
def inspect(bundle, as_json) -> None:
    """Show a bundle's variants, graphs, sizes and parity."""
    from .runtime import load

    if as_json:
        from .api import inspect as summary

        click.echo(json.dumps(summary(bundle)))
        return
    b = load(bundle)
    m = b.manifest
    summed = sum(v.bytes for v in m.variants)
    size = sum((b.path / rel).stat().st_size for rel in m.files)
    io = escape(", ".join(f"{s.name}:{s.dtype}{s.shape}" for s in m.inputs))
    oo = escape(", ".join(f"{s.name}:{s.dtype}{s.shape}" for s in m.outputs))
    out.print(
        f"[bold]{b.path}[/]  target {m.target.name}, {len(m.variants)} variant(s), "
        f"{len(m.graphs)} graph(s), {_human_bytes(size)}\n  inputs {io}\n  outputs {oo}",
        highlight=False,
    )
    if m.schema_version > 1:  # schema 1 stored each variant's weights apart
        ratio = f" ({summed / m.weight_bytes:.2f}x)" if m.weight_bytes else ""
        out.print(
            f"  weights {_human_bytes(m.weight_bytes)} stored once each, "
            f"{_human_bytes(summed)} summed over the variants{ratio}",
            highlight=False,
        )
    keys = list(dict.fromkeys(k for v in m.variants for k in v.cond))
    if keys:
        fixed = [k for k in keys if k not in m.selectable]
        line = f"  a budget chooses {', '.join(m.selectable) or 'no key'}"
        out.print(line + (f"; give {', '.join(fixed)}" if fixed else ""), highlight=False)
    for line in storage_lines(m):
        out.print(line, highlight=False)
    table = Table(title="variants")
    for col in ("condition", "graph", "params", "bytes", "backends", "parity max abs", "max rel"):
        table.add_column(col, justify="right" if col not in ("condition", "backends") else "left")
    for v in m.variants:
        done = [p for p in v.parity.values() if p.max_abs is not None]
        worst_abs = max((p.max_abs for p in done), default=float("nan"))
        worst_rel = max((p.max_rel for p in done), default=float("nan"))
        table.add_row(
            _cond_text(v.cond),
            _arch_text(v, m),
            f"{v.params:,}",
            _human_bytes(v.bytes),
            ", ".join(
                b + (" (on device)" if b in v.parity and v.parity[b].deferred else "")
                for b in v.artifacts
            ),
            f"{worst_abs:.2e}",
            f"{worst_rel:.2e}",
        )
    out.print(table)
    for v in m.variants:
        for problem in v.untested:
            out.print(
                f"[yellow]untested[/] {escape(_cond_text(v.cond))}: {escape(problem)}",
                highlight=False,
            )
    for gid, g in m.graphs.items():
        if g.exporter is None or gid not in {v.graph for v in m.variants}:
            continue  # program blocks: one exporter, shapes from the program
        why = g.fixed_batch or "as given"
        batch = "dynamic batch" if g.dynamic_batch else f"fixed batch ({why})"
        state = (
            f"; [bold]stateful[/] (run with stream()): {escape(', '.join(s.key for s in g.state))}"
            if g.state
            else ""
        )
        out.print(f"graph {gid}: exported by {g.exporter}, {escape(batch)}{state}", highlight=False)
    native = [
        (gid, be, i)
        for gid, g in m.graphs.items()
        for be, i in g.artifact_info.items()
        if be != "tensorrt"
    ]
    if native:
        t = Table(title=f"compiled libraries (for {m.target.name}, {m.target.arch})")
        for col in ("graph", "back end", "machine code", "device code"):
            t.add_column(col)
        for gid, be, info in native[:50]:
            t.add_row(gid, be, str(info.get("elf")), _device_code(info))
        out.print(t)
    recipes = [
        (gid, g.artifact_info["tensorrt"])
        for gid, g in m.graphs.items()
        if "tensorrt" in g.artifact_info
    ]
    if recipes:
        t = Table(title="TensorRT recipes (engines are built on the device: hypercompile prepare)")
        for col in ("graph", "precision", "check rtol", "refittable", "built in", "max batch"):
            t.add_column(col)
        for gid, i in recipes[:50]:
            t.add_row(
                gid,
                str(i.get("precision")),
                f"{i.get('check_rtol', 0):g}",
                str(i.get("refit")),
                str(i.get("built_in")),
                str(i.get("max_batch") or "fixed"),
            )
        out.print(t)
    for pid, program in m.programs.items():
        users = [_cond_text(v.cond) for v in m.variants if v.program == pid]
        out.print(program_tree(pid, program, ", ".join(users)))
        batch = f"fixed batch ({program.fixed_batch})" if program.fixed_batch else "any batch"
        out.print(f"program {pid} runs at {escape(batch)}", highlight=False)
    if m.programs:
        out.print(coverage_table(m.programs))
    here = b.device_key()
    for key, entry in m.profile.items():
        out.print(profile_table(m, key, entry, here=key == here))
    if not m.profile:
        out.print(f"no profiles (this device: {here}); `hypercompile profile {b.path}` adds one")


def storage_lines(m: Any) -> list[str]:
    """How each architecture's weights are stored (`build --storage`), with the build's figures."""
    lines = []
    if m.weight_dtype:
        lines.append(f"  weights stored as {m.weight_dtype}, computed in float32")
    for gid, g in m.graphs.items():
        st = g.storage
        if not st:
            continue
        line = f"  graph {gid}: weights {st['mode']}d ({escape(st['chosen'])})"
        if "materialized_bytes" in st:
            line += (
                f"; on disk {_human_bytes(st['generated_bytes'])} generated (generator "
                f"{_human_bytes(st['generator_bytes'])}, inputs "
                f"{_human_bytes(st['input_bytes_per_variant'])} per variant) vs "
                f"{_human_bytes(st['materialized_bytes'])} materialized "
                f"({_human_bytes(st['bytes_per_variant'])} per variant)"
            )
        if "switch_ms" in st:
            line += (
                f"; first call on a new condition {st['switch_ms']:.3g} ms generated, "
                f"{st['materialized_switch_ms']:.3g} ms materialized; steady call "
                f"{st['call_ms']:.3g} ms (build machine)"
            )
        lines.append(line)
    for gen in m.generators.values():
        ins = ", ".join(
            f"{i.name} {i.dtype}{i.shape} "
            + ("stored per condition" if i.stored else f"= condition {i.key}")
            + (f", or {i.key}=... for one not listed" if i.stored and i.key else "")
            for i in gen.inputs
        )
        lines.append(
            f"  generator {gen.id} (graph {gen.graph}) makes {len(gen.outputs)} weight(s) of "
            f"graph {gen.target} from {escape(ins)}"
        )
    return lines


def program_tree(pid: str, entry: Any, label: str) -> Any:
    """The host program as a tree: blocks with their statements, decisions with the line of
    the test and how often each side was taken at build time."""
    from rich.tree import Tree

    from .core import ir

    prog: ir.Program = entry.host
    coverage = entry.coverage
    seen: set[int] = set()
    graphs = {b.graph for b in prog.blocks.values() if b.graph}
    root = Tree(
        f"[bold]program {pid}[/] ({escape(label)}): {len(prog.blocks)} blocks, "
        f"{len(graphs)} subgraphs"
    )
    for note in prog.dropped:
        root.add(f"[yellow]left out[/] {escape(note)}")

    def describe(b: ir.Block) -> str:
        head = f"[cyan]b{b.id}[/]"
        if b.graph:
            head += (
                f" [dim]{b.graph}[/] {escape(', '.join(b.inputs) or '-')} -> "
                f"{escape(', '.join(b.outputs) or '-')}"
            )
        if b.loop_header:
            head += " [magenta](loop header)[/]"
        extra = [f"{k} = {v.value}" for k, v in b.assign.items()]
        extra += [f"{d} = {s}" for d, s in b.moves]
        extra += [op.text() for op in b.lists]
        if extra:
            head += f" [dim]host: {escape('; '.join(extra))}[/]"
        checks = [f"{c.kind} (line {c.line})" for c in b.host_checks]
        if checks:
            head += f" [red]checks: {escape(', '.join(checks))}[/]"
        return head

    def walk(node: Any, bid: int) -> None:
        while True:
            if bid in seen:
                node.add(f"[dim]-> b{bid}[/]")
                return
            seen.add(bid)
            b = prog.blocks[bid]
            node.add(describe(b))
            t = b.term
            if isinstance(t, ir.Goto):
                bid = t.target
                continue
            if isinstance(t, ir.Return):
                node.add(f"[green]return[/] {escape(', '.join(t.values))}")
                return
            name = t.cond if isinstance(t, ir.Branch) else t.index
            info = prog.decisions.get(name)
            taken = coverage.get(name, {}).get("taken", {})
            where = (
                f"line {info.line}: {escape(info.source)}" if info else f"line ?: {escape(name)}"
            )
            if isinstance(t, ir.Branch):
                sub = node.add(f"[yellow]if[/] {where}")
                walk(sub.add(f"then [dim]({taken.get('then', 0)} of build inputs)[/]"), t.then)
                walk(sub.add(f"else [dim]({taken.get('else', 0)})[/]"), t.orelse)
            else:
                sub = node.add(f"[yellow]switch[/] {where}")
                for i, case in enumerate(t.cases):
                    walk(sub.add(f"case {i} [dim]({taken.get(str(i), 0)})[/]"), case)
            return

    walk(root, prog.entry)
    return root


def _device_code(info: dict[str, Any]) -> str:
    """A compiled library's GPU code as `inspect` says it: images, for which GPU, by which
    toolkit, with the CUDA ELF ABI (51/7: CUDA 12; 65/8: CUDA 13)."""
    dev = info.get("device_code", {})
    if dev.get("fatbins"):
        code = f"{dev['fatbins']} fatbin(s)"
    elif dev.get("cubins"):
        abis = ", ".join(f"{a}/{v}" for a, v in dev.get("elf_abi", []))
        code = f"{dev['cubins']} cubin(s), ELF ABI {abis}"
    else:
        return "CUDA source" if dev else "-"
    if info.get("sm"):
        tool = info.get("toolkit") or f"nvcc {info.get('nvcc', '?')}"
        code += f" for {info['sm']}, {tool}"
    if info.get("cuda"):
        code += f" (CUDA {info['cuda']})"
    return code


def coverage_table(programs: dict[str, Any]) -> Any:
    """Per program, every source-level decision with how often each side was taken."""
    table = Table(title="branch coverage at build time (parity inputs)")
    for col in ("program", "line", "decision", "taken", "never taken"):
        table.add_column(col)
    for pid, program in programs.items():
        for name, c in program.coverage.items():
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


@main.command(short_help="Time every variant here (or on a board) and store it.")
@click.argument("bundle", type=click.Path())
@click.option(
    "--backend",
    "backends",
    multiple=True,
    help="Back end(s) to time (onnxruntime, tvm, tensorrt), or auto: every one present, "
    "recording the fastest [auto].",
)
@click.option("--batch", "batches", type=_Number(int, 1), multiple=True, help="Batch size(s) [1].")
@click.option(
    "--warmup", type=_Number(int, 0), default=10, show_default=True, help="Untimed runs first."
)
@click.option(
    "--repeat",
    type=_Number(int, 1),
    default=100,
    show_default=True,
    help="Timed runs per measurement.",
)
@click.option(
    "--inputs",
    "inputs_dir",
    default=None,
    help="Folder with NAME.npy per input (first axis: samples); default: random inputs.",
)
@click.option("--plot", "plot_file", default=None, help="Write latency vs size to FILE.png.")
@click.option(
    "--plot-x",
    type=click.Choice(["auto", "quality", "params", "condition"]),
    default="auto",
    show_default=True,
    help="x axis of the plot; auto: the model's quality score where declared, else "
    "parameters where they differ, else the condition.",
)
@click.option(
    "--rpc",
    default=None,
    callback=_rpc_arg,
    help="HOST:PORT of a TVM RPC tracker: time on a board.",
)
@click.option("--key", default=None, help="The board's device key at the tracker (with --rpc).")
@click.option(
    "--timeout",
    type=_Number(float, 0, inclusive=False),
    default=60.0,
    show_default=True,
    help="RPC session timeout (s).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the stored profile as JSON.")
def profile(
    bundle,
    backends,
    batches,
    warmup,
    repeat,
    inputs_dir,
    plot_file,
    plot_x,
    rpc,
    key,
    timeout,
    as_json,
) -> None:
    """Time every variant on every back end here (or on a board through --rpc), and store the
    profile in the manifest under this device's fingerprint."""
    if rpc and not key:
        raise HypercompileError("--rpc needs --key (the device key the board registered with)")
    from .api import profile as do_profile
    from .core.manifest import Manifest

    with _progress_bar(quiet=as_json) as progress:
        result = do_profile(
            bundle,
            backends=list(backends) or None,
            batches=list(batches) or None,
            warmup=warmup,
            repeat=repeat,
            inputs=inputs_dir,
            plot=plot_file,
            plot_x=plot_x,
            rpc=rpc,
            key=key,
            timeout=timeout,
            progress=progress,
        )
    if as_json:
        click.echo(json.dumps(result))
        return
    manifest = Manifest.load(Path(bundle))
    device, plot_path = result["device"], result["plot"]
    entry = manifest.profile[device]
    out.print(profile_table(manifest, device, entry, here=not rpc))
    for table in program_tables(manifest, entry):
        out.print(table)
    for note in entry.notes:
        out.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    where = f"bundle {bundle}, device {device}"
    out.print(f"stored in {escape(where)}" + (f"; plot {plot_path}" if plot_path else ""))


def _ms(x: Any) -> str:
    return "-" if x is None else f"{x:.4g}"


def profile_table(m: Any, key: str, entry: Any, here: bool) -> Any:
    """One row per variant, back end and batch; the fastest back end of a variant is starred."""
    from .runtime.fingerprint import describe

    mark = " [green](this device)[/]" if here else ""
    title = f"profile {key}{mark}: {escape(describe(entry.device))}"
    table = Table(title=title, title_justify="left")
    cols = ("condition", "backend", "batch", "median ms", "p90 ms", "p99 ms", "spread ms")
    cols += ("switch ms", "peak MiB", "params", "MFLOP", "GFLOP/s", "quality")
    for col in cols:
        table.add_column(col, justify="left" if col in ("condition", "backend") else "right")
    for v in m.variants:
        rec = entry.variants.get(v.id)
        if rec is None:
            continue
        for be, by_batch in sorted(rec.results.items()):
            star = " *" if be == rec.best_backend and len(rec.results) > 1 else ""
            for b, r in sorted(by_batch.items(), key=lambda kv: int(kv[0])):
                flops = r.get("flops")
                table.add_row(
                    _cond_text(v.cond),
                    be + star,
                    b,
                    _ms(r["median_ms"]),
                    _ms(r["p90_ms"]),
                    _ms(r["p99_ms"]),
                    _ms(r["spread_ms"]),
                    _ms(r.get("switch_ms")),
                    _ms(r.get("peak_mem_mb")),
                    f"{v.params:,}",
                    "-" if flops is None else f"{flops / 1e6:.3g}",
                    _ms(r.get("gflops_per_s")),
                    "-" if v.quality is None else f"{v.quality:.4g}",
                )
    return table


def program_tables(m: Any, entry: Any) -> list[Any]:
    """Per-path latency and branch statistics of DyNN variants."""
    paths = Table(title="DyNN paths (profiled inputs)", title_justify="left")
    for col in ("condition", "backend", "batch", "path", "share", "median ms", "p90 ms", "MFLOP"):
        paths.add_column(col)
    branches = Table(title="DyNN branches (profiled inputs)", title_justify="left")
    for col in ("condition", "backend", "line", "decision", "taken"):
        branches.add_column(col)
    for v in m.variants:
        rec = entry.variants.get(v.id)
        for be, by_batch in sorted(rec.results.items() if rec else []):
            for b, r in by_batch.items():
                for p in r.get("paths", []):
                    flops = p.get("flops")
                    paths.add_row(
                        _cond_text(v.cond),
                        be,
                        b,
                        p["path"],
                        f"{p['share']:.0%}",
                        _ms(p["median_ms"]),
                        _ms(p["p90_ms"]),
                        "-" if flops is None else f"{flops / 1e6:.3g}",
                    )
                for c in r.get("branches", {}).values():
                    branches.add_row(
                        _cond_text(v.cond),
                        be,
                        str(c.get("line")),
                        escape(str(c.get("source"))),
                        ", ".join(f"{k}: {n}" for k, n in c.get("taken", {}).items()),
                    )
    return [t for t in (paths, branches) if t.row_count]


@main.command(short_help="On the device: ready, refit and check every engine.")
@click.argument("bundle", type=click.Path())
@click.option(
    "--cond",
    multiple=True,
    callback=_cond_arg,
    help="Only the variants matching KEY=VALUE (repeatable); default: all.",
)
@click.option("--backend", default="tensorrt", show_default=True, help="Back end to prepare.")
@click.option(
    "--cache",
    type=click.Path(file_okay=False),
    default=None,
    help="Engine cache folder [~/.cache/hypercompile].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def prepare(bundle, cond, backend, cache, as_json) -> None:
    """On the device: build (or fetch from the cache), refit and check every variant's engine
    ahead of first use."""
    from .runtime import load
    from .runtime import prepare as prepare_bundle

    b = load(bundle, engine_cache=cache)
    report = prepare_bundle(b, backend=backend, **cond)
    if as_json:
        click.echo(json.dumps(report))
        return
    table = Table(title=f"{backend} on this device ({b.path})")
    for col in ("condition", "engines", "built", "build s", "refitted", "checks max rel", "rtol"):
        table.add_column(col, justify="left" if col == "condition" else "right")
    for r in report:
        engines, checks = r["engines"], r["checks"] or {}
        table.add_row(
            _cond_text(r["cond"]),
            str(len(engines)),
            str(sum(e["built"] for e in engines)),
            f"{sum(e['build_s'] for e in engines):.1f}",
            str(sum(e["refitted"] for e in engines)),
            f"{checks.get('max_rel', float('nan')):.2e}",
            f"{checks.get('rtol', float('nan')):g}",
        )
    out.print(table)
    if not report:
        out.print(f"no variant of {b.path} has {backend} artifacts", highlight=False)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print targets as JSON.")
def targets(as_json) -> None:
    """List the device targets shipped with hypercompile."""
    from .core.targets import list_targets

    found = list_targets()
    if as_json:
        click.echo(json.dumps([t.to_json() for t in found]))
        return
    table = Table(title="targets")
    for col in ("name", "arch", "back ends", "ORT providers", "TVM target", "cross", "memory"):
        table.add_column(col)
    for t in found:
        tvm_bits = [t.tvm_tag] if t.tvm_tag else []
        tvm_bits += [json.dumps(d) for d in (t.tvm_target, t.tvm_host) if d]
        table.add_row(
            t.name,
            t.arch,
            ", ".join(t.backends),
            ", ".join(t.ort_providers),
            " + ".join(tvm_bits) or "llvm (this CPU)",
            t.cross_compiler or "-",
            f"{t.memory_mb} MiB" if t.memory_mb else "-",
        )
    out.print(table)


def entry() -> None:
    """The `hypercompile` program. On the way out, the objects left are frozen: the interpreter
    then frees them without its final search for reference cycles, which after torch.export
    takes about a second (a third of a small model's build)."""
    try:
        main()
    finally:
        gc.freeze()


if __name__ == "__main__":
    entry()
