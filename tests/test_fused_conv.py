"""The fused CPU convolution block (models/fused_conv.py) against nnx.Conv and the XLA form.

The kernel's loading guards (build record, CPU features, jaxlib) are models/native_kernels.py's,
tested through the LSTM kernel in test_fused_lstm.py; here: that the conv kernel computes
nnx.Conv's block for every activation, gradients included, in both of its patch layouts,
that the model uses it on CPU only, and that it refuses bad operands.
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

from bench.engine import costs, training
from bench.contract.registry import ACTIVATIONS
from bench.contract.schema import TimingProtocol, make_config
from models import fused_cells, fused_conv, fused_lstm, native_kernels
from test_fused_lstm import activation, custom_calls as lstm_custom_calls
from rounding import assert_close, assert_same_bits, conv_block_terms
from test_models import images, model_terms, normal, tiny

KERNEL_TARGETS = ("bench_conv_block_forward", "bench_conv_block_backward")


def kernel_on() -> None:
    """Skips the test where the kernel is not in use (not built, switched off, other CPU)."""
    if fused_conv.status() != "on":
        pytest.skip(f"fused conv kernel: {fused_conv.status()}")


def test_kernel_is_built_and_loaded():
    """pip install (setup.py) compiles the kernel; without it the CNN runs the XLA form."""
    if os.environ.get(fused_conv.DISABLE_VARIABLE) == "0":
        pytest.skip(f"{fused_conv.DISABLE_VARIABLE}=0")
    assert fused_conv.status() == "on"


def test_every_activation_has_a_kernel_form():
    missing = [name for name in ACTIVATIONS if activation(name) not in fused_conv.ACTIVATION_IDS]
    assert not missing, f"add these to cpu_kernels.h and ACTIVATION_IDS: {missing}"


def stock_block(act, x, kernel, bias):
    """The block as a Flax user writes it: nnx.Conv (SAME, stride 1), then nnx.avg_pool."""
    k, _, channels, out = kernel.shape
    conv = nnx.Conv(channels, out, (k, k), padding="SAME", rngs=nnx.Rngs(0))
    conv.kernel[...] = kernel
    conv.bias[...] = bias
    return nnx.avg_pool(act(conv(x)), window_shape=(2, 2), strides=(2, 2))


def block_args(batch, height, width, channels, out, k, seed=0):
    return (normal((batch, height, width, channels), seed),
            normal((k, k, channels, out), seed + 1) * 0.4, normal((out,), seed + 2) * 0.3)


def value_and_grads(block, args, argnums=(0, 1, 2)):
    def loss(x, kernel, bias):
        y = block(x, kernel, bias)
        return jnp.sum(jnp.sin(y) * y)  # cotangents differ per element

    return jax.jit(jax.value_and_grad(loss, argnums=argnums))(*args)


def assert_same(got, want, shape):
    """Equal up to the rounding of a block of `shape` (block_args' sizes; tests/rounding.py)."""
    assert_close(got, want, terms=conv_block_terms(*shape))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_kernel_equals_nnx_conv_for_every_activation(name):
    """Both patch layouts (one channel: transposed; several) with the input gradient."""
    kernel_on()
    act = activation(name)
    for shape in [(3, 6, 8, 1, 5, 3), (3, 6, 8, 4, 6, 3)]:
        args = block_args(*shape)
        assert_same(value_and_grads(partial(fused_conv.conv_block, act), args),
                    value_and_grads(partial(stock_block, act), args), shape)


# (batch, height, width, channels, out, k): what each case reaches in conv_cpu.cc
LAYOUTS = {
    "one channel, derivatives computed again": (4, 8, 6, 1, 8, 3),
    "several channels, derivatives saved": (5, 4, 4, 3, 5, 3),
    "several channels, derivatives computed again": (3, 4, 4, 2, 40, 3),
    "even kernel (SAME pads after)": (2, 6, 6, 2, 3, 2),
    "5x5 kernel": (3, 8, 8, 3, 4, 5),
    "batch over several tiles, last one short": (13, 14, 14, 4, 6, 3),
    "MNIST's first block": (6, 28, 28, 1, 32, 3),
}


@pytest.mark.parametrize("case", list(LAYOUTS))
def test_kernel_equals_nnx_conv_in_every_layout(case):
    kernel_on()
    args = block_args(*LAYOUTS[case])
    assert_same(value_and_grads(partial(fused_conv.conv_block, jax.nn.gelu), args),
                value_and_grads(partial(stock_block, jax.nn.gelu), args), LAYOUTS[case])


@pytest.mark.parametrize("case", ["one channel, derivatives computed again",
                                  "several channels, derivatives saved"])
def test_input_gradient_is_computed_only_when_asked_for(case):
    """The first block's input is the data: differentiating only the parameters, the
    backward call declares no input gradient (shape (0,)), and the parameters' gradients
    are still nnx.Conv's."""
    kernel_on()
    args = block_args(*LAYOUTS[case])
    block = partial(fused_conv.conv_block, jax.nn.relu)
    stock = partial(stock_block, jax.nn.relu)
    assert_same(value_and_grads(block, args, argnums=(1, 2)),
                value_and_grads(stock, args, argnums=(1, 2)), LAYOUTS[case])

    def backward_results(argnums) -> str:
        def loss(x, kernel, bias):
            return jnp.sum(jnp.sin(block(x, kernel, bias)))

        text = jax.jit(jax.grad(loss, argnums)).lower(*args).as_text()
        (line,) = [line for line in text.splitlines() if "@bench_conv_block_backward(" in line]
        return line.rpartition("->")[2]

    assert backward_results((1, 2)).startswith(" (tensor<0xf32>")
    assert backward_results((0, 1, 2)).startswith(f" (tensor<{'x'.join(map(str, args[0].shape))}xf32>")


def test_vmapped_block_equals_each_member_alone():
    """Under vmap XLA calls the kernel once per member (conv trials train alone on CPU)."""
    kernel_on()
    members = [block_args(3, 4, 6, 2, 5, 3, seed=10 * m) for m in range(3)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)
    block = partial(fused_conv.conv_block, jnp.tanh)
    together = jax.vmap(lambda args: value_and_grads(block, args))(stacked)
    for m, args in enumerate(members):
        assert_same(jax.tree.map(lambda leaf, m=m: leaf[m], together),
                    value_and_grads(block, args), (3, 4, 6, 2, 5, 3))


# A batch of many tiles (5 images of 14x14 a tile: 13 tiles, more than any thread count here),
# so that threads share the kernel and bias gradients' sums.
MANY_TILES = (64, 14, 14, 8, 16, 3)


def kernel_and_bias_gradients(args):
    def loss(kernel, bias):
        y = fused_conv.conv_block(jax.nn.relu, args[0], kernel, bias)
        return jnp.sum(jnp.sin(y) * y)

    return jax.device_get(jax.jit(jax.grad(loss, argnums=(0, 1)))(*args[1:]))


def test_gradients_are_the_same_bits_on_every_call(blas_threads):
    """Threads take tiles as they come free; the gradients' sums must not depend on which
    thread took which (they did: 26-40 of 50 calls differed in the last bits, and a trial's
    seed no longer fixed its result)."""
    kernel_on()
    blas_threads(3)
    args = block_args(*MANY_TILES)
    first = kernel_and_bias_gradients(args)
    for _ in range(20):
        assert_same_bits(kernel_and_bias_gradients(args), first)


def test_gradients_are_the_same_bits_on_any_number_of_threads(blas_threads):
    kernel_on()
    args = block_args(*MANY_TILES)
    on = {}
    for threads in (1, 2, 3):
        blas_threads(threads)
        on[threads] = kernel_and_bias_gradients(args)
    assert_same_bits(on[2], on[1])
    assert_same_bits(on[3], on[1])


def test_nan_input_gives_nan_output():
    """A diverging trial must still end with a NaN loss."""
    kernel_on()
    x, kernel, bias = block_args(2, 4, 4, 2, 3, 3)
    y = fused_conv.conv_block(jax.nn.relu, x.at[0, 1, 1, 0].set(jnp.nan), kernel, bias)
    assert np.isnan(np.asarray(y[0])).any() and np.isfinite(np.asarray(y[1])).all()


# ---- the model ------------------------------------------------------------------------------

def custom_calls(model, platform: str) -> set[str]:
    return lstm_custom_calls(model, platform, KERNEL_TARGETS)


def test_cpu_cnn_runs_the_kernel_and_other_platforms_the_xla_form():
    kernel_on()
    model = tiny("conv", jax.nn.relu)
    assert custom_calls(model, "cpu") == set(KERNEL_TARGETS)
    assert custom_calls(model, "cuda") == set()
    assert custom_calls(model, "tpu") == set()
    model.fused_kernel = False
    assert custom_calls(model, "cpu") == set()
    other = tiny("conv", lambda x: x * jax.nn.sigmoid(x))  # an activation the kernel lacks
    assert custom_calls(other, "cpu") == set()


@pytest.mark.parametrize("pooling", ["avg", "max", "stride"])
def test_cpu_cnn_runs_the_kernel_only_for_average_pooling(pooling):
    """The kernel pools by average only: with max pooling or stride-2 convolutions the CNN
    runs the XLA form on CPU too, and says so (model.runs_kernel, fused_conv.runs_kernel)."""
    kernel_on()
    model = tiny("conv", jax.nn.relu, pooling=pooling)
    expected = set(KERNEL_TARGETS) if pooling == "avg" else set()
    assert custom_calls(model, "cpu") == expected
    assert model.runs_kernel == fused_conv.runs_kernel(pooling) == (pooling == "avg")
    assert custom_calls(model, "cuda") == set()


def test_a_trial_config_tells_which_form_its_blocks_ran():
    """What the run prints per kernel (bench/run/runner.py's _CPU_KERNELS) and a record's
    reader decide from the config's pooling value alone."""
    base = {"model": "conv", "activation": "relu", "optimizer": "adam"}
    assert fused_conv.POOLINGS == ("avg",)
    assert fused_conv.runs_kernel(make_config(base).pooling)
    for pooling in ("max", "stride"):
        assert not fused_conv.runs_kernel(make_config({**base, "pooling": pooling}).pooling)
    assert not fused_conv.runs_kernel(make_config({**base, "model": "dense"}).pooling)
    # The trials a run lists under the kernel (each kernel module's used_by):
    assert fused_conv.used_by(make_config(base))
    assert not fused_conv.used_by(make_config({**base, "pooling": "max"}))
    assert not fused_conv.used_by(make_config({**base, "impl": "flax"}))
    assert not fused_conv.used_by(make_config({**base, "model": "dense"}))
    lstm = make_config({**base, "model": "recurrent"})
    assert fused_lstm.used_by(lstm) and not fused_cells.used_by(lstm)
    assert fused_cells.used_by(make_config({**base, "model": "recurrent", "cell": "gru"}))


def test_cnn_computes_no_input_gradient_for_the_data():
    """Training differentiates the parameters, not the images: the first block's backward
    call declares no input gradient, the second block's one of its input's shape."""
    kernel_on()
    model = tiny("conv", jax.nn.relu)
    graphdef, state = nnx.split(model)

    def loss(state, x):
        return jnp.sum(nnx.merge(graphdef, state)(x))

    text = jax.jit(jax.grad(loss)).lower(state, images()).as_text()
    results = sorted(line.rpartition("->")[2].split(",")[0] for line in text.splitlines()
                     if "@bench_conv_block_backward(" in line)
    channels = model.conv2.kernel.shape[2]
    assert results == sorted([" (tensor<0xf32>", f" (tensor<{len(images())}x14x14x{channels}xf32>"])


def test_cnn_with_the_kernel_equals_the_xla_form():
    """Logits and every parameter's gradient of the whole model, both forms."""
    kernel_on()
    model = tiny("conv", jax.nn.elu)
    x, labels = images(), jnp.arange(len(images())) % 10

    def grads(fused: bool):
        model.fused_kernel = fused
        graphdef, state = nnx.split(model)

        def loss(state):
            logits = nnx.merge(graphdef, state)(x)
            return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(len(x)), labels]), logits

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(state)

    assert_close(grads(True), grads(False), terms=model_terms(model))


def test_flop_count_sees_through_the_kernel():
    """XLA counts nothing inside a custom call: the count must come from the XLA form."""
    kernel_on()
    config = make_config({"model": "conv", "units": 4, "activation": "relu",
                          "optimizer": "adam", "batch_size": 8})
    protocol = TimingProtocol(repeats=1, burn_in=0, round_steps=2)
    x = images(8 * protocol.round_steps)
    y = jnp.zeros(len(x), jnp.int32)

    def lowered_count(fused: bool) -> float:
        model = training.build_model(config)
        model.fused_kernel = fused
        program = training._solo_program(model, config, protocol)
        return costs.flops(jax.jit(program.train_round).lower(program.init(), x, y,
                                                              jax.random.key(0)))

    with_kernel = training.step_flops(config, protocol, x, y)
    assert with_kernel == lowered_count(False) > lowered_count(True) > 0  # the kernel hides its own
    conv2_forward = 2 * 8 * 14 * 14 * (3 * 3 * 4) * 8  # batch 8, 14x14 pixels, 36 in, 8 out
    assert with_kernel > 3 * conv2_forward


# ---- bad operands and switches --------------------------------------------------------------

def call_forward(x_shape, kernel_shape, results, activation_id=1):
    operands = [jnp.full(x_shape, 0.5), jnp.full(kernel_shape, 0.5),
                jnp.full(kernel_shape[-1:], 0.5)]
    call = jax.ffi.ffi_call("bench_conv_block_forward",
                            [jax.ShapeDtypeStruct(s, jnp.float32) for s in results])
    return jax.block_until_ready(call(*operands, activation=np.int64(activation_id)))


WRONG_OPERANDS = {  # x, kernel, results (y, slope), the kernel's message
    "odd height": ((2, 5, 4, 1), (3, 3, 1, 2), [(2, 2, 2, 2), (0,)],
                   "x must have even height and width and a channel, got (2, 5, 4, 1)"),
    "x rank": ((2, 4, 4), (3, 3, 1, 2), [(2, 2, 2, 2), (0,)],
               "x must be (batch, height, width, channels), got (2, 4, 4)"),
    "kernel channels": ((2, 4, 4, 3), (3, 3, 2, 2), [(2, 2, 2, 2), (0,)],
                        "kernel must be (k, k, 3, out), got (3, 3, 2, 2)"),
    "non-square kernel": ((2, 4, 4, 1), (3, 2, 1, 2), [(2, 2, 2, 2), (0,)],
                          "kernel must be (k, k, 1, out), got (3, 2, 1, 2)"),
    "result y": ((2, 4, 4, 1), (3, 3, 1, 2), [(2, 4, 4, 2), (0,)],
                 "y must be (2, 2, 2, 2), got (2, 4, 4, 2)"),
    "result slope": ((2, 4, 4, 1), (3, 3, 1, 2), [(2, 2, 2, 2), (2, 4, 4, 3)],
                     "slope must be (2, 4, 4, 2), got (2, 4, 4, 3)"),
}


@pytest.mark.parametrize("case", list(WRONG_OPERANDS))
def test_kernel_refuses_wrong_operands(case):
    kernel_on()
    x_shape, kernel_shape, results, message = WRONG_OPERANDS[case]
    with pytest.raises(jax.errors.JaxRuntimeError, match=message.replace("(", r"\(")
                       .replace(")", r"\)")):
        call_forward(x_shape, kernel_shape, results)


def test_kernel_refuses_an_unknown_activation():
    kernel_on()
    with pytest.raises(jax.errors.JaxRuntimeError, match="unknown activation id 12"):
        call_forward((2, 4, 4, 1), (3, 3, 1, 2), [(2, 2, 2, 2), (0,)], activation_id=12)


def test_environment_variable_switches_the_kernel_off():
    code = "from models import fused_conv; print(fused_conv.status())"
    env = {**os.environ, fused_conv.DISABLE_VARIABLE: "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == f"off ({fused_conv.DISABLE_VARIABLE}=0)"


def test_missing_library_leaves_the_xla_form(monkeypatch):
    monkeypatch.setattr(fused_conv, "_library_path", lambda: None)
    fused_conv._load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="the XLA patch form runs instead"):
            assert fused_conv.status().startswith("not built (pip install compiles "
                                                  "models/native/conv_cpu.cc")
        assert not fused_conv.supports(jax.nn.relu)
        assert custom_calls(tiny("conv", jax.nn.relu), "cpu") == set()
        with pytest.raises(RuntimeError, match="the fused conv kernel cannot run: not built"):
            fused_conv.conv_block(jax.nn.relu, *block_args(2, 4, 4, 1, 2, 3))
    finally:
        fused_conv._load.cache_clear()


def test_failed_smoke_call_falls_back(monkeypatch):
    """The kernel computes relu where the smoke call's XLA form computes tanh."""
    kernel_on()
    monkeypatch.setitem(native_kernels.ACTIVATION_IDS, jnp.tanh,
                        native_kernels.ACTIVATION_IDS[jax.nn.relu])
    fused_conv._load.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="the XLA patch form runs instead"):
            reason = fused_conv.status()
        assert reason.startswith("off: smoke test failed: the kernel's value differs")
    finally:
        fused_conv._load.cache_clear()
