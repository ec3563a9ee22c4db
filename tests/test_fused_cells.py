"""The fused CPU GRU and simple-cell loops (models/fused_cells.py) against XLA's loop
(models/recurrence.py), and through it against nnx.GRUCell / nnx.SimpleCell (test_stock.py
compares the whole model with the stock cells).

The loading guards are models/native_kernels.py's, tested through the LSTM kernel in
test_fused_lstm.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench.contract.registry import ACTIVATIONS
from models import fused_cells
from models.recurrence import recur
from models.recurrent import CELLS
from test_fused_lstm import activation, custom_calls as lstm_custom_calls, loss_and_grads
from rounding import assert_close, recurrent_terms
from test_models import images, model_terms, normal, tiny

KERNEL_TARGETS = ("bench_cell_forward", "bench_cell_backward")


def kernel_on() -> None:
    """Skips the test where the kernel is not in use (not built, switched off, other CPU)."""
    if fused_cells.status() != "on":
        pytest.skip(f"fused GRU/simple-cell kernel: {fused_cells.status()}")


def test_kernel_is_built_and_loaded():
    if os.environ.get(fused_cells.DISABLE_VARIABLE) == "0":
        pytest.skip(f"{fused_cells.DISABLE_VARIABLE}=0")
    assert fused_cells.status() == "on"


def custom_calls(model, platform: str) -> set[str]:
    return lstm_custom_calls(model, platform, KERNEL_TARGETS)


@pytest.mark.parametrize("cell", ["gru", "simple"])
@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_fused_model_matches_xla_loop(cell, name):
    """The whole model, every parameter's gradient and the input's, for every activation."""
    kernel_on()
    model = tiny("recurrent", activation(name), cell=cell)
    model.input_proj.bias[...] = normal(model.input_proj.bias.shape, 5)
    x = images() * 4.0 - 2.0  # both signs, so every activation's two sides are used
    assert custom_calls(model, "cpu") == set(KERNEL_TARGETS)

    value, (grads, grad_x) = loss_and_grads(model, x)
    model.fused_kernel = False
    assert custom_calls(model, "cpu") == set()
    ref_value, (ref_grads, ref_grad_x) = loss_and_grads(model, x)

    assert_close((value, grad_x, grads), (ref_value, ref_grad_x, ref_grads),
                 terms=model_terms(model))


def loop_args(cell: str, steps: int, batch: int, features: int, units: int, lead=()) -> tuple:
    columns = fused_cells._GATES[cell] * units
    return ((normal(lead + (batch, units), 1),), normal(lead + (steps, batch, features), 3),
            normal(lead + (units + features, columns), 5) * 0.3, normal(lead + (columns,), 4))


def loop_terms(cell: str, steps: int, batch: int, features: int, units: int) -> int:
    return recurrent_terms(steps, batch, features, units, fused_cells._GATES[cell])


def loop_loss(loop, carry, xs, kernel, bias):
    (h,) = loop(carry, xs, kernel, bias)
    return jnp.sum(h * jnp.cos(h))  # cotangents differ per element


def value_and_grads(loop):
    return jax.value_and_grad(partial(loop_loss, loop), argnums=(0, 1, 2, 3))


def loops(cell: str, act=jnp.tanh):
    return (partial(fused_cells.loop, cell, act),
            partial(recur, partial(CELLS[cell].update, act), 1))


@pytest.mark.parametrize("cell", ["gru", "simple"])
@pytest.mark.parametrize("steps, batch, units", [(5, 3, 33), (0, 3, 5), (4, 0, 5)],
                         ids=["odd width", "no step", "empty batch"])
def test_loop_gradients_for_a_given_carry_and_odd_sizes(cell, steps, batch, units):
    """Initial carry gradients; a width that is no multiple of a vector register; no step
    returns the initial carry (and zero weight gradients), as XLA's loop does."""
    kernel_on()
    args = loop_args(cell, steps, batch, 7, units)
    fused, xla = loops(cell)
    got, want = value_and_grads(fused)(*args), value_and_grads(xla)(*args)
    assert_close(got, want, terms=loop_terms(cell, steps, batch, 7, units))


@pytest.mark.parametrize("cell", ["gru", "simple"])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_one_loop_cut_into_row_slices_gives_what_xla_loop_gives(cell, threads, blas_threads):
    """The batch in row slices on their own threads (37 rows: 18 and 19), the kernel gradient
    in column blocks (GRU 132 columns: 64 and 68; simple 33: 32 and 1), as test_fused_lstm.py."""
    kernel_on()
    blas_threads(threads)
    args = loop_args(cell, 4, 37, 7, 33)
    fused, xla = loops(cell)
    got, want = value_and_grads(fused)(*args), value_and_grads(xla)(*args)
    assert_close(got, want, terms=loop_terms(cell, 4, 37, 7, 33))


@pytest.mark.parametrize("cell", ["gru", "simple"])
def test_vmapped_kernel_equals_each_member_alone_in_one_call(cell):
    """A population of 3: each member's values and gradients are its own unbatched call's,
    and the population's step calls each target once, with no loop over members."""
    kernel_on()
    args = loop_args(cell, 4, 3, 7, 6, lead=(3,))
    fused, _ = loops(cell, jax.nn.relu)
    fn = value_and_grads(fused)
    got = jax.jit(jax.vmap(fn))(*args)
    for m in range(3):
        alone = jax.jit(fn)(*jax.tree.map(lambda leaf, m=m: leaf[m], args))
        assert_close(jax.tree.map(lambda leaf, m=m: leaf[m], got), alone,
                     terms=loop_terms(cell, 4, 3, 7, 6))
    text = jax.jit(jax.vmap(fn)).lower(*args).as_text()
    for target in KERNEL_TARGETS:
        assert text.count(f"custom_call @{target}(") == 1, target
    assert "stablehlo.while" not in text


@pytest.mark.parametrize("cell", ["gru", "simple"])
def test_other_platforms_and_unrolled_loops_run_xla_loop(cell):
    kernel_on()
    model = tiny("recurrent", jax.nn.relu, cell=cell)
    assert custom_calls(model, "cuda") == set()
    assert custom_calls(model, "tpu") == set()
    model.unroll = True  # the FLOP count's form
    assert custom_calls(model, "cpu") == set()


def test_nan_input_gives_that_example_nan_logits():
    kernel_on()
    x = images().at[0, 3, 5].set(jnp.nan)
    for cell in ("gru", "simple"):
        logits = tiny("recurrent", jax.nn.relu, cell=cell)(x)
        assert np.isnan(logits[0]).all() and np.isfinite(logits[1:]).all()


# ---- bad operands and switches --------------------------------------------------------------

def call_forward(cell_id: int, kernel_shape=(7, 16), activation_id=1):
    operands = [jnp.full((2, 2, 3), 0.5), jnp.full(kernel_shape, 0.5),
                jnp.full(kernel_shape[-1:], 0.5), jnp.full((2, 4), 0.5)]
    results = [jax.ShapeDtypeStruct(s, jnp.float32) for s in [(2, 4), (2, 2, 7), (2, 2, 20)]]
    call = jax.ffi.ffi_call("bench_cell_forward", results)
    return jax.block_until_ready(call(*operands, cell=np.int64(cell_id),
                                      activation=np.int64(activation_id)))


@pytest.mark.parametrize("cell_id, kernel_shape, activation_id, message", [
    (3, (7, 16), 1, "bench_cell_forward: unknown cell id 3"),
    (1, (7, 16), 12, "bench_cell_forward: unknown activation id 12"),
    (1, (7, 12), 1, r"kernel must be \(units \+ features, 4 \* units\), got units 4, "
                    r"kernel columns 12"),
    (2, (7, 16), 1, r"kernel must be \(units \+ features, 1 \* units\)"),
    (1, (6, 16), 1, r"kernel must be \(7, 16\), got \(6, 16\)"),
], ids=["cell", "activation", "gru columns", "simple columns", "kernel rows"])
def test_kernel_refuses_bad_operands(cell_id, kernel_shape, activation_id, message):
    kernel_on()
    with pytest.raises(jax.errors.JaxRuntimeError, match=message):
        call_forward(cell_id, kernel_shape, activation_id)


def test_environment_variable_switches_the_kernel_off():
    code = "from models import fused_cells; print(fused_cells.status())"
    env = {**os.environ, fused_cells.DISABLE_VARIABLE: "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == f"off ({fused_cells.DISABLE_VARIABLE}=0)"


def test_failed_smoke_call_falls_back(monkeypatch):
    """The GRU's forward declares too few coefficients: the kernel refuses it."""
    kernel_on()
    monkeypatch.setitem(fused_cells._COEFFICIENTS, "gru", 4)
    fused_cells._load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="XLA's loop runs instead"):
            reason = fused_cells.status()
        assert reason.startswith("off: smoke test failed: JaxRuntimeError: ")
        assert "bench_cell_forward: coefs must be (2, 2, 20), got (2, 2, 16)" in reason
        assert not fused_cells.supports("gru", jnp.tanh)
    finally:
        fused_cells._load.cache_clear()
