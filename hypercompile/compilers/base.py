"""The compile half of a back end, on the build machine only: ONNX graph -> artifact.

A `Compiler` is pure: `compile` turns the bytes of one ONNX graph, a target and options into an
`Artifact` (the artifact's bytes, what the manifest says about them, and any extra files), and
the builder writes them into the bundle. Running an artifact is the run half's business
(`hypercompile.runtime.runners`), which never imports this package."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TuneRequest:
    """Tune each graph for `trials` trials (TVM: MetaSchedule). `previous`: the tuning
    databases of the bundle being rebuilt ((graph id, its files by name) per tuned graph),
    reused where one matches the graph and target. `rpc`: (tracker host, port, device key) to
    measure on a board behind a TVM RPC tracker instead of this machine."""

    trials: int
    previous: tuple[tuple[str, dict[str, bytes]], ...] = ()
    rpc: tuple[str, int, str] | None = None
    # what this build's graphs tuned so far, by TIR function (structural hash): a function
    # another graph already tuned is not searched again (BlockDrop's identical residual blocks)
    tuned: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class CompileOptions:
    """What a build asks of every compiler beyond the graph and the target."""

    tune: TuneRequest | None = None
    calib_data: Path | None = None  # int8 calibration inputs (TensorRT), one NAME.npy per input


@dataclass(frozen=True)
class Artifact:
    """One compiled graph.

    `data`: the artifact's bytes, written to `<compiler name>/<graph id><suffix>` in the bundle;
    `info`: facts about those bytes for the manifest's `artifact_info` (machine code, device
    code), empty for none; `files`: extra outputs by bundle-relative path (TVM's tuning
    database); `is_graph`: the artifact is the ONNX graph itself, so the builder records the
    graph's own path instead of writing a copy."""

    data: bytes
    suffix: str
    info: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    is_graph: bool = False


class Compiler:
    """Base class. Subclasses live in `hypercompile/compilers/<name>` and import their
    toolchains lazily; `compile` keeps no state between calls."""

    name = ""

    def available(self) -> str | None:
        """None when this compiler is installed here, else a one-line reason."""
        return None

    def can_build(self, target: Any) -> str | None:
        """None when this machine has the tools to build for `target`, else what is missing.
        `target` is the one `compile_target` returned."""
        return None

    def compile_target(self, target: Any) -> Any:
        """`target` as this compiler compiles for it (TVM: its tag expanded, the host CPU filled
        in); the builder records it in the manifest when this compiler is used."""
        return target

    def compile(
        self,
        onnx: bytes,
        target: Any,
        *,
        graph_id: str,
        options: CompileOptions | None = None,
    ) -> Artifact:
        """Compile one ONNX graph (its weights are external stubs, bound at run time)."""
        raise NotImplementedError

    def finalize(
        self,
        data: bytes,
        graph: Any,
        weight_sets: list[dict[str, str]],
        target: Any,
        options: CompileOptions | None = None,
    ) -> Artifact | None:
        """The artifact `compile` made for `graph` (its manifest entry), completed once every
        variant is known: `weight_sets` holds, per variant running the graph, its weight name
        -> tensor id. None (the default): the artifact stays as it is."""
        return None
