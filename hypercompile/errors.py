"""One error family: every user-facing failure is a HypercompileError with a one-line message."""

from __future__ import annotations


class HypercompileError(Exception):
    """Base of every error hypercompile raises on purpose; the CLI prints it as one line."""


class ModelRefError(HypercompileError):
    """A model reference (`file.py:NAME`, `module:NAME`) cannot be resolved to a model."""


class BuildError(HypercompileError):
    """The front end or a back end cannot turn the model into a correct bundle."""


class UnsupportedModelError(BuildError):
    """The model uses a construct hypercompile cannot compile faithfully."""


class ParityError(BuildError):
    """A compiled variant does not match PyTorch within the tolerance."""


class TargetError(HypercompileError):
    """A target description is unknown or invalid."""


class BundleError(HypercompileError):
    """A bundle is missing, damaged (hash mismatch), or refers outside itself."""


class InputError(HypercompileError):
    """Inputs given to `run` do not match the bundle's input specification."""


class StateError(HypercompileError):
    """A stateful variant is run without a stream, or a stateless one through a stream."""


class ModelAssertionError(InputError):
    """An `assert` of the model's `forward` on tensor data failed: the inputs are outside what
    the model accepts (the message names the assert's file:line and its message)."""


class ConditionError(HypercompileError):
    """The condition given to `run` matches no variant, or more than one."""


class BackendError(HypercompileError):
    """A back end is unknown, not installed, or not available on this machine."""


class BudgetError(ConditionError):
    """No variant matching the condition fits the latency budget on this device."""


class ProfileError(HypercompileError):
    """The bundle has no profile for this device, or profiling itself failed."""


class UnverifiedConditionWarning(UserWarning):
    """A bundle runs a condition it was not built for (`allow_unlisted=True`): its weights come
    from the bundle's generator, but no parity check against PyTorch covered them."""
