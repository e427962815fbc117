"""The build pipeline (needs torch): model -> materialized variants -> graphs -> compiled
artifacts -> a bundle checked against PyTorch."""

from .build import build, select_conditions

__all__ = ["build", "select_conditions"]
