"""The fused CPU LSTM kernel (models/fused_lstm.py) against XLA's loop (models/recurrence.py).

test_models.py checks the model, kernel included, against nnx.LSTMCell for tanh and relu;
here every activation of bench's table is checked, and the choice between the two loops.
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
from flax import nnx

from bench.registry import ACTIVATIONS
from models import fused_lstm
from models.recurrence import recur
from models.recurrent import Recurrent, lstm_update
from test_models import images, normal, tiny

KERNEL_TARGETS = ("bench_lstm_forward", "bench_lstm_backward")


def test_kernel_is_built_and_loaded():
    """pip install (setup.py) compiles the kernel; without it the numbers come from XLA's loop."""
    if os.environ.get(fused_lstm.DISABLE_VARIABLE) == "0":
        pytest.skip(f"{fused_lstm.DISABLE_VARIABLE}=0")
    assert fused_lstm.status() == "on"


def test_kernel_implements_every_activation_of_the_table():
    missing = [name for name, fn in ACTIVATIONS.items() if fn not in fused_lstm.ACTIVATION_IDS]
    assert not missing, f"add these to lstm_cpu.cc and ACTIVATION_IDS: {missing}"


def loss_and_grads(model: Recurrent, x: jax.Array):
    weights = normal((x.shape[0], 10), 7)

    def loss(module, x):
        return jnp.sum(module(x) * weights)

    return nnx.value_and_grad(loss, argnums=(0, 1))(model, x)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_fused_model_matches_xla_loop(name):
    activation = ACTIVATIONS[name]
    model = tiny("recurrent", activation)
    model.input_proj.bias[...] = normal(model.input_proj.bias.shape, 5)
    x = images() * 4.0 - 2.0  # both signs, so every activation's two sides are used

    value, (grads, grad_x) = loss_and_grads(model, x)
    model.fused_kernel = False
    ref_value, (ref_grads, ref_grad_x) = loss_and_grads(model, x)

    close = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(value, ref_value, **close)
    np.testing.assert_allclose(grad_x, ref_grad_x, **close)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(got, want, **close)


def test_fused_loop_gradients_for_a_given_carry_and_odd_sizes():
    """Initial carry gradients, and a width (33) that is no multiple of a vector register."""
    steps, batch, features, units = 5, 3, 7, 33
    carry = (normal((batch, units), 1), normal((batch, units), 2))
    xs, bias = normal((steps, batch, features), 3), normal((4 * units,), 4)
    kernel = normal((units + features, 4 * units), 5) * 0.3

    def loss(loop, carry, xs, kernel, bias):
        c, h = loop(carry, xs, kernel, bias)
        return jnp.sum(h * jnp.cos(h)) + jnp.sum(jnp.sin(c))

    fused = partial(fused_lstm.lstm, jnp.tanh)
    xla = partial(recur, partial(lstm_update, jnp.tanh), 1)
    args = (carry, xs, kernel, bias)
    got = jax.value_and_grad(partial(loss, fused), argnums=(0, 1, 2, 3))(*args)
    want = jax.value_and_grad(partial(loss, xla), argnums=(0, 1, 2, 3))(*args)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["relu", "tanh", "elu"])
def test_a_nan_input_gives_that_example_nan_logits(name):
    """A diverging trial must still end with a NaN loss, so the kernel must let NaN through."""
    x = images().at[0, 3, 5].set(jnp.nan)
    logits = tiny("recurrent", ACTIVATIONS[name])(x)
    assert np.isnan(logits[0]).all()
    assert np.isfinite(logits[1:]).all()


def custom_calls(model: Recurrent, platform: str) -> set[str]:
    """The kernel targets in the training step's program lowered for `platform`."""
    graphdef, state = nnx.split(model)

    def loss(state, x):
        return jnp.sum(nnx.merge(graphdef, state)(x))

    allowed = [jax.export.DisabledSafetyCheck.custom_call(t) for t in KERNEL_TARGETS]
    exported = jax.export.export(jax.jit(jax.grad(loss)), platforms=[platform],
                                 disabled_checks=allowed)(state, images())
    text = exported.mlir_module()
    return {target for target in KERNEL_TARGETS if target in text}


def test_cpu_lstm_runs_the_kernel_and_other_platforms_xla_loop():
    model = tiny("recurrent", jax.nn.relu)
    assert custom_calls(model, "cpu") == set(KERNEL_TARGETS)
    assert custom_calls(model, "cuda") == set()
    assert custom_calls(model, "tpu") == set()


@pytest.mark.parametrize("change", ["gru", "simple", "unrolled", "switched off", "other activation"])
def test_xla_loop_runs_where_the_kernel_does_not_apply(change):
    cell = change if change in ("gru", "simple") else "lstm"
    activation = (lambda x: x * jax.nn.sigmoid(x)) if change == "other activation" else jax.nn.relu
    model = tiny("recurrent", activation, cell=cell)
    model.unroll = True if change == "unrolled" else 1
    model.fused_kernel = change != "switched off"
    assert custom_calls(model, "cpu") == set()


def test_environment_variable_switches_the_kernel_off():
    code = "from models import fused_lstm; print(fused_lstm.status())"
    env = {**os.environ, fused_lstm.DISABLE_VARIABLE: "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == f"off ({fused_lstm.DISABLE_VARIABLE}=0)"
