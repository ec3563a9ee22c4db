"""The Flax model families, looked up by name in MODELS.

Every family has one constructor shape, `(units, activation, num_classes, rngs,
**options)`, takes images of shape (batch, 28, 28) and returns logits of shape
(batch, num_classes). A family's `options` are the extra keyword arguments it
accepts (e.g. `depth` for dense); bench passes only those.
"""

from __future__ import annotations

from dataclasses import dataclass

from models.conv import Conv
from models.dense import Dense
from models.recurrent import CELLS, Recurrent


@dataclass(frozen=True)
class ModelEntry:
    build: type
    units_meaning: str
    reference_units: int
    options: tuple[str, ...]


MODELS: dict[str, ModelEntry] = {
    "dense": ModelEntry(Dense, "width of each hidden layer (depth layers, default 2)",
                        512, ("depth", "dropout")),
    "conv": ModelEntry(Conv, "filters of the first conv block (then 2x units; dense 8x units)",
                       32, ("dropout",)),
    "recurrent": ModelEntry(Recurrent, "hidden-state size of the cell (lstm, gru or simple)",
                            128, ("cell", "dropout")),
}

__all__ = ["MODELS", "ModelEntry", "CELLS", "Conv", "Dense", "Recurrent"]
