"""`Lowerer`: the partial evaluator that lowers `forward` into blocks, composed of the
statement, host check, loop, join, inlining and expression parts of this package."""

from __future__ import annotations

import ast
from typing import Any

import torch

from .astutil import function_ast
from .checks import ChecksMixin
from .effects import EffectsMixin
from .evaluate import EvaluateMixin
from .inline import InlineMixin
from .joins import JoinsMixin
from .lists import ListsMixin
from .loops import LoopsMixin
from .state import Block, Env, Frame, HardUnsupported, St, Unsupported, loc
from .statements import StatementsMixin
from .withs import WithsMixin


class Lowerer(
    StatementsMixin,
    WithsMixin,
    ChecksMixin,
    LoopsMixin,
    JoinsMixin,
    ListsMixin,
    EffectsMixin,
    InlineMixin,
    EvaluateMixin,
):
    """Lowers `root.forward` into blocks; see the package docstring."""

    def __init__(self, root: torch.nn.Module, opaque_state: bool = False):
        self.root = root
        # leave callees that assign module state to the exporter (unless they branch on data);
        # only sound when the result has no control flow and forward keeps no state (checked)
        self.opaque_state = opaque_state
        self.blocks: list[Block] = []
        self.consts: list[Any] = []
        self._counter = 0
        self.module_paths = {id(m): n for n, m in root.named_modules()}
        self.tensor_paths = {id(t): n for n, t in root.named_parameters()}
        self.tensor_paths |= {id(t): n for n, t in root.named_buffers()}
        self._inline_cache: dict[int, bool] = {}
        self.globals: dict[str, Any] = {}  # global names the blocks use, shared by all blocks
        self.decisions: dict[str, tuple[int, str]] = {}  # predicate/index name -> (line, source)
        self.cells: dict[tuple[int, str], str] = {}  # (module id, attribute) -> program name
        self.speculative = False  # a trial lowering: failed lookups are no errors
        self.outputs_vary = False  # a return holds a host list
        self.dropped: list[str] = []  # statements left out (nothing they do reaches an answer)
        self._reads: set[str] | None = None  # attribute names inference reads (effects)
        self.origins: dict[str, tuple[str, str]] = {}  # program name -> (user's name, file:line)

    def new_block(self) -> Block:
        b = Block(len(self.blocks))
        self.blocks.append(b)
        return b

    def fresh(self, stem: str) -> str:
        self._counter += 1
        return f"__{stem}{self._counter}"

    def lower_forward(self) -> tuple[Block, list[str]]:
        """Lower `forward`; returns the entry block and the names of its inputs."""
        fn = type(self.root).forward
        node, filename, globs = function_ast(fn)
        frame = Frame(globs, filename, "", None, stack=(fn,))
        for n in ast.walk(node):
            if isinstance(n, (ast.Yield, ast.YieldFrom)):
                raise HardUnsupported(f"{loc(frame, n)}: forward is a generator (yield)")
            if isinstance(n, (ast.Global, ast.Nonlocal)):
                raise HardUnsupported(f"{loc(frame, n)}: global/nonlocal state in forward")
        params = self._params(node, frame)
        if not params or params[0] != "self":
            raise Unsupported(f"{loc(frame, node)}: forward must be a method taking self")
        env = Env({"self": self.root})
        inputs = params[1:]
        for p in inputs:
            env.dynamic.add(p)
        entry = self.new_block()
        end = self.lower_body(node.body, St(entry, env), frame, None)
        if end is not None:  # fell off the end: returns None
            raise Unsupported(f"{loc(frame, node)}: forward can end without returning a value")
        return entry, inputs

    def _params(self, node: ast.FunctionDef, frame: Frame) -> list[str]:
        a = node.args
        if a.vararg or a.kwarg or a.kwonlyargs or a.posonlyargs:
            raise Unsupported(
                f"{loc(frame, node)}: *args, **kwargs and keyword-only "
                "parameters are not supported in split functions"
            )
        return [x.arg for x in a.args]
