"""ONNX Runtime: nothing to compile, the ONNX graph is the artifact (the run half binds the
weights as external initializers)."""

from __future__ import annotations

from typing import Any

from .base import Artifact, CompileOptions, Compiler


class OnnxRuntimeCompiler(Compiler):
    name = "onnxruntime"

    def available(self) -> str | None:
        # the build verifies every artifact through the runtime, so the build machine needs
        # ONNX Runtime itself
        from ..runtime.runners import get_runner_factory

        return get_runner_factory(self.name).available()

    def compile(
        self,
        onnx: bytes,
        target: Any,
        *,
        graph_id: str,
        options: CompileOptions | None = None,
    ) -> Artifact:
        return Artifact(data=onnx, suffix=".onnx", is_graph=True)


COMPILER = OnnxRuntimeCompiler()
