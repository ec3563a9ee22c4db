"""conv: two convolution blocks with 2x downsampling, then a dense layer.

`Conv(32, relu, 10, rngs)` is the Flax MNIST example CNN: conv 32 3x3, avg-pool
2x, conv 64 3x3, avg-pool 2x, dense 256, dense 10. On CPU each convolution block (conv,
bias, activation, pooling) is one compiled kernel (models/fused_conv.py); elsewhere, and
wherever that kernel cannot run, the blocks are models/layers.py's patch products in XLA.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from models import fused_conv
from models.layers import (PatchConv, avg_pool_2x2, dropout as apply_dropout, patch_conv,
                           split_keys)


class Conv(nnx.Module):
    """Filters: `units` then 2*`units`; the dense layer has 8*`units` units."""

    def __init__(self, units: int, activation: Callable, num_classes: int, rngs: nnx.Rngs,
                 *, dropout: float = 0.0, input_shape=(28, 28)):
        h, w = input_shape[0] // 4, input_shape[1] // 4
        self.conv1 = PatchConv(1, units, 3, rngs=rngs)
        self.conv2 = PatchConv(units, 2 * units, 3, rngs=rngs)
        self.dense = nnx.Linear(h * w * 2 * units, 8 * units, rngs=rngs)
        self.out = nnx.Linear(8 * units, num_classes, rngs=rngs)
        self.activation = activation
        self.dropout = dropout
        # False: always the XLA form (tests compare the two; XLA's FLOP count cannot see
        # inside the kernel, so the cost analysis sets it too).
        self.fused_kernel = True

    def __call__(self, x: jax.Array, dropout_key: jax.Array | None = None,
                 dropout_rate: jax.Array | None = None) -> jax.Array:
        """Logits. `dropout_rate` (a population member's) replaces the built-in rate."""
        rate = self.dropout if dropout_rate is None else dropout_rate
        act = self.activation
        x = self._block(self.conv1, x[..., None])
        x = self._block(self.conv2, x)
        x = act(self.dense(x.reshape(x.shape[0], -1)))
        (key,) = split_keys(dropout_key, 1)
        return self.out(apply_dropout(x, rate, key))

    def _block(self, conv: PatchConv, x: jax.Array) -> jax.Array:
        """avg_pool_2x2(act(conv(x))): the CPU kernel where it can run, else the XLA form."""
        act = self.activation
        args = (x, conv.kernel[...], conv.bias[...])

        def xla_form(x, kernel, bias):
            return avg_pool_2x2(act(patch_conv(x, kernel, bias)))

        if not (self.fused_kernel and x.dtype == conv.kernel.dtype == jnp.float32
                and fused_conv.supports(act)):
            return xla_form(*args)
        fused = partial(fused_conv.conv_block, act)
        return jax.lax.platform_dependent(*args, cpu=fused, default=xla_form)
