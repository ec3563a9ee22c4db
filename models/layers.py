"""Layers shared by the model families, written for speed on XLA:CPU.

`PatchConv` computes a SAME convolution (stride 1, or 2 for the CNN's `--pooling
stride`) as one matrix product over image patches (im2col) instead of XLA's
convolution, which is slow on XLA:CPU in a training loop: its kernel-gradient
convolution above all, and small convolutions inside `lax.scan` (jax-ml/jax#12868).
A dot product suffers from neither. Its parameters have the shapes of `nnx.Conv`'s, and a
test checks that both compute the same function.

For a single input channel (the first layer on MNIST) the patches are laid out
transposed, one row per kernel offset: the kernel gradient is then a plain matrix
product, where the (pixels, offsets) layout made XLA transpose the output gradient
first. Figures and commands for both choices: docs/measurements.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def same_padding(length: int, size: int, stride: int = 1) -> tuple[int, tuple[int, int]]:
    """XLA's (and Keras') SAME padding of one axis: (output length, (before, after)).

    The output has ceil(length / stride) positions; the padding they need is split with the
    odd one after (an even kernel at stride 1; a 3x3 kernel at stride 2 on an even axis pads
    only after)."""
    out = -(-length // stride)
    total = max((out - 1) * stride + size - length, 0)
    return out, (total // 2, total - total // 2)


def shifted_images(x: jax.Array, size: int, stride: int = 1) -> list[jax.Array]:
    """The SAME-padded (B, H, W, C) image shifted by each kernel offset, row-major offsets,
    each taken at every `stride`-th row and column: (B, H', W', C), H' = ceil(H / stride)."""
    h, rows = same_padding(x.shape[1], size, stride)
    w, cols = same_padding(x.shape[2], size, stride)
    xp = jnp.pad(x, ((0, 0), rows, cols, (0, 0)))
    return [xp[:, i:i + stride * (h - 1) + 1:stride, j:j + stride * (w - 1) + 1:stride, :]
            for i in range(size) for j in range(size)]


def image_patches(x: jax.Array, size: int, stride: int = 1) -> jax.Array:
    """(B, H, W, C) -> (B, H', W', size*size*C): each output pixel's SAME-padded neighbourhood.

    The last axis is ordered (row offset, column offset, channel), the order of a
    flattened (kh, kw, in, out) convolution kernel.
    """
    return jnp.concatenate(shifted_images(x, size, stride), axis=-1)


def image_shifts(x: jax.Array, size: int, stride: int = 1) -> jax.Array:
    """(B, H, W, 1) -> (size*size, B*H'*W'): image_patches of one channel, transposed."""
    return jnp.stack([shifted.reshape(-1) for shifted in shifted_images(x, size, stride)])


class PatchConv(nnx.Module):
    """A SAME 2-D convolution computed as patches @ kernel; stride 1 unless given (as
    nnx.Conv's `strides`, the same in both directions)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int, *, rngs: nnx.Rngs,
                 stride: int = 1):
        init = nnx.initializers.lecun_normal()
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(init(rngs.params(), shape))
        self.bias = nnx.Param(jnp.zeros((out_features,)))
        self.kernel_size = kernel_size
        self.stride = stride

    def __call__(self, x: jax.Array) -> jax.Array:
        return patch_conv(x, self.kernel[...], self.bias[...], self.stride)


def patch_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int = 1) -> jax.Array:
    """PatchConv's computation for given parameters: kernel (k, k, C, O) as nnx.Conv's.

    At stride s only the output pixels' patches are formed (every s-th row and column of the
    padded image), not the stride-1 output subsampled: 1/s² of the products."""
    size = kernel.shape[0]
    flat = kernel.reshape(-1, kernel.shape[-1])
    if x.shape[-1] == 1:
        shifts = image_shifts(x, size, stride)
        out = jnp.einsum("kn,ko->no", shifts, flat)
        h, w = same_padding(x.shape[1], size, stride)[0], same_padding(x.shape[2], size, stride)[0]
        return out.reshape(x.shape[0], h, w, flat.shape[-1]) + bias
    return image_patches(x, size, stride) @ flat + bias


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 average pooling with stride 2 on (B, H, W, C), H and W even."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


@jax.custom_jvp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 on (B, H, W, C), H and W even: Keras' MaxPooling2D()
    and nnx.max_pool(x, (2, 2), (2, 2)), NaN included.

    Differentiated as those are: each window's gradient goes to one entry, its first maximum
    in row-major order. jnp.max would share it among tied entries, and ties are common (a
    blank stretch of an MNIST digit gives equal activations): the gradient reaching the
    pooled input would then differ from nnx.max_pool's (a test checks it does not)."""
    return _windows(x).max(axis=(2, 4))


def _windows(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c)


@max_pool_2x2.defjvp
def _max_pool_2x2_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = max_pool_2x2(x)
    windows, d_windows = _windows(x), _windows(dx)
    entries = [(windows[:, :, i, :, j], d_windows[:, :, i, :, j]) for i in (0, 1) for j in (0, 1)]
    dy = entries[-1][1]  # no entry equals y where it is NaN; any tangent will do there
    for entry, d_entry in reversed(entries[:-1]):  # the first maximum wins
        dy = jnp.where(entry == y, d_entry, dy)
    return y, dy


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
