"""Layers shared by the model families, written for speed on XLA:CPU.

`PatchConv` computes a SAME, stride-1 convolution as one matrix product over
image patches (im2col) instead of XLA's convolution, which is slow on XLA:CPU in
a training loop: its kernel-gradient convolution above all, and small
convolutions inside `lax.scan` (jax-ml/jax#12868). A dot product suffers from
neither. Its parameters have the shapes of `nnx.Conv`'s, and a test checks that
both compute the same function.

For a single input channel (the first layer on MNIST) the patches are laid out
transposed, one row per kernel offset: the kernel gradient is then a plain matrix
product, where the (pixels, offsets) layout made XLA transpose the output gradient
first. Figures and commands for both choices: docs/measurements.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def shifted_images(x: jax.Array, size: int) -> list[jax.Array]:
    """The SAME-padded (B, H, W, C) image shifted by each kernel offset, row-major offsets."""
    pad = (size - 1) // 2  # as XLA SAME: the extra row/column of an even kernel goes after
    h, w = x.shape[1], x.shape[2]
    xp = jnp.pad(x, ((0, 0), (pad, size - 1 - pad), (pad, size - 1 - pad), (0, 0)))
    return [xp[:, i:i + h, j:j + w, :] for i in range(size) for j in range(size)]


def image_patches(x: jax.Array, size: int) -> jax.Array:
    """(B, H, W, C) -> (B, H, W, size*size*C): each pixel's SAME-padded neighbourhood.

    The last axis is ordered (row offset, column offset, channel), the order of a
    flattened (kh, kw, in, out) convolution kernel.
    """
    return jnp.concatenate(shifted_images(x, size), axis=-1)


def image_shifts(x: jax.Array, size: int) -> jax.Array:
    """(B, H, W, 1) -> (size*size, B*H*W): image_patches of one channel, transposed."""
    return jnp.stack([shifted.reshape(-1) for shifted in shifted_images(x, size)])


class PatchConv(nnx.Module):
    """A SAME, stride-1 2-D convolution computed as patches @ kernel."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(init(rngs.params(), shape))
        self.bias = nnx.Param(jnp.zeros((out_features,)))
        self.kernel_size = kernel_size

    def __call__(self, x: jax.Array) -> jax.Array:
        return patch_conv(x, self.kernel[...], self.bias[...])


def patch_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """PatchConv's computation for given parameters: kernel (k, k, C, O) as nnx.Conv's."""
    size = kernel.shape[0]
    flat = kernel.reshape(-1, kernel.shape[-1])
    if x.shape[-1] == 1:
        out = jnp.einsum("kn,ko->no", image_shifts(x, size), flat)
        return out.reshape(*x.shape[:-1], flat.shape[-1]) + bias
    return image_patches(x, size) @ flat + bias


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2 on (B, H, W, C), H and W even."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def dropout(x: jax.Array, rate: float | jax.Array, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; the identity when `key` is None (evaluation) or a Python rate is 0.

    `rate` may be a traced array (a population member's rate), never 0 there."""
    if key is None or (isinstance(rate, (int, float)) and rate == 0.0):
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def split_keys(key: jax.Array | None, n: int) -> list:
    """n independent dropout keys, or n Nones when there is no key (evaluation)."""
    return [None] * n if key is None else list(jax.random.split(key, n))
