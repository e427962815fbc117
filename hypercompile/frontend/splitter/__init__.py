"""Split a module's unmodified `forward` into straight-line blocks and a control-flow graph.

A partial evaluator walks the AST of `forward` (and of the methods and submodules it calls that
have data-dependent control flow or assign module state) with two kinds of names: *static*
ones, whose Python values are known at build time (the module, its attributes, loop counters of
unrolled loops, lists built with `append`), and *dynamic* ones, computed from tensors at run
time. Static `if`s are decided, loops over static iterables unrolled, static subexpressions
replaced by their values; what depends on tensors is emitted into blocks, and data-dependent
`if` / `while` / `break` / early `return` / `container[int(index)]` become branches, back edges,
exits and switches.

Asserts on tensor data, `warnings.warn` and logging calls become host checks of their block
(an `if` that only warns or logs adds no branch). A `with` whose manager comes from the model's
code (hyperlight's `using_externals(params)`) stays whole in one block, its body as written.

Modules: `state` (environments, blocks, frames, errors), `astutil` (AST helpers), `lowerer`
(`Lowerer`, the entry), and its parts `statements`, `checks` (host checks), `loops`, `joins`
(control-flow merges, module state cells), `lists` (host lists: lists of tensors whose length
depends on the path), `effects` (calls left out because they cannot reach an answer), `inline`
(inlined calls, switches), `withs` (`with` blocks kept whole) and `evaluate` (static evaluation
and the rewrite of run-time expressions).
"""

from .astutil import function_ast, has_control_flow
from .lowerer import Lowerer
from .state import (
    MAX_UNROLL,
    STATE_PREFIX,
    Block,
    Env,
    Frame,
    HardUnsupported,
    Loop,
    Poisoned,
    St,
    StaticLookupError,
    SymList,
    Unsupported,
)

__all__ = [
    "MAX_UNROLL",
    "STATE_PREFIX",
    "Block",
    "Env",
    "Frame",
    "HardUnsupported",
    "Loop",
    "Lowerer",
    "Poisoned",
    "St",
    "StaticLookupError",
    "SymList",
    "Unsupported",
    "function_ast",
    "has_control_flow",
]
