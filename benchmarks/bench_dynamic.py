"""Dynamic-network benchmark: for every model of the DyNN zoo (examples/dynamic/zoo.py), batch-1
latency per inference of
(a) PyTorch eager on the unmodified forward (torch.no_grad()),
(b) `torch.compile` on it (inductor, mode=None, fullgraph=False; graph breaks at the control flow),
    plus its cold compile time over every path the input pool takes,
(c) a whole-graph peer: the model rewritten with `torch.cond`, exported with
    `torch.onnx.export(dynamo=True)` to ONNX `If` and run on ONNX Runtime,
(d) hypercompile: static ONNX subgraphs plus a host program, interpreted on ONNX Runtime,
then the share of (d)'s time spent in the host interpreter and its ONNX Runtime calls per
inference. All contenders see the same pool of random inputs (the path taken depends on it).
Every model takes one 1x3x32x32 image except `branchynet_b8` (per-sample exit), which takes a
batch of eight: its latency is per batch. Two held-out models no one here wrote for the compiler
(tests/dyn_models.py) follow the zoo: `per_sample_exit_b8` (confident samples leave a batch of 8,
answers scattered back in order) and `token_dispatch` (12 tokens routed top-1 to 4 experts, each
expert run on the tokens it got). The models that return a list of path-dependent length
or stop decoding at a token (shallow_deep_outputs, ranet, captioner), branchynet_b8,
blockdrop_data and the held-out models have no torch.cond form here.

    python benchmarks/bench_dynamic.py [--models skipnet_ff,blockdrop] [--no-compile]
        [--rounds 20] [--pool 64] [--compile-timeout 120] [--torch-threads N]

Latency: each timing sample is one pass over the pool; the table shows the median over interleaved
rounds divided by the pool size. The whole run takes about 6 minutes on 2 cores (4 without
torch.compile); the torch.cond re-formulations are in this file.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import io
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Fresh inductor caches (one per model, below), so that the compile times are cold ones.
_INDUCTOR_CACHE = tempfile.mkdtemp(prefix="bench_dynamic_inductor_")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(_INDUCTOR_CACHE, "warmup")
atexit.register(shutil.rmtree, _INDUCTOR_CACHE, ignore_errors=True)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "examples" / "dynamic"))
sys.path.insert(0, str(ROOT / "tests"))

import dyn_models  # noqa: E402
from common import console, fmt_time, machine, measure, ratio, table  # noqa: E402
from zoo import ZOO  # noqa: E402

import hypercompile as hc  # noqa: E402

# held-out models no one here wrote for the compiler (tests/dyn_models.py): per-sample early
# exit at batch 8 and top-1 token dispatch with data-dependent expert batches, 12 tokens
HELD_OUT = {"per_sample_exit_b8": dyn_models.PerSampleExit, "token_dispatch": dyn_models.TokenMoE}
MODELS = {**ZOO, **HELD_OUT}


def make(name: str) -> nn.Module:
    """The model, the same weights in every process (the zoo seeds itself; the held-out models
    draw from torch's generator)."""
    torch.manual_seed(0)
    return MODELS[name]().eval()


def example_shape(model: nn.Module) -> torch.Size:
    """The first example input's shape (the zoo gives a method, the held-out an attribute)."""
    ex = model.example_inputs
    return (ex() if callable(ex) else ex)[0].shape


PARITY_INPUTS = 50
SHARE_INPUTS = 200
VERIFY_RTOL = 1e-4  # relative to the output's magnitude, like hypercompile's parity check


# ---------------------------------------------------------------------------------------------
# torch.cond re-formulations (whole-graph peer). Each wraps the zoo model and reuses its
# submodules (same weights); data-dependent Python control flow becomes torch.cond, which the
# dynamo exporter lowers to ONNX `If`. Early exits, `break` and the bounded `while` become nested
# conds (recursion at trace time), a top-1 switch becomes a chain of conds.
# ---------------------------------------------------------------------------------------------

Fn = Callable[..., torch.Tensor]


def _call(module: nn.Module) -> Fn:
    return lambda x: module(x)


def _copy(x: torch.Tensor) -> torch.Tensor:
    return x.clone()  # a cond branch may not return its input itself


def _residual(block: nn.Module) -> Fn:
    return lambda x, r: F.relu(r + block(x))


class _CondModel(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.m = model


class SkipNetFFCond(_CondModel):
    """Each gated block: torch.cond(gprob > 0.5, block, identity)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.m
        x = m.relu(m.bn1(m.conv1(x)))
        for g in range(3):
            for i in range(m.num_layers[g]):
                layer = getattr(m, f"group{g + 1}_layer{i}")
                if i == 0:
                    x = layer(x)
                    continue
                gprob = getattr(m, f"group{g + 1}_gate{i}")(x)
                x = torch.cond(gprob.squeeze() > 0.5, _call(layer), _copy, (x,))
        x = m.avgpool(x)
        return m.fc(x.view(x.size(0), -1))


class SkipNetRNNCond(_CondModel):
    """Each block after the first: torch.cond(gprob > 0.5, block, shortcut or identity); the LSTM
    gate's hidden state flows outside the conds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.m
        x = m.relu(m.bn1(m.conv1(x)))
        hidden = m.control.init_hidden(x.size(0))
        x = m.group1_layer0(x)
        gprob, hidden = m.control(m.group1_gate0(x), hidden)
        for g in range(3):
            for i in range(int(g == 0), m.num_layers[g]):
                ds = getattr(m, f"group{g + 1}_ds{i}")
                layer = getattr(m, f"group{g + 1}_layer{i}")
                x = torch.cond(
                    gprob.squeeze() > 0.5, _call(layer), _copy if ds is None else _call(ds), (x,)
                )
                if not (g == 2 and i == m.num_layers[g] - 1):
                    gprob, hidden = m.control(getattr(m, f"group{g + 1}_gate{i}")(x), hidden)
        x = m.avgpool(x)
        return m.fc(x.view(x.size(0), -1))


class ShallowDeepCond(_CondModel):
    """Early exit: cond(confident, this exit's logits, the rest of the network), nested."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._stage(0, self.m.init_conv(x))

    def _stage(self, i: int, fwd: torch.Tensor) -> torch.Tensor:
        m = self.m
        if i == len(m.layers):
            return m.classifier(m.end_layers(fwd))
        fwd = m.layers[i](fwd)
        out = m.internal_classifiers[i](fwd)
        conf = torch.max(F.softmax(out[0], dim=0))
        return torch.cond(
            conf >= m.confidence_thresholds[i],
            lambda o, f: o.clone(),
            lambda o, f: self._stage(i + 1, f),
            (out, fwd),
        )


class BlockDropCond(_CondModel):
    """Each residual block: cond(policy[t] > 0, relu(shortcut + block), shortcut)."""

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.m
        probs = torch.sigmoid(m.agent(F.avg_pool2d(inputs, 2)))
        policy = (probs > 0.5).float()
        x = m.seed_conv(inputs)
        t = 0
        for segment, num_blocks in enumerate(m.layer_config):
            for b in range(num_blocks):
                residual = m.ds[segment](x) if b == 0 else x
                x = torch.cond(
                    policy[:, t].sum() > 0,
                    _residual(m.blocks[segment][b]),
                    lambda x, r: r.clone(),
                    (x, residual),
                )
                t += 1
        x = m.avgpool(x)
        return m.fc(x.view(x.size(0), -1)), policy


class IterativeRefineCond(_CondModel):
    """The `while` is bounded by max_steps: unrolled into max_steps nested conds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.m.encoder(x)
        return self._step(0, h, self.m.head(h))

    def _step(self, k: int, h: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        m = self.m
        if k == m.max_steps:
            return logits
        conf = F.softmax(logits, dim=1).max()

        def refine(h: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            h = h + m.step_size * m.refine(h)
            return self._step(k + 1, h, m.head(h))

        return torch.cond(conf < m.threshold, refine, lambda h, lg: lg.clone(), (h, logits))


class TopOneMoECond(_CondModel):
    """Top-1 dispatch as a chain of conds: idx == 0 ? e0 : (idx == 1 ? e1 : ...)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.m
        x = m.stem(x)
        route_logits = m.router(F.adaptive_avg_pool2d(x, 1).flatten(1))
        route_probs = F.softmax(route_logits, dim=1)
        idx = route_logits.argmax(dim=1)
        gate = route_probs[0, idx].view(1, 1, 1, 1)
        return m.head(F.relu(x + gate * self._expert(0, idx.squeeze(), x)))

    def _expert(self, k: int, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        experts = self.m.experts
        if k == len(experts) - 1:
            return experts[k](x)
        return torch.cond(idx == k, _call(experts[k]), lambda x: self._expert(k + 1, idx, x), (x,))


class NestedIfLoopIfCond(_CondModel):
    """Outer if/else as one cond (the head moves into both branches, whose shapes differ);
    the loop with `break` as nested conds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.m
        x = m.stem(x)
        return torch.cond(
            x.mean() > m.t0, lambda x: m.head(self._blocks(0, x)), lambda x: m.head(m.alt(x)), (x,)
        )

    def _blocks(self, k: int, x: torch.Tensor) -> torch.Tensor:
        blocks = self.m.blocks
        x = blocks[k](x)
        if k == len(blocks) - 1:
            return x
        return torch.cond(x.abs().mean() > self.m.t1, _copy, lambda x: self._blocks(k + 1, x), (x,))


CONDS: dict[str, type[_CondModel]] = {
    "shallow_deep": ShallowDeepCond,
    "skipnet_ff": SkipNetFFCond,
    "skipnet_rnn": SkipNetRNNCond,
    "blockdrop": BlockDropCond,
    "iterative_refine": IterativeRefineCond,
    "top1_moe": TopOneMoECond,
    "nested_if_loop_if": NestedIfLoopIfCond,
}


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    eager: float | None = None
    eager_alone: float | None = None  # eager timed in a process of its own
    hc_alone: float | None = None  # the bundle timed in a process of its own
    compiled: float | None = None
    compile_note: str = "skipped (--no-compile)"
    compile_first_s: float | None = None
    compile_all_s: float | None = None
    compile_graphs: int | None = None
    cond: float | None = None
    cond_note: str = ""
    cond_export_s: float | None = None
    cond_ifs: int | None = None
    hc: float | None = None
    build_s: float | None = None
    subgraph_blocks: int | None = None
    host_share: float | None = None
    calls: tuple[float, int, int] | None = None
    diffs: dict[str, float] = field(default_factory=dict)
    spread: dict[str, float] = field(default_factory=dict)  # p90 / median per contender
    phases: dict[str, float] = field(default_factory=dict)  # wall seconds of each stage


def random_inputs(n: int, seed: int, shape: Sequence[int] = (1, 3, 32, 32)) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def as_arrays(out: Any) -> list[np.ndarray]:
    """A model's output (tensor, tuple of tensors, list of arrays, dict) as a list of arrays."""
    if isinstance(out, dict):
        out = list(out.values())
    if not isinstance(out, (tuple, list)):
        out = [out]
    return [o.detach().numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in out]


def compare(ref: Sequence[list[np.ndarray]], got: Sequence[list[np.ndarray]]) -> tuple[float, int]:
    """Largest absolute difference over all inputs and outputs, and the number of inputs whose
    outputs differ by more than VERIFY_RTOL of the output's magnitude."""
    worst, bad = 0.0, 0
    for r, o in zip(ref, got, strict=True):
        if len(r) != len(o):
            return float("inf"), len(ref)
        over = False
        for a, b in zip(r, o):
            d = float(np.abs(a.astype(np.float64) - b).max()) if a.size else 0.0
            worst = max(worst, d)
            over |= d > VERIFY_RTOL * max(1.0, float(np.abs(a).max()) if a.size else 1.0)
        bad += over
    return worst, bad


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException so that dynamo's error handling passes it on."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def _raise(signum: int, frame: Any) -> None:
        raise _Timeout

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def short(e: BaseException, n: int = 60) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg[:n]}" if msg else type(e).__name__


def quiet_loggers() -> None:
    """Graph-break warnings (counted below instead) and exporter chatter off."""
    torch._logging.set_logs(dynamo=logging.ERROR, inductor=logging.ERROR)
    for name in ("torch.onnx", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------------
# contenders
# ---------------------------------------------------------------------------------------------


def build_hc(model: nn.Module, out: Path, res: Result) -> hc.Bundle:
    t = time.perf_counter()
    path = hc.build(model, out=out, parity_inputs=PARITY_INPUTS)
    res.build_s = time.perf_counter() - t
    return hc.load(path)


def torch_compile(
    model: nn.Module,
    pool: list[torch.Tensor],
    limit_s: float,
    ref: list[list[np.ndarray]],
    res: Result,
) -> Callable[[torch.Tensor], Any] | None:
    """torch.compile (inductor); the first pass over the pool compiles every path it takes.
    Returns the compiled callable, or None with the reason in res.compile_note."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(dir=_INDUCTOR_CACHE)
    compiled = torch.compile(model, mode=None, fullgraph=False)
    outs = []
    t = time.perf_counter()
    try:
        with time_limit(limit_s), torch.no_grad():
            outs.append(as_arrays(compiled(pool[0])))
            res.compile_first_s = time.perf_counter() - t
            outs += [as_arrays(compiled(x)) for x in pool[1:]]
    except _Timeout:
        res.compile_note = f"timeout (>{limit_s:.0f}s)"
        torch._dynamo.reset()
        return None
    except Exception as e:  # report why it fails rather than hide it
        res.compile_note = f"fails: {type(e).__name__}"
        console.print(f"  torch.compile fails: {short(e, 200)}")
        torch._dynamo.reset()
        return None
    res.compile_all_s = time.perf_counter() - t
    res.compile_graphs = int(counters["stats"]["unique_graphs"])
    res.diffs["compile"], bad = compare(ref, outs)
    res.compile_note = ""
    if bad:
        res.compile_note = f"disagrees with eager on {bad}/{len(pool)} inputs"
        return None
    return compiled


def warm_up_inductor() -> float:
    """Compile a tiny conv net once, so that inductor's one-time start-up (imports, compiler
    probes) is not charged to the first model."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    t = time.perf_counter()
    with torch.no_grad():
        torch.compile(net)(torch.randn(1, 3, 8, 8))
    torch._dynamo.reset()
    return time.perf_counter() - t


def cond_session(
    name: str, model: nn.Module, pool: list[torch.Tensor], ref: list[list[np.ndarray]], res: Result
) -> Callable[[np.ndarray], Any] | None:
    """Export the torch.cond form to ONNX (If) and verify it on the pool; an ORT session runner,
    or None with the reason in res.cond_note."""
    if name not in CONDS:
        res.cond_note = "n/a (no torch.cond form)"
        return None
    cond_model = CONDS[name](model).eval()
    try:
        with torch.no_grad():
            _, bad = compare(ref[:8], [as_arrays(cond_model(x)) for x in pool[:8]])
    except Exception as e:
        res.cond_note = f"n/a (torch.cond form fails: {type(e).__name__})"
        console.print(f"  torch.cond form fails in eager: {short(e, 200)}")
        return None
    if bad:
        res.cond_note = "n/a (torch.cond form disagrees with eager)"
        return None
    t = time.perf_counter()
    try:
        prog = torch.onnx.export(cond_model, (pool[0],), dynamo=True, verbose=False)
    except Exception as e:
        res.cond_note = f"n/a (export fails: {type(e).__name__})"
        console.print(f"  torch.cond export fails: {short(e, 200)}")
        return None
    res.cond_export_s = time.perf_counter() - t
    proto = prog.model_proto
    res.cond_ifs = count_ops(proto.graph, "If")
    try:
        sess = ort_session(proto.SerializeToString())
    except Exception as e:
        res.cond_note = f"n/a (ORT cannot load: {type(e).__name__})"
        console.print(f"  ONNX Runtime cannot load the torch.cond graph: {short(e, 200)}")
        return None
    in_name = sess.get_inputs()[0].name
    outs = [sess.run(None, {in_name: x.numpy()}) for x in pool]
    res.diffs["cond"], bad = compare(ref, outs)
    if bad:
        res.cond_note = f"n/a (ONNX disagrees with eager on {bad}/{len(pool)} inputs)"
        return None
    return lambda x: sess.run(None, {in_name: x})


def ort_session(model: bytes) -> Any:
    """A plain ONNX Runtime session (ORT_ENABLE_ALL, default threads). Once a process has ONNX
    Runtime's global thread pool (hypercompile's runtime makes one for its program blocks), ORT
    requires every session to use it, so that is tried first; otherwise a per-session pool."""
    import onnxruntime as ort

    err: Exception | None = None
    for per_session in (False, True):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        so.use_per_session_threads = per_session
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # ORT prints its retries
                return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        except Exception as e:
            err = e
    assert err is not None
    raise err


def count_ops(graph: Any, op: str) -> int:
    """Nodes of type `op` in an ONNX graph, subgraphs (If branches) included."""
    n = 0
    for node in graph.node:
        n += node.op_type == op
        for attr in node.attribute:
            if attr.HasField("g"):
                n += count_ops(attr.g, op)
            for g in attr.graphs:
                n += count_ops(g, op)
    return n


class _TimedRunner:
    """Stands in for one program block's subgraph runner: times and counts its calls."""

    def __init__(self, inner: Any, acc: list[float]):
        self.inner = inner
        self.acc = acc  # [seconds inside subgraphs, calls]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        t = time.perf_counter()
        out = self.inner.run(feeds)
        self.acc[0] += time.perf_counter() - t
        self.acc[1] += 1
        return out


def host_share(bundle: hc.Bundle, in_name: str, xs: list[np.ndarray], res: Result) -> None:
    """Time inside subgraph calls vs whole `Bundle.run`, and subgraph calls per inference: the
    bundle runs the same program through an interpreter whose block runners are timed."""
    from hypercompile.runtime.program import ProgramRunner

    variant = bundle.manifest.variants[0]
    plain = bundle.load_runner(variant, "onnxruntime")
    acc = [0.0, 0]
    timed = {gid: _TimedRunner(r, acc) for gid, r in plain.runners.items()}
    # the bundle's runner cache is an internal: a benchmark may swap its entry
    bundle._runners[(variant.id, "onnxruntime")] = ProgramRunner(
        plain.program, plain.graph_inputs, timed
    )
    res.subgraph_blocks = sum(1 for b in plain.program.blocks.values() if b.graph)
    total, calls = 0.0, []
    for x in xs[:5]:
        bundle.run({in_name: x})  # warm
    acc[:] = [0.0, 0]
    for x in xs:
        before = acc[1]
        t = time.perf_counter()
        bundle.run({in_name: x})
        total += time.perf_counter() - t
        calls.append(acc[1] - before)
    del bundle._runners[(variant.id, "onnxruntime")]
    res.host_share = 1.0 - acc[0] / total
    res.calls = (float(np.mean(calls)), min(calls), max(calls))


def bench_model(name: str, args: argparse.Namespace, tmp: Path) -> Result:
    res = Result(name)
    model = make(name)
    shape = example_shape(model)  # 1x3x32x32, a batch of 8 (per-sample exits), 12 tokens
    pool = random_inputs(args.pool, seed=0, shape=shape)
    pool_np = [np.ascontiguousarray(x.numpy()) for x in pool]
    with torch.no_grad():
        ref = [as_arrays(model(x)) for x in pool]

    # hypercompile first: its ONNX Runtime sessions come before any other in the process
    with phase(res, "build"):
        bundle = build_hc(model, tmp / name, res)
    in_name = bundle.inputs[0]["name"]
    res.diffs["hc"], bad = compare(ref, [as_arrays(bundle.run({in_name: x})) for x in pool_np])
    if bad:
        console.print(f"  [red]hypercompile disagrees with eager on {bad}/{len(pool)} inputs")
    with phase(res, "cond export"):
        cond = cond_session(name, model, pool, ref, res)
    compiled = None
    if args.compile:
        with phase(res, "compile"):
            compiled = torch_compile(model, pool, args.compile_timeout, ref, res)

    def over_pool(f: Callable[[Any], Any], xs: list[Any]) -> Callable[[], None]:
        def run() -> None:
            for x in xs:
                f(x)

        return run

    fns = {
        "eager": over_pool(model, pool),
        "hc": over_pool(lambda x: bundle.run({in_name: x}), pool_np),
    }
    if compiled is not None:
        fns["compile"] = over_pool(compiled, pool)
    if cond is not None:
        fns["cond"] = over_pool(cond, pool_np)
    with phase(res, "timing"), torch.no_grad():
        stats = measure(fns, rounds=args.rounds)
    per = {k: v["median"] / len(pool) for k, v in stats.items()}
    res.spread = {k: v["p90"] / v["median"] for k, v in stats.items()}
    res.eager, res.hc = per["eager"], per["hc"]
    res.compiled, res.cond = per.get("compile"), per.get("cond")

    share_xs = [
        np.ascontiguousarray(x.numpy()) for x in random_inputs(SHARE_INPUTS, seed=1, shape=shape)
    ]
    with phase(res, "host share"):
        host_share(bundle, in_name, share_xs, res)
    torch._dynamo.reset()
    with phase(res, "eager alone"):
        res.eager_alone = eager_alone(name, args)
        res.hc_alone = eager_alone(name, args, bundle=tmp / name)
    return res


def eager_alone(name: str, args: argparse.Namespace, bundle: Path | None = None) -> float | None:
    """Eager's time per inference over the same pool in a fresh process that starts no ONNX
    Runtime session (no thread pool beside torch's), or with `bundle` the bundle's in a fresh
    process that runs no torch forward; median of rounds."""
    import json
    import subprocess

    cmd = [sys.executable, __file__, "--eager-alone", name, "--rounds", str(args.rounds)]
    if bundle is not None:
        cmd += ["--bundle", str(bundle)]
    cmd += ["--pool", str(args.pool)]
    if args.torch_threads:
        cmd += ["--torch-threads", str(args.torch_threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        return float(json.loads(done.stdout.strip().splitlines()[-1])["per_inference_s"])
    except (ValueError, IndexError, KeyError):
        console.print(f"  [red]eager alone failed: {short(RuntimeError(done.stderr), 200)}")
        return None


def time_eager_alone(name: str, args: argparse.Namespace) -> None:
    """The child of `eager_alone`: prints {"per_inference_s": ...}."""
    import json
    import statistics

    model = make(name)
    shape = example_shape(model)
    pool = random_inputs(args.pool, seed=0, shape=shape)
    call: Callable[[Any], Any] = model
    if args.bundle:
        bundle = hc.load(args.bundle)
        in_name = bundle.inputs[0]["name"]
        pool = [np.ascontiguousarray(x.numpy()) for x in pool]

        def call(x: Any) -> Any:
            return bundle.run({in_name: x})

    with torch.no_grad():
        for x in pool:  # warm-up
            call(x)
        times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            for x in pool:
                call(x)
            times.append((time.perf_counter() - t) / len(pool))
    print(json.dumps({"per_inference_s": statistics.median(times)}))


@contextlib.contextmanager
def phase(res: Result, label: str) -> Iterator[None]:
    t = time.perf_counter()
    try:
        yield
    finally:
        res.phases[label] = time.perf_counter() - t


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def fmt_s(s: float | None) -> str:
    return "-" if s is None else f"{s:.1f} s"


def fmt_diff(d: float | None) -> str:
    return "-" if d is None else f"{d:.1e}"


def report(results: list[Result], args: argparse.Namespace) -> None:
    cols = [
        "model",
        "eager",
        "torch.compile (+cold compile)",
        "torch.cond ONNX",
        "hypercompile ORT",
        "eager/hc",
        "eager alone",
        "hc alone",
        "alone/alone",
        "compile/hc",
        "cond/hc",
        "host share",
        "calls per inference",
        "build",
    ]
    title = (
        f"batch-1 latency per inference: mean over a pool of {args.pool} random inputs "
        f"(the same for all), median of {args.rounds} interleaved rounds"
    )
    t = table(title, cols)
    t.columns[0].no_wrap = True
    for c in t.columns[1:]:
        c.overflow = "fold"  # long failure reasons wrap rather than lose their end
    for r in results:
        if r.compiled is not None:
            comp = f"{fmt_time(r.compiled)} (+{r.compile_all_s:.0f}s)"
        else:
            comp = r.compile_note
        calls = "-" if r.calls is None else f"{r.calls[0]:.1f} ({r.calls[1]}-{r.calls[2]})"
        t.add_row(
            r.name,
            fmt_time(r.eager),
            comp,
            fmt_time(r.cond) if r.cond is not None else r.cond_note,
            fmt_time(r.hc),
            ratio(r.eager, r.hc),
            fmt_time(r.eager_alone),
            fmt_time(r.hc_alone),
            ratio(r.eager_alone, r.hc_alone),
            ratio(r.compiled, r.hc),
            ratio(r.cond, r.hc),
            "-" if r.host_share is None else f"{100 * r.host_share:.0f}%",
            calls,
            fmt_s(r.build_s),
        )
    console.print(t)

    t = table(
        "compile and export",
        [
            "model",
            "torch.compile: first call",
            "torch.compile: all paths",
            "FX graphs",
            "torch.cond export",
            "ONNX If nodes",
            "hc subgraphs",
        ],
    )
    for r in results:
        t.add_row(
            r.name,
            fmt_s(r.compile_first_s),
            fmt_s(r.compile_all_s),
            "-" if r.compile_graphs is None else str(r.compile_graphs),
            fmt_s(r.cond_export_s),
            "-" if r.cond_ifs is None else str(r.cond_ifs),
            "-" if r.subgraph_blocks is None else str(r.subgraph_blocks),
        )
    console.print(t)

    contenders = ("eager", "compile", "cond", "hc")
    t = table(
        "checks and noise",
        [
            "model",
            "max|d| compile",
            "max|d| cond",
            "max|d| hc",
            *(f"p90/median {k}" for k in contenders),
        ],
    )
    for r in results:
        t.add_row(
            r.name,
            *(fmt_diff(r.diffs.get(k)) for k in contenders[1:]),
            *("-" if k not in r.spread else f"{r.spread[k]:.2f}" for k in contenders),
        )
    console.print(t)
    notes = [
        "eager: the zoo's unmodified forward under torch.no_grad(). eager alone / hc alone: eager"
        " and the bundle each timed in a process of its own (no ONNX Runtime threads beside"
        " torch's, no torch forward beside the bundle), median of rounds; alone/alone: their"
        " ratio.",
        "torch.compile: inductor (mode=None, fullgraph=False) on that forward; Python control "
        "flow on tensor values graph-breaks, so it runs compiled pieces glued by Python. "
        "(+s): the first pass over the pool, which compiles every path it takes (fresh inductor "
        "cache per model, inductor's one-time start-up excluded); 'first call': the first input "
        "alone.",
        "torch.cond ONNX: the model rewritten by hand with torch.cond (in this file, same "
        "weights), exported with torch.onnx.export(dynamo=True) to one ONNX graph with If "
        "nodes, checked against eager on the pool, run on ONNX Runtime (ORT_ENABLE_ALL, on the "
        "process-wide ORT thread pool that hypercompile's runtime creates: ORT requires every "
        "later session to use it). Early exits, break and the max_steps-bounded while become "
        "nested Ifs, top-1 routing a chain of Ifs: whole-graph export needs that rewrite, "
        "hypercompile takes the model as written.",
        f"hypercompile ORT: hc.build of the unmodified model (parity on {PARITY_INPUTS} inputs), "
        "Bundle.run on ONNX Runtime. host share: the part of Bundle.run outside subgraph calls "
        "(interpreter, input checks); calls/inference: subgraph calls, mean (min-max); both over "
        f"{SHARE_INPUTS} other random inputs.",
        "max|d|: largest difference from eager over the pool. p90/median: spread of the timing "
        "samples (a large one means machine noise hit that contender).",
    ]
    for n in notes:
        console.print(n)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated subset of: {', '.join(MODELS)}"
    )
    ap.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="skip torch.compile (the slowest part)",
    )
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--pool", type=int, default=64, help="random inputs, cycled")
    ap.add_argument(
        "--compile-timeout",
        type=float,
        default=120.0,
        help="seconds allowed for torch.compile to warm every path of one model",
    )
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch intra-op threads for eager and torch.compile (default: torch's)",
    )
    ap.add_argument("--eager-alone", default=None, help=argparse.SUPPRESS)  # the child's side
    ap.add_argument("--bundle", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.eager_alone:
        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        time_eager_alone(args.eager_alone, args)
        return
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)} (known: {', '.join(MODELS)})")
    quiet_loggers()
    # exporter deprecation chatter, and the LSTM's flat-weights notice during export
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*were assigned during export.*")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    console.print(f"machine: {machine()}")
    results = []
    t0 = time.perf_counter()
    if args.compile:
        console.print(f"[dim]inductor warm-up {warm_up_inductor():.0f} s")
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            t = time.perf_counter()
            console.print(f"[dim]{name} ...")
            res = bench_model(name, args, Path(d))
            results.append(res)
            stages = ", ".join(f"{k} {v:.0f} s" for k, v in res.phases.items())
            console.print(f"[dim]{name} done in {time.perf_counter() - t:.0f} s ({stages})")
    console.print(f"[dim]total {time.perf_counter() - t0:.0f} s")
    report(results, args)


if __name__ == "__main__":
    main()
