"""conv: two convolution blocks with 2x downsampling, then a dense layer.

`Conv(32, relu, 10, rngs)` is the Flax MNIST example CNN: conv 32 3x3, avg-pool
2x, conv 64 3x3, avg-pool 2x, dense 256, dense 10. `pooling` (the `--pooling` axis) says how
each block downsamples: `avg`, 2x2 average pooling (the default); `max`, 2x2 max pooling
(Keras' MaxPooling2D); `stride`, the block's convolution at stride 2 (SAME, as Keras'
Conv2D(strides=2, padding="same")) and no pooling. The parameters are the same for all three.

On CPU each convolution block (conv, bias, activation, pooling) is one compiled kernel
(models/fused_conv.py) where the kernel implements the block's pooling
(`fused_conv.runs_kernel`: avg only); elsewhere, and wherever that kernel cannot run, the
blocks are models/layers.py's patch products in XLA.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from models import fused_conv
from models.layers import (PatchConv, avg_pool_2x2, dropout as apply_dropout, max_pool_2x2,
                           patch_conv, split_keys)

# How a block downsamples 2x (the `pooling` axis of bench/contract/schema.py; a test checks
# both agree).
POOLINGS: tuple[str, ...] = ("avg", "max", "stride")


class Conv(nnx.Module):
    """Filters: `units` then 2*`units`; the dense layer has 8*`units` units."""

    def __init__(self, units: int, activation: Callable, num_classes: int, rngs: nnx.Rngs,
                 *, dropout: float = 0.0, pooling: str = "avg", input_shape=(28, 28)):
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        h, w = input_shape[0] // 4, input_shape[1] // 4
        stride = 2 if pooling == "stride" else 1
        self.conv1 = PatchConv(1, units, 3, rngs=rngs, stride=stride)
        self.conv2 = PatchConv(units, 2 * units, 3, rngs=rngs, stride=stride)
        self.dense = nnx.Linear(h * w * 2 * units, 8 * units, rngs=rngs)
        self.out = nnx.Linear(8 * units, num_classes, rngs=rngs)
        self.activation = activation
        self.dropout = dropout
        self.pooling = pooling
        # False: always the XLA form (tests compare the two; XLA's FLOP count cannot see
        # inside the kernel, so the cost analysis sets it too).
        self.fused_kernel = True

    @property
    def runs_kernel(self) -> bool:
        """Whether the blocks run the fused kernel on CPU: it is loaded, switched on, and
        implements this activation and pooling (on other platforms: never)."""
        return (self.fused_kernel and fused_conv.runs_kernel(self.pooling)
                and fused_conv.supports(self.activation))

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
        """The block (xla_block): the CPU kernel where it can run, else the XLA form."""
        act, pooling = self.activation, self.pooling
        args = (x, conv.kernel[...], conv.bias[...])

        def xla_form(x, kernel, bias):
            return xla_block(act, pooling, x, kernel, bias)

        if not (x.dtype == conv.kernel.dtype == jnp.float32 and self.runs_kernel):
            return xla_form(*args)
        fused = partial(fused_conv.conv_block, act)
        return jax.lax.platform_dependent(*args, cpu=fused, default=xla_form)


def xla_block(activation: Callable, pooling: str, x: jax.Array, kernel: jax.Array,
              bias: jax.Array) -> jax.Array:
    """One block in XLA: pool(activation(conv(x))) 2x2 (avg, max), or activation(conv(x)) at
    stride 2 (stride); SAME padding, kernel (k, k, C, O) as nnx.Conv's."""
    if pooling == "stride":
        return activation(patch_conv(x, kernel, bias, stride=2))
    pool = max_pool_2x2 if pooling == "max" else avg_pool_2x2
    return pool(activation(patch_conv(x, kernel, bias)))
