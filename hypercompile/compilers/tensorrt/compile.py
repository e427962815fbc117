"""TensorRT: nothing is compiled on the build machine, since an engine only runs on the GPU and
TensorRT version that built it. Each ONNX graph gets a recipe instead (`tensorrt/<graph>.json`):
precision, the optimization profile, which weights vary between variants (refittable) and
which are built in, and the calibration data for int8. `compile` checks the graph against what
TensorRT's parser takes; `finalize`, once every variant is known, completes the recipe. The
device builds, caches and refits the engines (`hypercompile.runtime.runners.tensorrt`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...core import tensors as fmt
from ...errors import BuildError
from ...runtime.runners.tensorrt import CHECK_RTOL, Recipe
from ..base import Artifact, CompileOptions, Compiler
from .support import problems

CALIBRATION_DIR = "tensorrt/calibration"


class TensorRTCompiler(Compiler):
    name = "tensorrt"

    def can_build(self, target: Any) -> str | None:
        if "tensorrt" not in target.backends:
            return f"target {target.name} lists no tensorrt back end (it needs an NVIDIA GPU)"
        return None

    def compile(
        self,
        onnx: bytes,
        target: Any,
        *,
        graph_id: str,
        options: CompileOptions | None = None,
    ) -> Artifact:
        """The graph checked against TensorRT 10.3's ONNX parser, and its recipe so far."""
        import onnx as onnx_

        model = onnx_.load_model_from_string(onnx)
        found = problems(model)
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise BuildError(
                f"graph {graph_id} cannot be built by TensorRT on the device: {found[0]}{more}; "
                "build it without --backend tensorrt"
            )
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        precision = target.tensorrt_precision
        recipe = Recipe(
            graph=graph_id,
            graph_sha256=fmt.sha256_bytes(onnx),
            precision=precision,
            check_rtol=CHECK_RTOL[precision],
            profile={},
            refit=[],
            built_in={},
            opset=opset,
        )
        return Artifact(data=recipe.dumps(), suffix=".json")

    def finalize(
        self,
        data: bytes,
        graph: Any,
        weight_sets: list[dict[str, str]],
        target: Any,
        options: CompileOptions | None = None,
    ) -> Artifact:
        """The recipe completed: the optimization profile from the graph's inputs (a dynamic
        batch from 1 to the target's `tensorrt_max_batch`, at 1 for the edge), the weights that
        differ between the variants running this graph (refittable) and those all share (built
        in, by tensor id), and for int8 the calibration data."""
        recipe = Recipe.loads(data)
        recipe.profile = _profile(graph, int(target.tensorrt_max_batch))
        names = list(graph.weights)
        varying = {n for n in names if len({ws.get(n) for ws in weight_sets}) > 1}
        recipe.refit = [n for n in names if n in varying]
        recipe.built_in = {n: weight_sets[0][n] for n in names if n not in varying and weight_sets}
        files: dict[str, bytes] = {}
        calib = options.calib_data if options is not None else None
        if recipe.precision == "int8":
            rel = f"{CALIBRATION_DIR}/{graph.id}.safetensors"
            files[rel], samples = _calibration(graph, target, calib)
            recipe.calibration = {"file": rel, "samples": samples}
        info = {
            "precision": recipe.precision,
            "check_rtol": recipe.check_rtol,
            "refit": len(recipe.refit),
            "built_in": len(recipe.built_in),
            "max_batch": max((p["max"][0] for p in recipe.profile.values() if p["max"]), default=0),
            "tensorrt": recipe.tensorrt,
        }
        return Artifact(data=recipe.dumps(), suffix=".json", info=info, files=files)


def _profile(graph: Any, max_batch: int) -> dict[str, dict[str, list[int]]]:
    """min/opt/max shapes per input: the batch dimension from 1 to `max_batch` (opt 1), every
    other dimension fixed. A dimension that varies otherwise has no range to build for."""
    profile = {}
    for spec in graph.inputs:
        ranges = []
        for i, d in enumerate(spec.shape):
            if d == "batch":
                ranges.append((1, 1, max_batch))
            elif isinstance(d, int):
                ranges.append((d, d, d))
            else:
                raise BuildError(
                    f"graph {graph.id}: dimension {i} of input {spec.name!r} varies and is not "
                    "the batch, so TensorRT has no optimization profile for it; build it "
                    "without --backend tensorrt"
                )
        lo, opt, hi = ([r[k] for r in ranges] for k in range(3))
        profile[spec.name] = {"min": lo, "opt": opt, "max": hi}
    return profile


def _calibration(graph: Any, target: Any, folder: Path | None) -> tuple[bytes, int]:
    """The graph's int8 calibration inputs from `--calib-data DIR` (one NAME.npy per input,
    the first axis stacking samples), as the bytes of a tensor file and the sample count."""
    if folder is None:
        raise BuildError(
            f"target {target.name} asks TensorRT for int8: give --calib-data DIR (one NAME.npy "
            "per input, the first axis stacking samples)"
        )
    if graph.arch is None or graph.state:
        kind = "a dynamic program's block" if graph.arch is None else "a stateful graph"
        raise BuildError(
            f"graph {graph.id} is {kind}: int8 calibration takes the bundle's inputs, so use "
            "tensorrt_precision fp16 for it"
        )
    arrays, counts = {}, set()
    for spec in graph.inputs:
        path = folder / f"{spec.name}.npy"
        if not path.is_file():
            raise BuildError(f"--calib-data {folder}: no {spec.name}.npy for input {spec.name!r}")
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise BuildError(f"--calib-data {path}: {e}".splitlines()[0]) from None
        want = [1 if d == "batch" else d for d in spec.shape]
        if arr.dtype != np.dtype(spec.dtype) or [1, *arr.shape[1:]] != [1, *want[1:]]:
            raise BuildError(
                f"--calib-data {path}: {arr.dtype}{list(arr.shape)} does not stack inputs "
                f"{spec.name!r} of {spec.dtype}{spec.shape}"
            )
        arrays[spec.name] = np.ascontiguousarray(arr)
        counts.add(arr.shape[0] if arr.ndim else 0)
    if len(counts) != 1 or 0 in counts:
        raise BuildError(f"--calib-data {folder}: every input must stack the same samples (>= 1)")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "calibration.safetensors"
        fmt.write_tensors(path, arrays)
        return path.read_bytes(), counts.pop()


COMPILER = TensorRTCompiler()
