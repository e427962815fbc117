"""The last stage of a build: load the finished bundle through the runtime and compare every
variant on every back end with PyTorch's answers; refuse the bundle past the tolerance."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import ir
from ..core import tensors as fmt
from ..core.manifest import MANIFEST, Manifest, Parity, Variant
from ..errors import BuildError, HypercompileError, ParityError
from ..frontend.materialize import cond_label
from ..runtime.bundle import Bundle
from ..runtime.checks import pack_checks, parity
from ..runtime.runners import get_runner_factory


@dataclass
class Check:
    """Inputs and PyTorch's answers for one variant, kept until the bundle is verified."""

    inputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    expected: list[list[np.ndarray]] = field(default_factory=list)
    against: str = "target"
    untested: list[str] = field(default_factory=list)  # what the inputs never exercised


def _argmax_differs(got: list[np.ndarray], want: list[np.ndarray]) -> bool:
    """Whether the first output's predicted class (argmax over the last axis) differs."""
    if not got or not want or got[0].shape != want[0].shape or got[0].ndim == 0:
        return False
    if got[0].dtype.kind != "f":
        return False
    return bool(np.any(np.argmax(got[0], axis=-1) != np.argmax(want[0], axis=-1)))


def verify_bundle(
    root: Path,
    manifest: Manifest,
    checks: list[Check],
    rtol: float,
    report: Callable[[str, int, int], None],
) -> None:
    """Hash every file, load the bundle through the runtime, and compare every variant on every
    back end with PyTorch; record parity and refuse the bundle if any exceeds `rtol`. Artifacts
    that cannot run on this machine (another CPU, a GPU it lacks) keep their check cases in the
    bundle, and the runtime runs them on the device before first use; so do those the device
    makes at every load (TensorRT engines, built or refitted there)."""
    manifest.rtol = rtol
    used = sorted({b for v in manifest.variants for b in v.artifacts})
    here = {b: get_runner_factory(b).runs_here(manifest.target) for b in used}
    # artifacts made on the device at load (TensorRT engines) are checked at every load
    every = {b for b in used if get_runner_factory(b).checks_every_load}
    for variant, check in zip(manifest.variants, checks):
        variant.parity = {}
        if any(here.get(b) or b in every for b in variant.artifacts):
            variant.checks = f"checks/{variant.id}.safetensors"
            (root / "checks").mkdir(exist_ok=True)
            fmt.write_tensors(root / variant.checks, pack_checks(check.inputs, check.expected))
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            manifest.files[p.relative_to(root).as_posix()] = fmt.sha256_file(p)
            manifest.sizes[p.relative_to(root).as_posix()] = p.stat().st_size
    manifest.dump(root)
    bundle = Bundle(root, cache_size=1, providers=["CPUExecutionProvider"])
    total = len(manifest.variants)
    for i, (variant, check) in enumerate(zip(manifest.variants, checks)):
        report("verify", i, total)
        for backend in variant.artifacts:
            if here.get(backend):
                variant.parity[backend] = Parity(
                    len(check.inputs),
                    check.against,
                    deferred=f"runs on the device: {here[backend]}",
                )
                continue
            variant.parity[backend] = _compare(bundle, manifest, variant, backend, check)
            rec = variant.parity[backend]
            limit = bundle.check_rtol(bundle.manifest.variant(variant.id), backend)
            if not rec.max_rel <= limit:  # type: ignore[operator]
                raise ParityError(
                    f"variant {cond_label(variant.cond)} on {backend}: max rel error "
                    f"{rec.max_rel:.3g} (max abs {rec.max_abs:.3g}) exceeds tolerance "
                    f"{limit:g} against the {check.against}"
                )
    report("verify", total, total)


def _compare(
    bundle: Bundle, manifest: Manifest, variant: Variant, backend: str, check: Check
) -> Parity:
    """Run every check case through the runtime's runner; a program also records how often
    each side of every decision was taken (the coverage `inspect` shows)."""
    worst_abs, worst_rel, mismatched = 0.0, 0.0, 0
    runner = bundle.load_runner(bundle.manifest.variant(variant.id), backend)
    cov = ir.Coverage() if variant.program is not None else None
    for feeds, want in zip(check.inputs, check.expected):
        try:
            got = runner.run(feeds) if cov is None else runner.run(feeds, cov)
        except HypercompileError:
            raise
        except Exception as e:  # the back end itself failed on this variant
            first = str(e).strip().splitlines()[-1] if str(e).strip() else ""
            raise BuildError(
                f"variant {cond_label(variant.cond)} on {backend} fails to run: "
                f"{type(e).__name__}: {first[:200]}"
            ) from None
        a, r = parity(got, want)
        worst_abs, worst_rel = max(worst_abs, a), max(worst_rel, r)
        mismatched += int(_argmax_differs(got, want))
    if cov is not None:
        entry = manifest.programs[variant.program]  # type: ignore[index]
        entry.coverage = ir.source_coverage(entry.host, cov.counts)
    return Parity(
        len(check.inputs),
        check.against,
        max_abs=worst_abs,
        max_rel=worst_rel,
        argmax_mismatches=mismatched,
    )
