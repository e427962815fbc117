"""The bundle manifest: its schema as dataclasses, and the only code that reads or writes it.

A bundle is a folder: `manifest.json` plus the files it lists with their sha256 (graphs,
compiled artifacts, tensor files, stored checks). Weights are stored by content: `tensors` maps
each distinct tensor's id (see `tensors.tensor_id`) to the file that holds it, and a variant's
`weights` map its graphs' initializer names to tensor ids. Schema 1 (one weight file per
variant) is still read: `_read_schema_1` turns it into the same tables. Schema 3 adds
`generators` (a variant's weights made at bind time by a generator graph from a few stored
inputs, see `Generator`) and `weight_dtype` (floating weights stored as float16); a bundle that
uses neither is written as schema 2. `Manifest.load` parses
and checks the JSON (unknown, missing or repeated fields, wrong types, references that do not
resolve: a one-line BundleError naming the field); `Manifest.dump` writes it atomically.
Torch-free.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import BundleError, TargetError
from . import ir
from .conditions import cond_key, cond_problem
from .fields import Fields
from .targets import Target, parse_target
from .tensors import is_tensor_id, unique_keys

SCHEMA_VERSION = 3  # the newest; bundles without generators or fp16 weights are written as 2
READABLE_SCHEMAS = (1, 2, 3)
PLAIN_SCHEMA = 2
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 64 << 20


@dataclass
class TensorSpec:
    """An input or output: name, numpy dtype name, shape (ints; "batch" for the dynamic batch
    dimension; None for a dimension that varies otherwise)."""

    name: str
    dtype: str
    shape: list[int | str | None]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @staticmethod
    def from_json(data: Any, where: str) -> TensorSpec:
        f = Fields(data, where)
        spec = TensorSpec(f.str("name"), f.str("dtype"), f.list("shape"))
        f.done()
        for d in spec.shape:
            if not (d is None or d == "batch" or (type(d) is int and d >= 0)):
                raise BundleError(f"{where}.shape holds {d!r}, not a size, 'batch' or null")
        return spec


def _specs(f: Fields, key: str, default: Any = ...) -> list[TensorSpec]:
    raw = f.list(key, default)
    return [TensorSpec.from_json(s, f"{f.where}.{key}[{i}]") for i, s in enumerate(raw)]


def _sizes(data: dict, where: str) -> dict[str, int]:
    for rel, n in data.items():
        if type(n) is not int or n < 0:
            raise BundleError(f"{where}.{rel} must be a byte count")
    return dict(data)


@dataclass(frozen=True)
class StateSpec:
    """State a model keeps between calls, carried through its graph: the model attribute `key`
    goes in as graph input `input` and comes out, updated, as graph output `output`. Its value
    before the first call is stored in each variant's weight file under `input`."""

    key: str
    input: str
    output: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "input": self.input, "output": self.output}

    @staticmethod
    def from_json(data: Any, where: str) -> StateSpec:
        f = Fields(data, where)
        s = StateSpec(f.str("key"), f.str("input"), f.str("output"))
        f.done()
        return s


@dataclass
class Graph:
    """One ONNX graph: a whole architecture, or one block of a dynamic program. Its weights are
    bound per variant; `artifacts` maps a back end to its compiled file."""

    id: str
    path: str
    weights: list[str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dynamic_batch: bool = False
    artifacts: dict[str, str] = field(default_factory=dict)
    export_s: float = 0.0
    arch: str | None = None  # architecture signature (whole-architecture graphs)
    digest: str | None = None  # sha256 of the ONNX file (program blocks: dedup)
    artifact_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    tvm_tuning: dict[str, Any] | None = None
    exporter: str | None = None  # which exporter made it (see frontend/export.py)
    fixed_batch: str | None = None  # why the batch is fixed where it could have been dynamic
    state: list[StateSpec] = field(default_factory=list)  # state carried between calls
    # how the variants' weights are stored (materialize / generate), why, and the figures
    storage: dict[str, Any] | None = None

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]

    def user_io(self) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """The inputs and outputs a caller sees: the graph's, less the carried state."""
        ins = {s.input for s in self.state}
        outs = {s.output for s in self.state}
        return (
            [i for i in self.inputs if i.name not in ins],
            [o for o in self.outputs if o.name not in outs],
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "path": self.path,
            "weights": list(self.weights),
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "output_names": self.output_names,
            "dynamic_batch": self.dynamic_batch,
            "export_s": self.export_s,
            "artifacts": dict(self.artifacts),
        }
        for key in ("arch", "digest", "tvm_tuning", "exporter", "fixed_batch", "storage"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.artifact_info:
            out["artifact_info"] = self.artifact_info
        if self.state:
            out["state"] = [s.to_json() for s in self.state]
        return out

    @staticmethod
    def from_json(data: Any, where: str) -> Graph:
        f = Fields(data, where)
        g = Graph(
            id=f.str("id"),
            path=f.str("path"),
            weights=f.names("weights"),
            inputs=_specs(f, "inputs"),
            outputs=_specs(f, "outputs"),
            dynamic_batch=f.bool("dynamic_batch", False),
            artifacts=f.str_map("artifacts", {}),
            export_s=float(f.num("export_s", 0.0)),
            arch=f.get("arch", (str, type(None)), None),
            digest=f.get("digest", (str, type(None)), None),
            artifact_info=f.dict("artifact_info", {}),
            tvm_tuning=f.get("tvm_tuning", (dict, type(None)), None),
            exporter=f.get("exporter", (str, type(None)), None),
            fixed_batch=f.get("fixed_batch", (str, type(None)), None),
            storage=f.get("storage", (dict, type(None)), None),
            state=[
                StateSpec.from_json(s, f"{where}.state[{i}]")
                for i, s in enumerate(f.list("state", []))
            ],
        )
        if f.names("output_names", g.output_names) != g.output_names:
            raise BundleError(f"{where}.output_names disagree with its outputs")
        f.done()
        g.check_state(where)
        return g

    def check_state(self, where: str) -> None:
        """Each state tensor is one graph input and one graph output of the same dtype and
        shape, named once."""
        ins = {i.name: i for i in self.inputs}
        outs = {o.name: o for o in self.outputs}
        names = [s.input for s in self.state] + [s.output for s in self.state]
        if len(set(names)) != len(names) or len({s.key for s in self.state}) != len(self.state):
            raise BundleError(f"{where}.state names a tensor twice")
        for s in self.state:
            i, o = ins.get(s.input), outs.get(s.output)
            if i is None or o is None:
                raise BundleError(f"{where}.state {s.key!r} names no graph input or output")
            if (i.dtype, i.shape) != (o.dtype, o.shape):
                raise BundleError(f"{where}.state {s.key!r} changes dtype or shape in the graph")
        if self.state and len(self.state) >= len(self.outputs):
            raise BundleError(f"{where} has no outputs besides its state")


class TensorRef(NamedTuple):
    """Where a tensor is stored: its file, and its name there (schema 2: its id)."""

    file: str
    key: str


@dataclass
class Parity:
    """How a variant compared with PyTorch on one back end at build time (or `deferred`: the
    stored checks run on the device before first use)."""

    inputs: int
    against: str
    max_abs: float | None = None
    max_rel: float | None = None
    argmax_mismatches: int | None = None
    deferred: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"inputs": self.inputs, "against": self.against}
        for key in ("max_abs", "max_rel", "argmax_mismatches", "deferred"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @staticmethod
    def from_json(data: Any, where: str) -> Parity:
        f = Fields(data, where)
        p = Parity(
            inputs=f.int("inputs"),
            against=f.str("against"),
            max_abs=f.get("max_abs", (int, float, type(None)), None),
            max_rel=f.get("max_rel", (int, float, type(None)), None),
            argmax_mismatches=f.get("argmax_mismatches", (int, type(None)), None),
            deferred=f.get("deferred", (str, type(None)), None),
        )
        f.done()
        return p


@dataclass
class Variant:
    """One condition's compiled network: a graph or a program, its weights (graph initializer
    name -> tensor id), its artifacts per back end (a program's: one per block graph), and its
    parity record. `bytes` is the size of its weights."""

    id: str
    cond: dict[str, Any]
    weights: dict[str, str]
    artifacts: dict[str, str | list[str]]
    graph: str | None = None
    program: str | None = None
    params: int = 0
    bytes: int = 0
    quality: float | None = None
    parity: dict[str, Parity] = field(default_factory=dict)
    checks: str | None = None  # stored PyTorch answers, for artifacts checked on the device
    untested: list[str] = field(default_factory=list)  # built with --allow-untested despite
    weights_file: str | None = None  # schema 1: the variant's own weight file
    # weights made by a generator: {"generator": id, "inputs": {G input name -> tensor id}}
    # (the inputs stored for this condition; `weights` then holds only the other weights)
    generated: dict[str, Any] | None = None
    unverified: bool = False  # a condition not listed at build time (never in a manifest)

    def files(self) -> list[str]:
        """Every bundle file this variant itself names (its tensors' files aside)."""
        rels = [r for r in (self.weights_file, self.checks) if r]
        for art in self.artifacts.values():
            rels += art if isinstance(art, list) else [art]
        return rels

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "cond": dict(self.cond)}
        out.update({"graph": self.graph} if self.graph is not None else {"program": self.program})
        weights = self.weights_file if self.weights_file is not None else dict(self.weights)
        out.update(weights=weights, params=self.params, bytes=self.bytes, artifacts=self.artifacts)
        if self.quality is not None:
            out["quality"] = self.quality
        out["parity"] = {be: p.to_json() for be, p in self.parity.items()}
        if self.checks is not None:
            out["checks"] = self.checks
        if self.untested:
            out["untested"] = list(self.untested)
        if self.generated is not None:
            out["generated"] = {
                "generator": self.generated["generator"],
                "inputs": dict(self.generated["inputs"]),
            }
        return out

    @staticmethod
    def from_json(data: Any, where: str, schema: int = SCHEMA_VERSION) -> Variant:
        f = Fields(data, where)
        cond = f.dict("cond")
        problem = cond_problem(cond, f"{where}.cond")
        if problem:
            raise BundleError(problem)
        artifacts = f.dict("artifacts")
        for be, art in artifacts.items():
            ok = isinstance(art, str) or (
                isinstance(art, list) and all(isinstance(a, str) for a in art)
            )
            if not ok:
                raise BundleError(f"{where}.artifacts.{be} must be a path or a list of paths")
        v = Variant(
            id=f.str("id"),
            cond=dict(cond),
            weights={} if schema == 1 else f.str_map("weights"),
            weights_file=f.str("weights") if schema == 1 else None,
            artifacts=dict(artifacts),
            graph=f.get("graph", str, None),
            program=f.get("program", str, None),
            params=f.int("params", 0),
            bytes=f.int("bytes", 0),
            quality=f.get("quality", (int, float, type(None)), None),
            parity={
                be: Parity.from_json(p, f"{where}.parity.{be}")
                for be, p in f.dict("parity", {}).items()
            },
            checks=f.get("checks", (str, type(None)), None),
            untested=f.names("untested", []),
            generated=_generated(f.sub("generated", None)) if schema > 2 else None,
        )
        f.done()
        if (v.graph is None) == (v.program is None):
            raise BundleError(f"{where} must name exactly one of graph and program")
        if not v.artifacts:
            raise BundleError(f"{where}.artifacts is empty")
        return v


def _generated(f: Fields | None) -> dict[str, Any] | None:
    if f is None:
        return None
    out = {"generator": f.str("generator"), "inputs": f.str_map("inputs")}
    f.done()
    return out


@dataclass
class GenInput:
    """One input of a generator graph, by position: its value for a listed condition is stored
    per variant (`stored`), or is the condition's value at `key` (a number or nested list of
    numbers of `shape`); a condition not listed at build time can give it through `key`."""

    name: str
    dtype: str
    shape: list[int]
    stored: bool
    key: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        out.update(stored=self.stored, key=self.key)
        return out

    @staticmethod
    def from_json(data: Any, where: str) -> GenInput:
        f = Fields(data, where)
        i = GenInput(
            f.str("name"),
            f.str("dtype"),
            f.list("shape"),
            f.bool("stored"),
            f.get("key", (str, type(None)), None),
        )
        f.done()
        if not all(type(d) is int and d >= 0 for d in i.shape):
            raise BundleError(f"{where}.shape must be a list of sizes")
        if i.dtype not in GEN_INPUT_DTYPES:
            raise BundleError(
                f"{where}.dtype {i.dtype!r} is not one of {', '.join(GEN_INPUT_DTYPES)}"
            )
        if not i.stored and i.key is None:
            raise BundleError(f"{where} is neither stored nor taken from a condition key")
        return i


GEN_INPUT_DTYPES = ("float32", "float64", "float16", "int64", "int32")


@dataclass
class Generator:
    """A generator G (the hypernet, exported once): graph `graph` (its parameters are its
    weights, bound from `weights`: initializer name -> tensor id) maps `inputs` to the weights
    of target graph `target`; `outputs` maps each G output it uses to the target weight it
    gives (the build's storage choice and its figures are the target graph's `storage`)."""

    id: str
    graph: str
    target: str
    weights: dict[str, str]
    inputs: list[GenInput]
    outputs: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "graph": self.graph,
            "target": self.target,
            "weights": dict(self.weights),
            "inputs": [i.to_json() for i in self.inputs],
            "outputs": dict(self.outputs),
        }

    @staticmethod
    def from_json(data: Any, where: str) -> Generator:
        f = Fields(data, where)
        g = Generator(
            id=f.str("id"),
            graph=f.str("graph"),
            target=f.str("target"),
            weights=f.str_map("weights"),
            inputs=[
                GenInput.from_json(x, f"{where}.inputs[{i}]")
                for i, x in enumerate(f.list("inputs"))
            ],
            outputs=f.str_map("outputs"),
        )
        f.done()
        return g


@dataclass
class ProgramEntry:
    """A dynamic network's host program with its I/O and its build-time branch coverage."""

    host: ir.Program
    input_specs: list[TensorSpec]
    output_specs: list[TensorSpec]
    coverage: dict[str, Any] = field(default_factory=dict)
    fixed_batch: str | None = None  # why the inputs' batch is fixed, where it is

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.output_specs]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.host.to_json(),
            "coverage": self.coverage,
            "input_specs": [s.to_json() for s in self.input_specs],
            "output_specs": [s.to_json() for s in self.output_specs],
            "output_names": self.output_names,
            **({"fixed_batch": self.fixed_batch} if self.fixed_batch else {}),
        }

    @staticmethod
    def from_json(data: Any, where: str) -> ProgramEntry:
        host = ir.Program.from_json(data, where)
        f = Fields(data, where)
        p = ProgramEntry(
            host,
            _specs(f, "input_specs"),
            _specs(f, "output_specs"),
            f.dict("coverage", {}),
            f.get("fixed_batch", (str, type(None)), None),
        )
        if f.names("output_names", p.output_names) != p.output_names:
            raise BundleError(f"{where}.output_names disagree with its output_specs")
        n_out = [len(b.term.values) for b in host.blocks.values() if isinstance(b.term, ir.Return)]
        if not host.outputs_vary and any(n != len(p.output_specs) for n in n_out):
            raise BundleError(f"{where}: a return gives a different number of outputs")
        return p


@dataclass
class ProfiledVariant:
    cond: dict[str, Any]
    params: int | None
    results: dict[str, dict[str, dict[str, Any]]]  # back end -> batch -> measurements
    best_backend: str | None = None
    quality: float | None = None
    device_check: dict[str, Any] | None = None  # the stored checks run on the board (RPC)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cond": self.cond, "params": self.params, "results": self.results}
        out["best_backend"] = self.best_backend
        if self.quality is not None:
            out["quality"] = self.quality
        if self.device_check is not None:
            out["device_check"] = self.device_check
        return out

    @staticmethod
    def from_json(data: Any, where: str) -> ProfiledVariant:
        f = Fields(data, where)
        results = f.dict("results")
        for be, by_batch in results.items():
            if not isinstance(by_batch, dict) or not all(
                isinstance(r, dict) and isinstance(r.get("p90_ms"), (int, float))
                for r in by_batch.values()
            ):
                raise BundleError(f"{where}.results.{be} must map batches to measurements")
            if not all(str(b).isdigit() for b in by_batch):
                raise BundleError(f"{where}.results.{be} has a batch that is not a number")
        v = ProfiledVariant(
            cond=f.dict("cond"),
            params=f.get("params", (int, type(None)), None),
            results=results,
            best_backend=f.get("best_backend", (str, type(None)), None),
            quality=f.get("quality", (int, float, type(None)), None),
            device_check=f.get("device_check", (dict, type(None)), None),
        )
        f.done()
        return v


@dataclass
class Profile:
    """Timings of every variant on one device, keyed in the manifest by its fingerprint."""

    device: dict[str, Any]
    source: str
    created: str
    settings: dict[str, Any]
    notes: list[str]
    variants: dict[str, ProfiledVariant]
    rpc: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"device": self.device, "source": self.source}
        if self.rpc is not None:
            out["rpc"] = self.rpc
        out.update(
            created=self.created,
            settings=self.settings,
            notes=self.notes,
            variants={k: v.to_json() for k, v in self.variants.items()},
        )
        return out

    @staticmethod
    def from_json(data: Any, where: str) -> Profile:
        f = Fields(data, where)
        p = Profile(
            device=f.dict("device"),
            source=f.str("source"),
            created=f.str("created"),
            settings=f.dict("settings"),
            notes=f.names("notes", []),
            variants={
                k: ProfiledVariant.from_json(v, f"{where}.variants.{k}")
                for k, v in f.dict("variants").items()
            },
            rpc=f.get("rpc", (dict, type(None)), None),
        )
        f.done()
        return p


@dataclass
class Producer:
    name: str
    version: str
    torch: str | None = None
    onnx_opset: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}

    @staticmethod
    def from_json(data: Any, where: str) -> Producer:
        f = Fields(data, where)
        p = Producer(
            f.str("name"),
            f.str("version"),
            f.get("torch", (str, type(None)), None),
            f.get("onnx_opset", (int, type(None)), None),
        )
        f.done()
        return p


@dataclass
class Manifest:
    """The whole bundle description. `files` maps every bundle file to its sha256; `tensors`
    every distinct weight tensor's id to where it is stored, `weight_bytes` their total size."""

    producer: Producer
    target: Target
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    graphs: dict[str, Graph]
    variants: list[Variant]
    programs: dict[str, ProgramEntry] = field(default_factory=dict)
    profile: dict[str, Profile] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)  # bytes per file (bundles since 0.4)
    model: str = ""
    rtol: float = 1e-4
    build_s: float | None = None
    tensors: dict[str, TensorRef] = field(default_factory=dict)
    weight_bytes: int = 0  # unique weight bytes (each distinct tensor once)
    schema_version: int = PLAIN_SCHEMA
    generators: dict[str, Generator] = field(default_factory=dict)  # schema 3
    # "float16": floating weights are stored as float16 and bound as float32 (schema 3)
    weight_dtype: str | None = None
    # the condition keys a latency budget may choose (HyperModel.selectable()); every other
    # key must be given with a budget
    selectable: list[str] = field(default_factory=list)

    # -- reading -----------------------------------------------------------------------------
    def variant(self, vid: str) -> Variant:
        for v in self.variants:
            if v.id == vid:
                return v
        raise BundleError(f"no variant {vid!r} in the manifest")

    def io(self, v: Variant) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """A variant's input and output specs."""
        if v.program is not None:
            p = self.programs[v.program]
            return p.input_specs, p.output_specs
        return self.graphs[v.graph].user_io()  # type: ignore[index]

    def fixed_batch(self, v: Variant) -> str | None:
        """Why a variant takes only the example's batch size, where it could have taken any."""
        if v.program is not None:
            return self.programs[v.program].fixed_batch
        return self.graphs[v.graph].fixed_batch  # type: ignore[index]

    def state_of(self, v: Variant) -> list[StateSpec]:
        """The state a variant carries between calls (see `Bundle.stream`); [] when none."""
        return [] if v.graph is None else self.graphs[v.graph].state

    def graphs_of(self, v: Variant) -> list[str]:
        """The graphs a variant runs: its own, or those its program's blocks call."""
        if v.program is None:
            return [v.graph]  # type: ignore[list-item]
        return sorted({b.graph for b in self.programs[v.program].host.blocks.values() if b.graph})

    def weight_names(self, v: Variant) -> set[str]:
        """The initializer names a variant binds: its graphs' weights and initial state."""
        names = {
            w for gid in self.graphs_of(v) if gid in self.graphs for w in self.graphs[gid].weights
        }
        return names | {s.input for s in self.state_of(v)}

    def generated_names(self, v: Variant) -> set[str]:
        """The weight names a variant's generator makes (none for stored weights)."""
        if v.generated is None or v.generated["generator"] not in self.generators:
            return set()
        return set(self.generators[v.generated["generator"]].outputs.values())

    def generator_of(self, v: Variant) -> Generator | None:
        return None if v.generated is None else self.generators[v.generated["generator"]]

    # -- JSON ----------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "producer": self.producer.to_json(),
            "model": self.model,
            "target": self.target.to_json(),
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "graphs": {k: g.to_json() for k, g in self.graphs.items()},
            "variants": [v.to_json() for v in self.variants],
            "programs": {k: p.to_json() for k, p in self.programs.items()},
            "profile": {k: p.to_json() for k, p in self.profile.items()},
            "files": dict(self.files),
            "rtol": self.rtol,
        }
        if self.schema_version > 1:
            out["tensors"] = {tid: ref.file for tid, ref in self.tensors.items()}
            out["weight_bytes"] = self.weight_bytes
        if self.schema_version > 2:
            out["generators"] = {k: g.to_json() for k, g in self.generators.items()}
            if self.weight_dtype is not None:
                out["weight_dtype"] = self.weight_dtype
        if self.selectable:
            out["selectable"] = list(self.selectable)
        if self.sizes:
            out["sizes"] = dict(self.sizes)
        if self.build_s is not None:
            out["build_s"] = self.build_s
        return out

    @staticmethod
    def from_json(data: Any, where: str = MANIFEST) -> Manifest:
        f = Fields(data, where)
        version = f.get("schema_version", int, None)
        if version not in READABLE_SCHEMAS:
            raise BundleError(
                f"{where}: unsupported schema_version {version!r} (expected {SCHEMA_VERSION})"
            )
        try:
            target = parse_target(f.dict("target"), "bundle target")
        except TargetError as e:
            raise BundleError(f"{where}: the manifest's target is invalid: {e}") from None
        m = Manifest(
            producer=Producer.from_json(f.dict("producer"), f"{where}.producer"),
            target=target,
            inputs=_specs(f, "inputs"),
            outputs=_specs(f, "outputs"),
            graphs={k: Graph.from_json(g, f"graphs.{k}") for k, g in f.dict("graphs").items()},
            variants=[
                Variant.from_json(v, f"variants[{i}]", version)
                for i, v in enumerate(f.list("variants"))
            ],
            programs={
                k: ProgramEntry.from_json(p, f"programs.{k}")
                for k, p in f.dict("programs", {}).items()
            },
            profile={
                k: Profile.from_json(p, f"profile.{k}") for k, p in f.dict("profile", {}).items()
            },
            files=f.str_map("files", {}),
            sizes=_sizes(f.dict("sizes", {}), f"{where}.sizes"),
            model=f.str("model", ""),
            rtol=float(f.num("rtol", 1e-4)),
            build_s=f.get("build_s", (int, float, type(None)), None),
            schema_version=version,
            selectable=f.names("selectable", []),
        )
        if version == 1:
            m._read_schema_1()
        else:
            m.tensors = {tid: TensorRef(rel, tid) for tid, rel in f.str_map("tensors").items()}
            m.weight_bytes = f.int("weight_bytes")
        if version > 2:
            m.generators = {
                k: Generator.from_json(g, f"generators.{k}")
                for k, g in f.dict("generators", {}).items()
            }
            m.weight_dtype = f.get("weight_dtype", (str, type(None)), None)
            if m.weight_dtype not in (None, "float16"):
                raise BundleError(f"{where}.weight_dtype must be 'float16' or absent")
        f.done()
        m.validate(where)
        return m

    def _read_schema_1(self) -> None:
        """Schema 1 kept a variant's weights in one file of its own, by initializer name: each
        becomes a tensor of its own (no content address), named `<variant id>/<name>`."""
        for v in self.variants:
            if v.program is not None and v.program not in self.programs:
                continue  # `validate` names it
            if not all(gid in self.graphs for gid in self.graphs_of(v)):
                continue
            for name in sorted(self.weight_names(v)):
                tid = f"{v.id}/{name}"
                v.weights[name] = tid
                self.tensors[tid] = TensorRef(v.weights_file, name)  # type: ignore[arg-type]

    def validate(self, where: str = MANIFEST) -> None:
        """Cross-references: every variant names a graph or program that exists, conditions and
        weight files are not shared, programs call existing graphs."""
        if not self.variants:
            raise BundleError(f"{where}: the manifest lists no variants")
        if not self.outputs:
            raise BundleError(f"{where}: the manifest lists no outputs")
        for v in self.variants:  # (a program's block may have none: its effect is a check)
            if v.graph is not None and v.graph in self.graphs and not self.graphs[v.graph].outputs:
                raise BundleError(f"{where}: graph {v.graph} of variant {v.id} has no outputs")
        if not 0 < self.rtol < 1:
            raise BundleError(f"{where}.rtol {self.rtol} is outside (0, 1)")
        seen: dict[str, str] = {}
        owner: dict[str, str] = {}
        for v in self.variants:
            key = cond_key(v.cond)
            if key in seen:
                raise BundleError(f"{where}: variants {seen[key]} and {v.id} have one condition")
            seen[key] = v.id
            if v.checks is not None and owner.setdefault(v.checks, v.id) != v.id:
                raise BundleError(
                    f"{where}: variants {owner[v.checks]} and {v.id} share {v.checks}"
                )
            if v.graph is not None and v.graph not in self.graphs:
                raise BundleError(f"{where}: variant {v.id} names unknown graph {v.graph}")
            if v.program is not None and v.program not in self.programs:
                raise BundleError(f"{where}: variant {v.id} names unknown program {v.program}")
        for pid, p in self.programs.items():
            for b in p.host.blocks.values():
                g = self.graphs.get(b.graph) if b.graph else None
                if b.graph and g is None:
                    raise BundleError(f"{where}: program {pid} calls unknown graph {b.graph}")
                if g is not None and g.state:
                    raise BundleError(f"{where}: program {pid} calls stateful graph {b.graph}")
                if g is not None and (
                    len(g.inputs) != len(b.inputs) or len(g.outputs) != len(b.outputs)
                ):
                    raise BundleError(
                        f"{where}: program {pid} block {b.id} does not match graph {g.id}"
                    )
        self._validate_generators(where)
        self._validate_tensors(where)

    def _validate_generators(self, where: str) -> None:
        """A generator's graph exists, is no variant's or program's, takes exactly its inputs
        and weights, and gives each used output to one weight of a stateless target graph; a
        generated variant names a generator of its own graph and stores exactly the inputs it
        stores."""
        used = {v.graph for v in self.variants} | {
            b.graph for p in self.programs.values() for b in p.host.blocks.values()
        }
        for gid, gen in self.generators.items():
            w = f"{where}: generator {gid}"
            if gen.id != gid:
                raise BundleError(f"{w} is filed under another id ({gen.id!r})")
            g, t = self.graphs.get(gen.graph), self.graphs.get(gen.target)
            if g is None or t is None:
                raise BundleError(f"{w} names an unknown graph")
            if gen.graph in used or any(
                o.graph == gen.graph for o in self.generators.values() if o is not gen
            ):
                raise BundleError(f"{w}: graph {gen.graph} is also used elsewhere")
            if "onnxruntime" not in g.artifacts or g.state or t.state:
                raise BundleError(f"{w}: generators run on onnxruntime, on stateless graphs")
            if [i.name for i in gen.inputs] != g.input_names:
                raise BundleError(f"{w}.inputs differ from graph {gen.graph}'s inputs")
            for i, spec in zip(gen.inputs, g.inputs):
                if (i.dtype, list(i.shape)) != (spec.dtype, list(spec.shape)):
                    raise BundleError(f"{w}: input {i.name!r} differs from its graph's spec")
            if set(gen.weights) != set(g.weights):
                raise BundleError(f"{w}.weights differ from graph {gen.graph}'s weights")
            unknown = sorted(set(gen.outputs) - set(g.output_names))
            if unknown:
                raise BundleError(f"{w}.outputs names unknown output {unknown[0]!r}")
            made = list(gen.outputs.values())
            if len(set(made)) != len(made) or not set(made) <= set(t.weights):
                raise BundleError(f"{w}.outputs must give distinct weights of graph {gen.target}")
            bad = next((tid for tid in gen.weights.values() if tid not in self.tensors), None)
            if bad is not None:
                raise BundleError(f"{w} names unknown tensor id {bad}")
        for v in self.variants:
            if v.generated is None:
                continue
            gen = self.generators.get(v.generated["generator"])
            if gen is None or gen.target != v.graph:
                raise BundleError(
                    f"{where}: variant {v.id} names a generator that does not make its graph's "
                    "weights"
                )
            stored = {i.name for i in gen.inputs if i.stored}
            if set(v.generated["inputs"]) != stored:
                raise BundleError(f"{where}: variant {v.id} does not store its generator's inputs")
            for i in gen.inputs:
                if not i.stored and i.key not in v.cond:
                    raise BundleError(f"{where}: variant {v.id}'s condition has no {i.key!r}")
            bad = next((t for t in v.generated["inputs"].values() if t not in self.tensors), None)
            if bad is not None:
                raise BundleError(f"{where}: variant {v.id} names unknown tensor id {bad}")

    def _validate_tensors(self, where: str) -> None:
        """Every tensor id is a content address (schema 2), every variant binds exactly the
        names its graphs take, each to a tensor the manifest stores."""
        if self.schema_version > 1:
            bad = next((tid for tid in self.tensors if not is_tensor_id(tid)), None)
            if bad is not None:
                raise BundleError(f"{where}.tensors: {bad!r} is not a tensor id")
            if self.weight_bytes < 0:
                raise BundleError(f"{where}.weight_bytes must be a byte count")
        for v in self.variants:
            want = self.weight_names(v) - self.generated_names(v)
            missing = sorted(want - set(v.weights))
            if missing:
                raise BundleError(
                    f"{where}: variant {v.id} has no tensor for {', '.join(missing[:5])}"
                )
            extra = sorted(set(v.weights) - want)
            if extra:
                raise BundleError(
                    f"{where}: variant {v.id} names tensors for {', '.join(extra[:5])}, which "
                    "none of its graphs takes"
                )
            unknown = sorted({tid for tid in v.weights.values() if tid not in self.tensors})
            if unknown:
                raise BundleError(
                    f"{where}: variant {v.id} names unknown tensor id(s) {', '.join(unknown[:3])}"
                )

    # -- files ---------------------------------------------------------------------------------
    @staticmethod
    def load(root: Path) -> Manifest:
        """Read and check `root/manifest.json`."""
        path = root / MANIFEST
        if not root.is_dir():
            raise BundleError(f"{root} is not a bundle directory")
        if not path.is_file():
            raise BundleError(f"{root} has no {MANIFEST}: not a hypercompile bundle")
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path} is too large to be a manifest")
        try:
            data = json.loads(path.read_text(), object_pairs_hook=unique_keys)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BundleError(f"{path} is damaged: {first}") from None
        if not isinstance(data, dict):
            raise BundleError(f"{path} is damaged: not a JSON object")
        try:
            return Manifest.from_json(data, str(path))
        except RecursionError:
            raise BundleError(f"{path} is damaged: nested too deeply") from None

    def dump(self, root: Path) -> None:
        """Replace `root/manifest.json` atomically: a new file under a random name (never
        following a link planted there), then a rename over the old one."""
        text = json.dumps(self.to_json(), separators=(",", ":")) + "\n"
        tmp = root / f".{MANIFEST}.tmp-{uuid.uuid4().hex}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(tmp, flags, 0o644)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, root / MANIFEST)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
