"""The Flax model families, looked up by name in MODELS.

Every family has one constructor shape, `(units, activation, num_classes, rngs,
**options)`, takes images of shape (batch, 28, 28) and returns logits of shape
(batch, num_classes). Which options a family takes is said by the sweep axes
table (bench/contract/schema.py, an axis's `families`).

This module is the catalogue only and imports no JAX: `bench list`, `--help` and
sweep validation read it. A family's class is imported when a model is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelEntry:
    """A family: where its classes live, what `units` means, and its reference width."""

    path: str  # "module:Class", the `tuned` form
    units_meaning: str
    reference_units: int
    stock_path: str = ""  # the `flax` form: stock Flax NNX layers (models/stock.py)

    @property
    def build(self) -> type:
        """The family's nnx.Module class in its `tuned` form (imports JAX and Flax)."""
        return self.build_impl("tuned")

    def build_impl(self, impl: str) -> type:
        """The family's nnx.Module class in form `impl` (see IMPLS)."""
        module, _, name = (self.stock_path if impl == "flax" else self.path).partition(":")
        return getattr(importlib.import_module(module), name)


MODELS: dict[str, ModelEntry] = {
    "dense": ModelEntry("models.dense:Dense",
                        "width of each hidden layer (depth layers, default 2)", 512,
                        "models.stock:StockDense"),
    "conv": ModelEntry("models.conv:Conv",
                       "filters of the first conv block (then 2x units; dense 8x units)", 32,
                       "models.stock:StockConv"),
    "recurrent": ModelEntry("models.recurrent:Recurrent",
                            "hidden-state size of the cell (lstm, gru or simple)", 128,
                            "models.stock:StockRecurrent"),
}

# How a family is written (the `impl` axis): `tuned`, bench's own forms chosen for speed
# (patch-product convolutions, a fused CPU LSTM kernel, a hand-written recurrence
# gradient); `flax`, stock Flax NNX layers as a Flax user writes them. Same function.
IMPLS: dict[str, str] = {
    "tuned": "bench's own forms, chosen for speed (the default)",
    "flax": "stock Flax NNX layers: nnx.Conv, nnx.avg_pool, nnx.RNN over nnx's cells, nnx.Dropout",
}

# The recurrent cells by name; models/recurrent.py's CELLS defines them (a test checks both agree).
CELLS: tuple[str, ...] = ("lstm", "gru", "simple")

__all__ = ["MODELS", "ModelEntry", "CELLS", "IMPLS"]
