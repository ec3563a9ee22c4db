"""How close two float32 computations of the same mathematics must be: the tests' one tolerance.

A CPU kernel and XLA's form, a batch cut into row slices and the whole batch, a product on
AVX-512 and on AVX2: each computes the same sums, in another order and with other vector
widths, so each rounds differently. A fixed rtol/atol chosen on one CPU is a guess that held
there; this tolerance is derived from the computation instead.

The bound (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.1): a float32
sum or dot product of n terms, in any order, is within γ_n · Σ|terms| of the exact value,
with γ_n = n·u / (1 − n·u) and u = 2⁻²⁴ float32's unit roundoff. Two computations of it then
differ by at most 2·γ_n · Σ|terms|. Where sums feed further sums (a time loop, a backward pass
behind a forward one) the errors made early are carried on, scaled by the derivatives on the
way, so `n` counts the terms along the longest such chain: the tests keep those derivatives
near one (weights of unit scale or less, saturating or piecewise-linear activations).

Σ|terms| is not observable from outside a kernel; the largest magnitude of the compared tensor
(on either side) stands in for it. With these tests' inputs, drawn with unit scale, the
summands are of the result's order. The bound is a worst case: rounding errors of random sign
grow like √n, not n, so a computation that is right uses a small part of it, while a mistake
(a slice reading the wrong rows, a column block reading the wrong columns) moves values by
their own size, thousands of times the tolerance.
"""

from __future__ import annotations

import jax
import numpy as np

UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2  # u = 2^-24


def gamma(terms: int) -> float:
    """Higham's γ_n: the relative error bound of a float32 sum of `terms` terms."""
    nu = max(terms, 1) * UNIT_ROUNDOFF
    if nu >= 1:
        raise ValueError(f"{terms} terms: beyond what float32's bound covers")
    return nu / (1 - nu)


def tolerance(terms: int, scale: float) -> float:
    """The largest difference two float32 computations of a `terms`-term chain of sums may show,
    where the summands' magnitudes add up to at most `scale`."""
    return 2 * gamma(terms) * scale


def assert_close(actual, desired, *, terms: int, err_msg: str = "") -> None:
    """Each leaf of two pytrees agrees within `tolerance(terms, scale)`, `scale` the leaf's
    largest magnitude on either side (module docstring). Shapes must match; NaN must match NaN."""
    actual_leaves, desired_leaves = jax.tree.leaves(actual), jax.tree.leaves(desired)
    assert len(actual_leaves) == len(desired_leaves), "the trees differ in their leaves"
    for index, (a, b) in enumerate(zip(actual_leaves, desired_leaves)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape, f"leaf {index}: shape {a.shape} against {b.shape}"
        finite = np.isfinite(a) & np.isfinite(b)
        scale = max(np.abs(a[finite]).max(initial=0.0), np.abs(b[finite]).max(initial=0.0))
        bound = tolerance(terms, scale)
        message = (f"leaf {index}: {terms}-term float32 rounding bound {bound:.3g} "
                   f"(scale {scale:.3g}) {err_msg}")
        np.testing.assert_allclose(a, b, rtol=0, atol=bound, err_msg=message)


def assert_same_bits(actual, desired) -> None:
    """Each leaf of two pytrees equal to the last bit: the same computation, its sums in the
    same order, must round the same way every time (no tolerance at all)."""
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(desired), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---- the terms along each computation's longest chain of sums ------------------------------

def recurrent_terms(steps: int, batch: int, features: int, units: int, gates: int) -> int:
    """A recurrent loop of `steps`, forward and backward: each step's forward product sums
    units + features terms, each backward step's gates · units; the kernel's gradient then sums
    over every step and example."""
    return steps * (units + features) + steps * gates * units + steps * batch


def conv_block_terms(batch: int, height: int, width: int, channels: int, out: int,
                     size: int) -> int:
    """A convolution block (size × size kernel, 2 × 2 pooling), forward and backward: the
    forward patch product, the input gradient's product over the outputs, and the kernel's
    gradient summed over every pixel of the batch."""
    return size * size * channels + 4 + size * size * out + batch * height * width


def dense_terms(fan_ins: list[int], batch: int) -> int:
    """Dense layers of these fan-ins, forward and backward: each layer's product forward and
    its transpose backward, then a weight gradient summed over the batch."""
    return 2 * sum(fan_ins) + batch
