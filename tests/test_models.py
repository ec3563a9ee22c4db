"""The model families: shapes, reference parameter counts, and equivalence with Flax's layers.

Every test is expanded over `models.MODELS` (and `models.CELLS`), so a new
family or cell gets these tests by being added to its table. Each case costs
compiles: the quick loop (`pytest -m "not slow"`) runs the first case of each
expansion, the full suite all of them.
"""

from __future__ import annotations

import inspect
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bench.contract.schema import model_options
from conftest import quick_first
from rounding import assert_close, conv_block_terms, dense_terms, recurrent_terms
from models import CELLS, MODELS
from models.recurrent import CELLS as CELL_KINDS
from models.conv import POOLINGS
from models.layers import PatchConv, dropout, max_pool_2x2, patch_conv
from models.recurrent import Recurrent

# Tiny sizes keep the suite fast; a family not listed here is built with DEFAULT_TINY_UNITS.
TINY_UNITS = {"dense": 4, "conv": 2, "recurrent": 4}
DEFAULT_TINY_UNITS = 4

# The documented parameter count of each family at its reference_units.
REFERENCE_PARAMS = {
    "dense": 669_706,  # 784-512-512-10, the Keras mnist_mlp network
    "conv": 824_458,  # the Flax MNIST example CNN
    "recurrent": 81_674,  # LSTM with 128 units on 28 rows of 28 pixels
}

BATCH = 3


def tiny(name: str, activation=jax.nn.relu, num_classes: int = 10, seed: int = 0, **options):
    units = TINY_UNITS.get(name, DEFAULT_TINY_UNITS)
    return MODELS[name].build(units, activation, num_classes, nnx.Rngs(seed), **options)


# Test data comes from numpy: every new shape drawn with jax.random costs a compile.
def normal(shape: tuple[int, ...], seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def images(batch: int = BATCH, seed: int = 1) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).random((batch, 28, 28), dtype=np.float32))


def abstract(make) -> nnx.Module:
    """The module `make()` builds, with shapes but no values: the test must set every
    parameter, and calling it with one left unset fails."""
    return nnx.eval_shape(make)


def model_terms(model: nnx.Module, batch: int = BATCH) -> int:
    """The longest chain of float32 sums in `model`'s loss and gradients on a batch of 28 x 28
    images, forward and backward (tests/rounding.py): the tolerance of comparing two forms."""
    if hasattr(model, "recurrent_kernel"):
        gates = model.recurrent_kernel.shape[-1] // model.units
        return recurrent_terms(28, batch, 28, model.units, gates) + dense_terms([model.units], batch)
    if hasattr(model, "conv1"):
        (_, _, _, units), (_, _, _, wide) = model.conv1.kernel.shape, model.conv2.kernel.shape
        return (conv_block_terms(batch, 28, 28, 1, units, 3)
                + conv_block_terms(batch, 14, 14, units, wide, 3)
                + dense_terms([7 * 7 * wide, model.out.in_features], batch))
    return dense_terms([layer.in_features for layer in [*model.hidden, model.out]], batch)


def param_count(model: nnx.Module) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ---- every family --------------------------------------------------------------------------

@pytest.mark.parametrize("name", quick_first(MODELS))
@pytest.mark.parametrize("num_classes", quick_first([10, 3]))
def test_family_returns_finite_logits_per_example(name, num_classes):
    logits = tiny(name, num_classes=num_classes)(images())
    assert logits.shape == (BATCH, num_classes)
    assert jnp.all(jnp.isfinite(logits))
    # Distinct images give distinct logits: the output depends on the input.
    assert not jnp.allclose(logits[0], logits[1])


@pytest.mark.parametrize("name", quick_first(MODELS))
def test_family_examples_are_independent(name):
    """An example's logits do not depend on the rest of its batch."""
    model, x = tiny(name), images(4)
    # A batch of one may be cut into other slices or tiles than one of four.
    assert_close(model(x)[:1], model(x[:1]), terms=model_terms(model, 4))


@pytest.mark.parametrize("name", list(MODELS))
def test_family_accepts_its_declared_options(name):
    """bench passes the family's option axes as keywords: each must be a keyword parameter."""
    entry = MODELS[name]
    params = inspect.signature(entry.build.__init__).parameters
    assert list(params)[1:5] == ["units", "activation", "num_classes", "rngs"]
    for option in model_options(name):
        assert option in params, f"{name} declares option {option!r} that it does not accept"
        assert params[option].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize("name", list(MODELS))
def test_reference_configuration_has_documented_parameter_count(name):
    assert name in REFERENCE_PARAMS, f"document {name}'s parameter count in REFERENCE_PARAMS"
    entry = MODELS[name]
    # eval_shape: the shapes without initialising 800k parameters.
    model = nnx.eval_shape(lambda: entry.build(entry.reference_units, jax.nn.relu, 10, nnx.Rngs(0)))
    assert param_count(model) == REFERENCE_PARAMS[name]


@pytest.mark.parametrize("cell", quick_first(CELLS))
def test_every_recurrent_cell_returns_logits(cell):
    model = tiny("recurrent", cell=cell)
    gates = CELL_KINDS[cell].gates
    units = TINY_UNITS["recurrent"]
    assert model.input_proj.kernel.shape == (28, gates * units)
    assert model.recurrent_kernel.shape == (units, gates * units)
    logits = model(images())
    assert logits.shape == (BATCH, 10)
    assert jnp.all(jnp.isfinite(logits))


def test_unknown_cell_is_rejected_with_valid_names():
    with pytest.raises(ValueError) as err:
        tiny("recurrent", cell="nope")
    for cell in CELLS:
        assert cell in str(err.value)


@pytest.mark.parametrize("depth", [1, 3])
def test_dense_depth_sets_number_of_hidden_layers(depth):
    units = 4
    model = MODELS["dense"].build(units, jax.nn.relu, 10, nnx.Rngs(0), depth=depth)
    assert len(model.hidden) == depth
    assert model.hidden[0].kernel.shape == (784, units)
    for layer in list(model.hidden)[1:]:
        assert layer.kernel.shape == (units, units)
    expected = (784 * units + units) + (depth - 1) * (units * units + units) + (units * 10 + 10)
    assert param_count(model) == expected
    assert model(images()).shape == (BATCH, 10)


def test_lstm_forget_gate_bias_starts_at_one():
    units = TINY_UNITS["recurrent"]
    bias = tiny("recurrent", cell="lstm").input_proj.bias[...]
    expected = jnp.zeros(4 * units).at[units:2 * units].set(1.0)  # gate order i, f, g, o
    np.testing.assert_array_equal(bias, expected)


# ---- dropout -------------------------------------------------------------------------------

DROPOUT_FAMILIES = [name for name in MODELS if "dropout" in model_options(name)]


@pytest.mark.parametrize("name", quick_first(DROPOUT_FAMILIES))
def test_dropout_applies_only_with_a_key(name):
    x, key = images(), jax.random.key(7)
    model = tiny(name, dropout=0.5)
    plain = model(x)
    np.testing.assert_array_equal(model(x), plain)  # no key: deterministic
    dropped = model(x, key)
    assert jnp.all(jnp.isfinite(dropped))
    assert not jnp.allclose(dropped, plain)
    np.testing.assert_array_equal(model(x, key), dropped)  # same key, same mask
    assert not jnp.allclose(model(x, jax.random.key(8)), dropped)


@pytest.mark.parametrize("name", quick_first(DROPOUT_FAMILIES))
def test_zero_dropout_ignores_the_key(name):
    x = images()
    model = tiny(name, dropout=0.0)
    np.testing.assert_array_equal(model(x, jax.random.key(7)), model(x))


def test_dropout_is_inverted_at_the_given_rate():
    rate = 0.25
    out = dropout(jnp.ones((200_000,)), rate, jax.random.key(0))
    assert abs(float(jnp.mean(out == 0.0)) - rate) < 0.01
    np.testing.assert_allclose(out[out != 0.0], 1.0 / (1.0 - rate), rtol=1e-6)
    np.testing.assert_array_equal(dropout(jnp.ones(5), rate, None), jnp.ones(5))


# ---- PatchConv == nnx.Conv -----------------------------------------------------------------

def conv_pair(cin: int, cout: int, size: int, seed: int = 0, stride: int = 1):
    """A PatchConv and an nnx.Conv holding the same random kernel and bias."""
    reference = abstract(lambda: nnx.Conv(cin, cout, kernel_size=(size, size), padding="SAME",
                                          strides=stride, rngs=nnx.Rngs(0)))
    patch = abstract(lambda: PatchConv(cin, cout, size, rngs=nnx.Rngs(0), stride=stride))
    assert patch.kernel.shape == reference.kernel.shape == (size, size, cin, cout)
    kernel, bias = normal((size, size, cin, cout), seed), normal((cout,), seed + 1)
    for module in (patch, reference):
        module.kernel.set_value(kernel)
        module.bias.set_value(bias)
    return patch, reference


# (in channels, out channels, kernel size); even sizes check where SAME puts the extra padding.
CONV_CASES = [(2, 3, 4), (1, 2, 3), (1, 3, 4), (1, 2, 5), (3, 5, 3), (4, 1, 3), (2, 3, 5)]


def outputs_and_gradients(modules: tuple[nnx.Module, ...], x: jax.Array, cotangent: jax.Array):
    """For each module: module(x), and the gradients of sum(module(x) * cotangent) w.r.t. its
    parameters and x. One jit for all modules, to compile once."""
    graphdefs, states = zip(*(nnx.split(m) for m in modules))

    @jax.jit
    def run(states, x):
        results = []
        for graphdef, state in zip(graphdefs, states):
            out, pullback = jax.vjp(lambda p, x: nnx.merge(graphdef, p)(x), state, x)
            results.append((out, pullback(cotangent)))
        return results

    return run(states, x)


@pytest.mark.parametrize("cin,cout,size", quick_first(CONV_CASES))
def test_patch_conv_matches_nnx_conv_and_its_gradients(cin, cout, size):
    patch, reference = conv_pair(cin, cout, size)
    x = normal((2, 7, 6, cin), 3)  # non-square: rows and columns cannot be swapped
    cotangent = normal((2, 7, 6, cout), 4)
    (out, (grad_p, grad_x)), (ref_out, (ref_grad_p, ref_grad_x)) = outputs_and_gradients(
        (patch, reference), x, cotangent)
    assert ref_out.shape == (2, 7, 6, cout)
    terms = conv_block_terms(2, 7, 6, cin, cout, size)
    assert_close((out, grad_x, grad_p["kernel"][...], grad_p["bias"][...]),
                 (ref_out, ref_grad_x, ref_grad_p["kernel"][...], ref_grad_p["bias"][...]),
                 terms=terms)


# (batch, height, width, in, out, size): odd and even sides (SAME pads 0/1 or 1/1 at stride 2)
STRIDED_CASES = [(2, 7, 6, 1, 2, 3), (2, 8, 8, 3, 4, 3), (2, 5, 9, 2, 3, 4), (2, 6, 7, 1, 3, 5)]


@pytest.mark.parametrize("batch,height,width,cin,cout,size", quick_first(STRIDED_CASES))
def test_strided_patch_conv_matches_nnx_conv_and_its_gradients(batch, height, width, cin, cout,
                                                               size):
    """Stride 2 (`--pooling stride`) as Keras' Conv2D(strides=2, padding="same"): both patch
    layouts (one channel, several), and where SAME puts its padding on odd and even sides."""
    patch, reference = conv_pair(cin, cout, size, stride=2)
    x = normal((batch, height, width, cin), 3)
    out_shape = (batch, -(-height // 2), -(-width // 2), cout)
    cotangent = normal(out_shape, 4)
    (out, (grad_p, grad_x)), (ref_out, (ref_grad_p, ref_grad_x)) = outputs_and_gradients(
        (patch, reference), x, cotangent)
    assert ref_out.shape == out.shape == out_shape
    assert_close((out, grad_x, grad_p["kernel"][...], grad_p["bias"][...]),
                 (ref_out, ref_grad_x, ref_grad_p["kernel"][...], ref_grad_p["bias"][...]),
                 terms=conv_block_terms(batch, height, width, cin, cout, size))


def test_strided_patch_conv_matches_lax_convolution():
    """The same against XLA's convolution itself, SAME at window strides (2, 2)."""
    x, kernel, bias = normal((3, 28, 28, 2), 5), normal((3, 3, 2, 4), 6), normal((4,), 7)

    def lax_conv(x, kernel, bias):
        return jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias

    cotangent = normal((3, 14, 14, 4), 8)
    got = jax.vjp(partial(patch_conv, stride=2), x, kernel, bias)
    want = jax.vjp(lax_conv, x, kernel, bias)
    assert_close((got[0], got[1](cotangent)), (want[0], want[1](cotangent)),
                 terms=conv_block_terms(3, 28, 28, 2, 4, 3))


# ---- max pooling == nnx.max_pool -----------------------------------------------------------

def tied_images(shape, seed: int) -> jax.Array:
    """Values drawn from {-1, 0, 1, 2}: most 2x2 windows hold a tie (as a blank stretch of a
    digit does), the case where how the gradient is shared shows."""
    draw = np.random.default_rng(seed).integers(-1, 3, shape)
    return jnp.asarray(draw.astype(np.float32))


@pytest.mark.parametrize("draw", ["ties", "normal"])
def test_max_pool_matches_nnx_max_pool_and_its_gradient(draw):
    """Value and gradient exactly nnx.max_pool's (Keras' MaxPooling2D): each window's gradient
    goes to its first maximum in row-major order, ties included."""
    shape = (3, 6, 8, 4)
    x = tied_images(shape, 1) if draw == "ties" else normal(shape, 1)
    cotangent = normal((3, 3, 4, 4), 2)

    def reference(x):
        return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2))

    out, pullback = jax.vjp(max_pool_2x2, x)
    ref_out, ref_pullback = jax.vjp(reference, x)
    np.testing.assert_array_equal(out, ref_out)
    np.testing.assert_array_equal(pullback(cotangent)[0], ref_pullback(cotangent)[0])
    if draw == "ties":  # the gradient is not shared among tied entries (jnp.max would)
        assert set(np.unique(np.asarray(pullback(jnp.ones_like(out))[0]))) == {0.0, 1.0}


def test_max_pool_forward_mode_and_nan():
    """jvp agrees with vjp (the rule is linear in the tangent), and a NaN stays a NaN (a
    diverging trial ends with a NaN loss)."""
    x, tangent = tied_images((2, 4, 4, 3), 3), normal((2, 4, 4, 3), 4)
    _, jvp_out = jax.jvp(max_pool_2x2, (x,), (tangent,))
    _, ref_out = jax.jvp(lambda x: nnx.max_pool(x, (2, 2), (2, 2)), (x,), (tangent,))
    np.testing.assert_array_equal(jvp_out, ref_out)
    pooled = np.asarray(max_pool_2x2(x.at[0, 1, 0, 2].set(jnp.nan)))
    assert np.isnan(pooled[0, 0, 0, 2]) and np.isfinite(np.delete(pooled.ravel(), 2)).all()


# ---- the CNN's pooling option ----------------------------------------------------------------

def test_conv_poolings_keep_the_parameters_and_downsample():
    units = TINY_UNITS["conv"]
    shapes = {}
    for pooling in POOLINGS:
        model = tiny("conv", pooling=pooling)
        shapes[pooling] = {path: leaf.shape for path, leaf in
                           jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}
        assert model.dense.in_features == 7 * 7 * 2 * units
        assert model(images()).shape == (BATCH, 10)
    assert shapes["max"] == shapes["stride"] == shapes["avg"]
    reference = MODELS["conv"]
    for pooling in POOLINGS:
        model = nnx.eval_shape(lambda p=pooling: reference.build(
            reference.reference_units, jax.nn.relu, 10, nnx.Rngs(0), pooling=p))
        assert param_count(model) == REFERENCE_PARAMS["conv"], pooling


def test_conv_poolings_compute_different_functions():
    x = images()
    logits = {p: np.asarray(tiny("conv", pooling=p)(x)) for p in POOLINGS}
    assert not np.allclose(logits["avg"], logits["max"])
    assert not np.allclose(logits["avg"], logits["stride"])


@pytest.mark.parametrize("pooling", ["max", "stride"])
def test_conv_pooling_gradients_match_a_lax_reference(pooling):
    """The whole CNN with max pooling or stride-2 convolutions, against the same network
    written with jax.lax's convolution and reduce_window: logits and every gradient."""
    model = tiny("conv", jax.nn.gelu, pooling=pooling)
    model.fused_kernel = False  # the kernel does not pool this way anyway
    x, weights = images(), normal((BATCH, 10), 9)

    def block(conv, x):
        stride = 2 if pooling == "stride" else 1
        y = jax.lax.conv_general_dilated(x, conv.kernel[...], (stride, stride), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = jax.nn.gelu(y + conv.bias[...])
        if pooling == "max":
            y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                      "VALID")
        return y

    def reference(m, x):
        y = block(m.conv2, block(m.conv1, x[..., None]))
        return m.out(jax.nn.gelu(m.dense(y.reshape(len(x), -1))))

    def loss(forward):
        return lambda m, x: jnp.sum(forward(m, x) * weights)

    got = nnx.grad(loss(lambda m, x: m(x)), argnums=(0, 1))(model, x)
    want = nnx.grad(loss(reference), argnums=(0, 1))(model, x)
    assert_close((model(x), jax.tree.leaves(got)), (reference(model, x), jax.tree.leaves(want)),
                 terms=model_terms(model))


def test_unknown_pooling_is_rejected_with_valid_names():
    with pytest.raises(ValueError) as err:
        tiny("conv", pooling="nope")
    for pooling in POOLINGS:
        assert pooling in str(err.value)


# ---- Recurrent == nnx cells under nnx.RNN --------------------------------------------------

def lstm_reference(model: Recurrent, activation) -> nnx.Module:
    cell = abstract(lambda: nnx.LSTMCell(28, model.units, activation_fn=activation,
                                         rngs=nnx.Rngs(0)))
    kernels = jnp.split(model.input_proj.kernel[...], 4, axis=-1)
    recurrent = jnp.split(model.recurrent_kernel[...], 4, axis=-1)
    biases = jnp.split(model.input_proj.bias[...], 4, axis=-1)
    for i, (x_side, h_side) in enumerate(zip(["ii", "if_", "ig", "io"], ["hi", "hf", "hg", "ho"])):
        getattr(cell, x_side).kernel.set_value(kernels[i])
        getattr(cell, h_side).kernel.set_value(recurrent[i])
        getattr(cell, h_side).bias.set_value(biases[i])  # nnx puts the one bias on the h side
    return cell


def lstm_reference_grads(grads) -> dict[str, jax.Array]:
    """The gradient of an nnx.LSTMCell laid out as Recurrent's parameters."""
    def joined(names, part):
        return jnp.concatenate([grads[n][part][...] for n in names], axis=-1)
    return {"input_kernel": joined(["ii", "if_", "ig", "io"], "kernel"),
            "recurrent_kernel": joined(["hi", "hf", "hg", "ho"], "kernel"),
            "input_bias": joined(["hi", "hf", "hg", "ho"], "bias")}


def fused_reference_grads(grads) -> dict[str, jax.Array]:
    return {"input_kernel": grads["dense_i"]["kernel"][...],
            "recurrent_kernel": grads["dense_h"]["kernel"][...],
            "input_bias": grads["dense_i"]["bias"][...]}


def fused_reference(make_cell):
    """A reference for a cell that, like Recurrent, has dense_i (with bias) and dense_h."""
    def reference(model: Recurrent, activation) -> nnx.Module:
        cell = abstract(lambda: make_cell(28, model.units, activation_fn=activation,
                                          rngs=nnx.Rngs(0)))
        cell.dense_i.kernel.set_value(model.input_proj.kernel[...])
        cell.dense_i.bias.set_value(model.input_proj.bias[...])
        cell.dense_h.kernel.set_value(model.recurrent_kernel[...])
        return cell
    return reference


REFERENCE_CELLS = {
    "lstm": lstm_reference,
    "gru": fused_reference(nnx.GRUCell),
    "simple": fused_reference(nnx.SimpleCell),
}
REFERENCE_GRADS = {"lstm": lstm_reference_grads, "gru": fused_reference_grads,
                   "simple": fused_reference_grads}


def test_every_cell_has_a_reference():
    assert set(REFERENCE_CELLS) == set(CELLS) == set(REFERENCE_GRADS)


def model_and_reference(cell: str, activation) -> tuple[Recurrent, nnx.Module, jax.Array]:
    """A tiny Recurrent, the nnx cell holding the same parameters, and an input."""
    model = tiny("recurrent", activation, cell=cell)
    # A random bias, so that a misplaced bias slice cannot go unnoticed.
    model.input_proj.bias[...] = normal(model.input_proj.bias.shape, 5)
    return model, REFERENCE_CELLS[cell](model, activation), normal((BATCH, 28, 28), 6)


@pytest.mark.parametrize("activation", quick_first([jnp.tanh, jax.nn.relu], ids=["tanh", "relu"]))
@pytest.mark.parametrize("cell", quick_first(CELLS))
def test_recurrent_matches_nnx_cell(cell, activation):
    model, reference_cell, x = model_and_reference(cell, activation)

    hidden = nnx.RNN(reference_cell)(x)  # (batch, time, units)
    expected = model.head(hidden[:, -1])
    assert_close(model(x), expected, terms=model_terms(model))


@pytest.mark.parametrize("activation", quick_first([jnp.tanh, jax.nn.relu], ids=["tanh", "relu"]))
@pytest.mark.parametrize("cell", quick_first(CELLS))
def test_recurrent_gradients_match_nnx_cell(cell, activation):
    """The hand-written backward pass of models/recurrence.py against autodiff of nnx's cells."""
    model, reference_cell, x = model_and_reference(cell, activation)
    weights = normal((BATCH, 10), 7)

    def loss(module, x):
        return jnp.sum(module(x) * weights)

    def reference_loss(cell_module, x):
        return jnp.sum(model.head(nnx.RNN(cell_module)(x)[:, -1]) * weights)

    grads, grad_x = nnx.grad(loss, argnums=(0, 1))(model, x)
    ref_grads, ref_grad_x = nnx.grad(reference_loss, argnums=(0, 1))(reference_cell, x)
    expected = REFERENCE_GRADS[cell](ref_grads)
    assert_close((grad_x, grads["input_proj"]["kernel"][...], grads["input_proj"]["bias"][...],
                  grads["recurrent_kernel"][...]),
                 (ref_grad_x, expected["input_kernel"], expected["input_bias"],
                  expected["recurrent_kernel"]), terms=model_terms(model))


@pytest.mark.slow
@pytest.mark.parametrize("cell", list(CELLS))
def test_unrolled_recurrence_computes_the_same(cell):
    """Cost analysis unrolls the time loops; the function must not change."""
    model, x = tiny("recurrent", jnp.tanh, cell=cell), images()
    looped = nnx.grad(lambda m: jnp.sum(m(x)))(model)
    model.unroll = True
    unrolled = nnx.grad(lambda m: jnp.sum(m(x)))(model)
    assert_close(looped, unrolled, terms=model_terms(model))
