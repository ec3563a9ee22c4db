"""Training and evaluation: one real jitted epoch per activation and per optimizer.

The cases are expanded over `bench.contract.registry.ACTIVATIONS`, `OPTIMIZERS` and
`models.MODELS`, so a new table entry is trained here without further work. Each
epoch costs a compile: the quick loop (`pytest -m "not slow"`) trains one dense
case, the full suite every case and the multi-epoch checks.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from bench.contract import registry
from bench.contract.registry import ACTIVATIONS, OPTIMIZERS
from bench.engine.steps import Penalty, build_program
from conftest import quick_first
from models import MODELS
from models.cells import CELLS
from rounding import assert_same_bits

# The same tiny sizes as test_models.py, so eager initialisers compile once for both files.
TINY_UNITS = {"dense": 4, "conv": 2, "recurrent": 4}
DEFAULT_TINY_UNITS = 4
BATCH = 32
NUM_CLASSES = 10


def synthetic(n: int, seed: int) -> tuple[jax.Array, jax.Array]:
    """Images whose label k is a bright two-row band at rows 2k+4 and 2k+5, over weak noise.

    Drawn with numpy: every new shape drawn with jax.random costs a compile.
    """
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % NUM_CLASSES)
    band = (np.arange(28)[None, :] // 2) == (y[:, None] + 2)  # (n, 28 rows)
    x = 0.8 * band[:, :, None] + 0.2 * rng.random((n, 28, 28))
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


X_TRAIN, Y_TRAIN = synthetic(256, seed=0)


def tiny(name: str, activation, *, units: int | None = None, seed: int = 0, **options):
    units = units or TINY_UNITS.get(name, DEFAULT_TINY_UNITS)
    return MODELS[name].build(units, activation, NUM_CLASSES, nnx.Rngs(seed), **options)


def train_one_epoch(model, tx, *, key: int = 0, **program_options):
    """(initial state, state after one jitted epoch on X_TRAIN, mean loss, mean accuracy)."""
    program = build_program(model, tx, BATCH, **program_options)
    start = program.init()
    state, loss, acc = jax.jit(program.train_epoch)(start, X_TRAIN, Y_TRAIN, jax.random.key(key))
    return start, state, float(loss), float(acc)


def assert_every_parameter_changed(before, after):
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), before.params, after.params)
    unchanged = [jax.tree_util.keystr(path) for path, c in jax.tree_util.tree_leaves_with_path(changed)
                 if not c]
    assert not unchanged, f"not updated by training: {unchanged}"


def assert_sane_epoch(loss: float, acc: float):
    assert math.isfinite(loss) and 0.0 < loss < 10.0 * math.log(NUM_CLASSES)
    assert 0.0 <= acc <= 1.0


# ---- every activation, every optimizer -----------------------------------------------------

# Compiles dominate the suite's time, so each dense case pairs one activation with one
# optimizer: every activation and every optimizer gets a real epoch, in max(len) compiles.
_PAIRS = max(len(ACTIVATIONS), len(OPTIMIZERS))
DENSE_CASES = [(list(ACTIVATIONS)[i % len(ACTIVATIONS)], list(OPTIMIZERS)[i % len(OPTIMIZERS)])
               for i in range(_PAIRS)]
# Every third activation also trains a non-dense family, in rotation (with adam).
OTHER_FAMILIES = [name for name in MODELS if name != "dense"]
FAMILY_CASES = [(act, OTHER_FAMILIES[(i // 3) % len(OTHER_FAMILIES)])
                for i, act in enumerate(ACTIVATIONS) if i % 3 == 2]


def test_cases_cover_every_table_entry():
    assert {act for act, _ in DENSE_CASES} == set(ACTIVATIONS)
    assert {opt for _, opt in DENSE_CASES} == set(OPTIMIZERS)
    assert {family for _, family in FAMILY_CASES} == set(OTHER_FAMILIES)


@pytest.mark.parametrize("activation,optimizer", quick_first(DENSE_CASES))
def test_one_epoch_trains_dense_with_every_activation_and_optimizer(activation, optimizer):
    model = tiny("dense", registry.activation(activation))
    start, state, loss, acc = train_one_epoch(model, registry.optimizer(optimizer))
    assert_sane_epoch(loss, acc)
    assert_every_parameter_changed(start, state)


@pytest.mark.slow
@pytest.mark.parametrize("activation,family", FAMILY_CASES)
def test_one_epoch_trains_other_families(activation, family):
    model = tiny(family, registry.activation(activation))
    start, state, loss, acc = train_one_epoch(model, registry.optimizer("adam"))
    assert_sane_epoch(loss, acc)
    assert_every_parameter_changed(start, state)


@pytest.mark.parametrize("family, options", [
    pytest.param("dense", {}, id="dense"), pytest.param("conv", {}, id="conv"),
    *(pytest.param("recurrent", {"cell": cell}, id=cell) for cell in CELLS)])
def test_an_epoch_gives_the_same_bits_every_time(family, options):
    """A seed fixes a trial's result: the same epoch from the same state, run again, ends
    in the same parameters to the last bit, whichever threads the CPU kernels' parts fell
    to (the CNN's kernel once summed its gradients per thread, as they came)."""
    program = build_program(tiny(family, jax.nn.relu, **options), registry.optimizer("adam"),
                            BATCH)
    epoch, start = jax.jit(program.train_epoch), program.init()
    first = jax.device_get(epoch(start, X_TRAIN, Y_TRAIN, jax.random.key(0))[0].params)
    for _ in range(3):
        assert_same_bits(epoch(start, X_TRAIN, Y_TRAIN, jax.random.key(0))[0].params, first)


# Each optimizer as documented (its optax factory, fixed options and default learning
# rate), written out here rather than read from the registry: what `registry.optimizer`
# must build.
DOCUMENTED_OPTIMIZERS = {
    "sgd": (0.1, optax.sgd),
    "momentum": (0.01, lambda lr: optax.sgd(lr, momentum=0.9)),
    "nesterov": (0.01, lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True)),
    "adam": (1e-3, optax.adam),
    "adamw": (1e-3, optax.adamw),
    "nadam": (1e-3, optax.nadam),
    "adamax": (2e-3, optax.adamax),
    "rmsprop": (1e-3, optax.rmsprop),
    "adagrad": (1e-2, optax.adagrad),
    "adadelta": (1.0, optax.adadelta),
    "lion": (1e-4, optax.lion),
    "lamb": (1e-3, optax.lamb),
    "yogi": (1e-2, optax.yogi),
}


def test_every_optimizer_is_documented():
    assert set(DOCUMENTED_OPTIMIZERS) == set(OPTIMIZERS)


def three_updates(tx) -> np.ndarray:
    """The updates of three steps on changing gradients: momentum shows from the second."""
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    state, steps = tx.init(params), []
    for g in ([0.3, -0.1, 0.2], [-0.2, 0.4, 0.1], [0.05, 0.05, -0.3]):
        updates, state = tx.update({"w": jnp.array(g)}, state, params)
        params = optax.apply_updates(params, updates)
        steps.append(updates["w"])
    return np.asarray(steps)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_is_the_documented_one_at_its_default_or_a_given_rate(name):
    default_lr, make = DOCUMENTED_OPTIMIZERS[name]
    assert OPTIMIZERS[name].default_lr == default_lr  # what `bench list` shows
    default = three_updates(registry.optimizer(name))
    np.testing.assert_allclose(default, three_updates(make(default_lr)), rtol=1e-6)
    assert np.all(np.isfinite(default)) and np.any(default != 0.0)
    # A given learning rate replaces the default, and that changes the updates.
    given = three_updates(registry.optimizer(name, 3.0 * default_lr))
    np.testing.assert_allclose(given, three_updates(make(3.0 * default_lr)), rtol=1e-6)
    assert not np.allclose(given, default)


@pytest.mark.slow
def test_adam_learns_an_easy_problem():
    """A few epochs take held-out accuracy from chance (0.1) to well above it."""
    x_test, y_test = synthetic(200, seed=1)
    program = build_program(tiny("dense", jax.nn.relu, units=16), registry.optimizer("adam", 1e-2),
                            BATCH)
    train_epoch, evaluate = jax.jit(program.train_epoch), jax.jit(program.evaluate)
    state = program.init()
    loss0, acc0 = evaluate(state.params, x_test, y_test)
    for epoch in range(6):
        state, _, _ = train_epoch(state, X_TRAIN, Y_TRAIN, jax.random.key(epoch))
    loss, acc = evaluate(state.params, x_test, y_test)
    assert float(acc0) < 0.3
    assert float(acc) > 0.9
    assert float(loss) < 0.5 * float(loss0)


@pytest.mark.slow
def test_dropout_reaches_the_model_in_training():
    """With uses_dropout the same epoch (same batches) gives different parameters."""
    model = tiny("dense", jax.nn.relu, dropout=0.5)
    tx = optax.sgd(0.1)
    _, plain, _, _ = train_one_epoch(model, tx, uses_dropout=False)
    _, dropped, loss, acc = train_one_epoch(model, tx, uses_dropout=True)
    assert_sane_epoch(loss, acc)
    leaves = zip(jax.tree.leaves(plain.params), jax.tree.leaves(dropped.params), strict=True)
    assert any(not jnp.allclose(a, b) for a, b in leaves)


# ---- registry ------------------------------------------------------------------------------

@pytest.mark.parametrize("table,find", [(ACTIVATIONS, registry.activation),
                                        (OPTIMIZERS, registry.optimizer)],
                         ids=["activation", "optimizer"])
def test_unknown_name_raises_listing_valid_names(table, find):
    with pytest.raises(ValueError) as err:
        find("no-such-name")
    message = str(err.value)
    assert "no-such-name" in message
    for name in table:
        assert name in message


def test_lookup_names_what_it_looked_for():
    with pytest.raises(ValueError, match=r"unknown widget 'x'; valid: a, b"):
        registry.lookup({"a": 1, "b": 2}, "x", "widget")
    assert registry.lookup({"a": 1, "b": 2}, "b", "widget") == 2


# Activations whose reference is not jax.nn.<name>.
REFERENCE_ACTIVATIONS = {"linear": lambda x: x, "tanh": jnp.tanh}


@pytest.mark.parametrize("name", [n for n in ACTIVATIONS
                                  if n in REFERENCE_ACTIVATIONS or hasattr(jax.nn, n)])
def test_activation_matches_its_reference(name):
    reference = REFERENCE_ACTIVATIONS.get(name) or getattr(jax.nn, name)
    x = jnp.linspace(-6.0, 6.0, 49)
    np.testing.assert_allclose(registry.activation(name)(x), reference(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_has_finite_values_and_gradients(name):
    fn = registry.activation(name)
    x = jnp.linspace(-100.0, 100.0, 201)  # exp(100) overflows float32
    y, dy = jax.jit(lambda x: (fn(x), jax.vmap(jax.grad(fn))(x)))(x)
    assert y.shape == x.shape and jnp.all(jnp.isfinite(y))
    assert not jnp.allclose(y, y[0])
    assert jnp.all(jnp.isfinite(dy))


# ---- evaluation ----------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", quick_first([64, 250, 1000]))
def test_evaluate_in_chunks_matches_direct_computation(chunk):
    """250 examples: chunks of 64 leave 6 padding rows that must not count."""
    model = tiny("dense", jax.nn.relu)
    # A zero (padding) image is predicted as class 0, the padding label: counting padding
    # would add correct answers.
    model.out.bias[...] = jnp.zeros(NUM_CLASSES).at[0].set(1.0)
    assert int(jnp.argmax(model(jnp.zeros((1, 28, 28))))) == 0
    x, y = synthetic(250, seed=2)
    logits = model(x)
    # Half the labels agree with the model, so accuracy is far from both 0 and 1.
    y = jnp.where(jnp.arange(250) % 2 == 0, jnp.argmax(logits, -1), y)
    expected_acc = float(jnp.mean(jnp.argmax(logits, -1) == y))
    expected_loss = float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean())

    program = build_program(model, optax.sgd(0.1), BATCH, eval_batch=chunk)
    loss, acc = program.evaluate(program.init().params, x, y)
    assert float(acc) == pytest.approx(expected_acc, abs=1e-7)
    assert float(loss) == pytest.approx(expected_loss, rel=1e-5)
    assert 0.5 <= expected_acc < 1.0


# ---- penalties -----------------------------------------------------------------------------

def dense_kernels(model) -> list[jax.Array]:
    return [layer.kernel[...] for layer in [*model.hidden, model.out]]


@pytest.mark.parametrize("l1,l2", [(0.01, 0.0), (0.0, 0.01), (0.003, 0.02)])
def test_penalty_is_weighted_sum_over_kernels(l1, l2):
    model = tiny("dense", jax.nn.relu)
    # Non-zero biases, which the penalty must leave out.
    model.out.bias[...] = jnp.full((NUM_CLASSES,), 5.0)
    _, params = nnx.split(model)
    kernels = dense_kernels(model)
    expected = l1 * sum(float(jnp.abs(w).sum()) for w in kernels) \
        + l2 * sum(float(jnp.square(w).sum()) for w in kernels)
    assert expected > 0.0
    assert float(Penalty(l1=l1, l2=l2)(params)) == pytest.approx(expected, rel=1e-5)
    assert float(Penalty()(params)) == 0.0


@pytest.mark.slow
def test_penalty_enters_the_training_objective():
    """One full-batch SGD step: penalised minus plain parameters = -lr * d(penalty)/d(params)."""
    lr, penalty = 0.1, Penalty(l1=0.003, l2=0.02)
    model = tiny("dense", jax.nn.relu)
    _, params0 = nnx.split(model)
    x, y = X_TRAIN[:BATCH], Y_TRAIN[:BATCH]

    def one_step(p):
        program = build_program(model, optax.sgd(lr), BATCH, penalty=p)
        state, _, _ = jax.jit(program.train_epoch)(program.init(), x, y, jax.random.key(0))
        return state.params

    plain, penalised = one_step(Penalty()), one_step(penalty)
    expected = jax.tree.map(lambda g: -lr * g, jax.grad(penalty)(params0))
    leaves = zip(jax.tree_util.tree_leaves_with_path(penalised), jax.tree.leaves(plain),
                 jax.tree.leaves(expected), strict=True)
    for (where, got), base, want in leaves:
        np.testing.assert_allclose(got - base, want, atol=1e-6, err_msg=jax.tree_util.keystr(where))
    # The penalty gradient is non-zero on kernels, so the check above has teeth.
    assert any(float(jnp.abs(g).max()) > 1e-4 for g in jax.tree.leaves(expected))
