"""The fused CPU LSTM kernel (models/fused_lstm.py) against XLA's loop (models/recurrence.py).

test_models.py checks the model, kernel included, against nnx.LSTMCell for tanh and relu;
here every activation of bench's table is checked, and the choice between the two loops;
then the kernel under jax.vmap (a population of trials), which takes the members' axis
itself; then the guards that keep the kernel from taking the process down: the build
record, the operand checks, the smoke call and OpenBLAS's threads.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bench.contract import registry
from bench.contract.registry import ACTIVATIONS
from models import fused_lstm, native_kernels
from models.recurrence import recur
from models.recurrent import Recurrent, lstm_update
from rounding import assert_close, recurrent_terms
from test_models import images, model_terms, normal, tiny

KERNEL_TARGETS = ("bench_lstm_forward", "bench_lstm_backward")
REPO = Path(__file__).resolve().parents[1]


def activation(name: str) -> Callable:
    """bench's activation called `name` (its table holds the function or its dotted path)."""
    entry = ACTIVATIONS[name]
    return registry.resolve(entry) if isinstance(entry, str) else entry


def kernel_on() -> None:
    """Skips the test where the kernel is not in use (not built, switched off, other CPU)."""
    if fused_lstm.status() != "on":
        pytest.skip(f"fused LSTM kernel: {fused_lstm.status()}")


def test_kernel_is_built_and_loaded():
    """pip install (setup.py) compiles the kernel; without it the numbers come from XLA's loop."""
    if os.environ.get(fused_lstm.DISABLE_VARIABLE) == "0":
        pytest.skip(f"{fused_lstm.DISABLE_VARIABLE}=0")
    assert fused_lstm.status() == "on"


def test_kernel_implements_every_activation_of_the_table():
    missing = [name for name in ACTIVATIONS if activation(name) not in fused_lstm.ACTIVATION_IDS]
    assert not missing, f"add these to lstm_cpu.cc and ACTIVATION_IDS: {missing}"


def loss_and_grads(model: Recurrent, x: jax.Array):
    weights = normal((x.shape[0], 10), 7)

    def loss(module, x):
        return jnp.sum(module(x) * weights)

    return nnx.value_and_grad(loss, argnums=(0, 1))(model, x)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_fused_model_matches_xla_loop(name):
    model = tiny("recurrent", activation(name))
    model.input_proj.bias[...] = normal(model.input_proj.bias.shape, 5)
    x = images() * 4.0 - 2.0  # both signs, so every activation's two sides are used

    value, (grads, grad_x) = loss_and_grads(model, x)
    model.fused_kernel = False
    ref_value, (ref_grads, ref_grad_x) = loss_and_grads(model, x)

    assert_close((value, grad_x, grads), (ref_value, ref_grad_x, ref_grads),
                 terms=model_terms(model))


def test_fused_loop_gradients_for_a_given_carry_and_odd_sizes():
    """Initial carry gradients, and a width (33) that is no multiple of a vector register."""
    assert_loops_agree(steps=5, batch=3, features=7, units=33)


@pytest.mark.parametrize("steps, batch", [(0, 3), (4, 0)], ids=["no step", "empty batch"])
def test_empty_sequence_or_batch_gives_what_xla_loop_gives(steps, batch):
    """No step returns the initial carry (and zero weight gradients), as XLA's loop does."""
    assert_loops_agree(steps=steps, batch=batch, features=7, units=5)


def assert_loops_agree(steps: int, batch: int, features: int, units: int) -> None:
    """The kernel's and XLA's loss and gradients for every argument, for these sizes."""
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
    assert_close(got, want, terms=recurrent_terms(steps, batch, features, units, 4))


@pytest.mark.parametrize("name", ["relu", "tanh", "elu"])
def test_a_nan_input_gives_that_example_nan_logits(name):
    """A diverging trial must still end with a NaN loss, so the kernel must let NaN through."""
    x = images().at[0, 3, 5].set(jnp.nan)
    logits = tiny("recurrent", activation(name))(x)
    assert np.isnan(logits[0]).all()
    assert np.isfinite(logits[1:]).all()


def custom_calls(model: nnx.Module, platform: str, targets=KERNEL_TARGETS) -> set[str]:
    """The kernel `targets` in the training step's program lowered for `platform`."""
    graphdef, state = nnx.split(model)

    def loss(state, x):
        return jnp.sum(nnx.merge(graphdef, state)(x))

    allowed = [jax.export.DisabledSafetyCheck.custom_call(t) for t in targets]
    exported = jax.export.export(jax.jit(jax.grad(loss)), platforms=[platform],
                                 disabled_checks=allowed)(state, images())
    text = exported.mlir_module()
    return {target for target in targets if target in text}


def test_cpu_lstm_runs_the_kernel_and_other_platforms_xla_loop():
    model = tiny("recurrent", jax.nn.relu)
    assert custom_calls(model, "cpu") == set(KERNEL_TARGETS)
    assert custom_calls(model, "cuda") == set()
    assert custom_calls(model, "tpu") == set()


@pytest.mark.parametrize("change", ["unrolled", "switched off", "other activation"])
def test_xla_loop_runs_where_the_kernel_does_not_apply(change):
    """(The GRU and simple cells have their own kernel: test_fused_cells.py.)"""
    act = (lambda x: x * jax.nn.sigmoid(x)) if change == "other activation" else jax.nn.relu
    model = tiny("recurrent", act)
    model.unroll = True if change == "unrolled" else 1
    model.fused_kernel = change != "switched off"
    assert custom_calls(model, "cpu") == set()


def test_environment_variable_switches_the_kernel_off():
    code = "from models import fused_lstm; print(fused_lstm.status())"
    env = {**os.environ, fused_lstm.DISABLE_VARIABLE: "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert out.strip() == f"off ({fused_lstm.DISABLE_VARIABLE}=0)"


# ---- populations: under jax.vmap the kernel takes the members' axis itself ------------------

def member_args(members: tuple[int, ...], steps=5, batch=3, features=7, units=6) -> tuple:
    """(carry, xs, kernel, bias) with the leading axes `members`, each member's values its own."""
    def draw(shape, seed, scale=1.0):
        return normal(members + shape, seed) * scale

    carry = (draw((batch, units), 11), draw((batch, units), 12))
    return (carry, draw((steps, batch, features), 13),
            draw((units + features, 4 * units), 14, 0.3), draw((4 * units,), 15))


def member_loss(act: Callable, carry, xs, kernel, bias):
    c, h = fused_lstm.lstm(act, carry, xs, kernel, bias)
    return jnp.sum(h * jnp.cos(h)) + jnp.sum(jnp.sin(c))  # cotangents differ per element


def member_value_and_grads(act: Callable) -> Callable:
    """One member's loss and its gradients w.r.t. initial carry, xs, kernel and bias."""
    return jax.value_and_grad(partial(member_loss, act), argnums=(0, 1, 2, 3))


def member(args, index, in_axes=None) -> list:
    """Member `index`'s arguments (those with in_axes None are shared, taken whole)."""
    in_axes = in_axes or (0,) * len(args)
    return [arg if axis is None else jax.tree.map(lambda leaf: leaf[index], arg)
            for arg, axis in zip(args, in_axes, strict=True)]


def each_alone(fn: Callable, args, members: int, in_axes=None):
    """`fn` called on each member's arguments in turn, the results stacked."""
    results = [fn(*member(args, m, in_axes)) for m in range(members)]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *results)


def assert_trees_close(got, want, steps=5, batch=3, features=7, units=6) -> None:
    """A population's results against each member's own call (member_args' sizes): the
    members may be cut over threads differently from a member alone."""
    assert_close(got, want, terms=recurrent_terms(steps, batch, features, units, 4))


@pytest.mark.parametrize("name", ["tanh", "relu"])
def test_vmapped_kernel_equals_each_member_alone(name):
    """A population of 3 under jax.vmap: the values and every gradient of each member are
    those of the member's own unbatched call."""
    kernel_on()
    args = member_args((3,))
    fn = member_value_and_grads(activation(name))
    got = jax.jit(jax.vmap(fn))(*args)
    assert_trees_close(got, each_alone(jax.jit(fn), args, 3))
    values = got[0]
    assert len(set(np.asarray(values).tolist())) == 3  # the members do differ


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_members_on_any_number_of_threads_equal_each_member_alone(threads, blas_threads):
    """3 members in turn, over 2 threads (one thread takes two) or over 3: the same results."""
    kernel_on()
    blas_threads(threads)
    args = member_args((3,))
    fn = member_value_and_grads(jax.nn.relu)
    got = jax.jit(jax.vmap(fn))(*args)
    assert_trees_close(got, each_alone(jax.jit(fn), args, 3))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_one_lstm_cut_into_row_slices_gives_what_xla_loop_gives(threads, blas_threads):
    """One LSTM on several threads: its batch cut into row slices, each through the whole
    sequence on its own thread (37 rows: slices of 18 and 19), and its kernel gradient into
    column blocks (132 columns: 64 and 68). Three threads asked for on a machine of two cores:
    as many as XLA's pool has workers."""
    kernel_on()
    blas_threads(threads)
    assert_loops_agree(steps=4, batch=37, features=7, units=33)


def test_members_fewer_than_threads_are_cut_into_row_slices(blas_threads):
    """2 members on 3 threads: each member in 2 row slices (4 tasks), each member's results
    still those of its own call on one thread."""
    kernel_on()
    blas_threads(3)
    args = member_args((2,), batch=37, units=33)
    fn = member_value_and_grads(jax.nn.relu)
    got = jax.jit(jax.vmap(fn))(*args)
    blas_threads(1)
    # Products cut differently sum in another order: the rounding bound, not equality.
    assert_trees_close(got, each_alone(jax.jit(fn), args, 2), batch=37, units=33)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("steps, batch", [(0, 3), (4, 0)], ids=["no step", "empty batch"])
def test_vmapped_empty_sequence_or_batch_equals_each_member_alone(steps, batch, threads,
                                                                   blas_threads):
    """The unbatched call's edge cases, member by member, in turn or spread over threads."""
    kernel_on()
    blas_threads(threads)
    args = member_args((3,), steps=steps, batch=batch)
    fn = member_value_and_grads(jnp.tanh)
    got = jax.jit(jax.vmap(fn))(*args)
    assert_trees_close(got, each_alone(jax.jit(fn), args, 3))


def test_nested_vmap_equals_each_member_alone():
    """vmap of vmap (a 2 x 2 population): the kernel gets two leading axes."""
    kernel_on()
    args = member_args((2, 2))
    fn = member_value_and_grads(jnp.tanh)
    got = jax.jit(jax.vmap(jax.vmap(fn)))(*args)
    solo = jax.jit(fn)
    for i in range(2):
        for j in range(2):
            want = solo(*member(member(args, i), j))
            assert_trees_close(jax.tree.map(lambda leaf: leaf[i, j], got), want)


@pytest.mark.parametrize("shared", ["xs", "kernel", "bias", "carry"])
def test_vmapped_kernel_with_an_operand_shared_by_the_members(shared):
    """An unbatched operand (in_axes None) is broadcast to the members: each member's values
    and gradients are still its own call's."""
    kernel_on()
    names = ("carry", "xs", "kernel", "bias")
    in_axes = tuple(None if name == shared else 0 for name in names)
    args = member_args((3,))
    args = [member([arg], 0)[0] if axis is None else arg for arg, axis in zip(args, in_axes)]
    fn = member_value_and_grads(jnp.tanh)
    got = jax.jit(jax.vmap(fn, in_axes=in_axes))(*args)
    assert_trees_close(got, each_alone(jax.jit(fn), args, 3, in_axes))


def test_gradient_of_a_shared_kernel_is_the_sum_over_members():
    """Differentiating the population's total loss w.r.t. a kernel the members share."""
    kernel_on()
    carry, xs, kernel, bias = member_args((3,))
    kernel = kernel[0]
    loss = partial(member_loss, jnp.tanh)

    def population_loss(kernel):
        return jnp.sum(jax.vmap(loss, in_axes=(0, 0, None, 0))(carry, xs, kernel, bias))

    got = jax.jit(jax.grad(population_loss))(kernel)
    each = each_alone(jax.jit(jax.grad(loss, argnums=2)), (carry, xs, kernel, bias), 3,
                      (0, 0, None, 0))
    assert_close(got, jnp.sum(each, axis=0), terms=recurrent_terms(5, 3, 7, 6, 4) + 3)


def population_step(model: Recurrent, members: int = 3) -> str:
    """The StableHLO of one gradient step of `members` copies of `model` under jax.vmap,
    exported for the CPU, as bench's population program vmaps the model."""
    graphdef, state = nnx.split(model)
    states = jax.tree.map(lambda leaf: jnp.stack([leaf] * members), state)
    xs = jnp.stack([images(seed=seed) for seed in range(members)])

    def loss(state, x):
        return jnp.sum(nnx.merge(graphdef, state)(x))

    allowed = [jax.export.DisabledSafetyCheck.custom_call(t) for t in KERNEL_TARGETS]
    exported = jax.export.export(jax.jit(jax.vmap(jax.grad(loss))), platforms=["cpu"],
                                 disabled_checks=allowed)(states, xs)
    return exported.mlir_module()


def test_vmapped_model_calls_the_kernel_once_per_pass_not_in_a_loop(monkeypatch):
    """One forward and one backward call for the whole population, no loop over members."""
    kernel_on()
    text = population_step(tiny("recurrent", jax.nn.relu))
    for target in KERNEL_TARGETS:
        assert text.count(f"stablehlo.custom_call @{target}(") == 1, target
    assert "stablehlo.while" not in text
    # What it replaced, to show the check would see it: XLA looped over the members.
    monkeypatch.setattr(fused_lstm, "_VMAP_METHOD", "sequential")
    assert "stablehlo.while" in population_step(tiny("recurrent", jax.nn.relu))


def test_vmapped_model_matches_xla_loop():
    """A population of 3 tiny LSTM models, each with its own weights and batch: the kernel's
    losses and gradients are XLA's loop's."""
    kernel_on()
    models = [tiny("recurrent", jnp.tanh, seed=seed) for seed in range(3)]
    graphdef, _ = nnx.split(models[0])
    states = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(nnx.split(m)[1] for m in models))
    xs = jnp.stack([images(seed=seed) * 4.0 - 2.0 for seed in range(3)])
    weights = normal((xs.shape[1], 10), 7)

    def run(fused: bool):
        def loss(state, x):
            model = nnx.merge(graphdef, state)
            model.fused_kernel = fused
            return jnp.sum(model(x) * weights)

        return jax.jit(jax.vmap(jax.value_and_grad(loss, argnums=(0, 1))))(states, xs)

    assert_close(run(True), run(False), terms=model_terms(models[0]))


# ---- the guards: build record, operand checks, smoke call, OpenBLAS -------------------------

def test_build_record_describes_the_installed_kernel():
    kernel_on()
    library = fused_lstm._library_path()
    record = native_kernels.build_record(library)  # raises unless it describes this very file
    assert record["library"] == library.name
    assert record["jaxlib"] == importlib.metadata.version("jaxlib")
    assert f"-march={record['cpu_target']}" in record["flags"]  # native, or BENCH_CPU_TARGET
    if platform.machine() == "x86_64":
        assert {"sse", "sse2"} <= set(record["target_features"])
    assert set(record["target_features"]) <= native_kernels.cpu_features()


@pytest.fixture
def reload():
    """A function that loads the kernel afresh, under the test's patches, and returns the
    reason it falls back, checking that it warned; the next caller loads it unpatched."""
    def load() -> str:
        fused_lstm._load.cache_clear()
        with pytest.warns(RuntimeWarning, match="XLA's loop runs instead") as warned:
            reason = fused_lstm.status()
        assert reason in str(warned[0].message)
        return reason

    yield load
    fused_lstm._load.cache_clear()


def fake_build(folder: Path, record: dict | str | None = None) -> Path:
    """A library file that no loader accepts, with a build record that passes every check
    on this machine, changed by `record` (a string: the record's whole text; None: none)."""
    library = folder / "_lstm_cpu.so"
    library.write_bytes(b"not a shared library")
    entries = {"library_sha256": hashlib.sha256(library.read_bytes()).hexdigest(),
               "target_features": sorted(native_kernels.cpu_features())[:3],
               "jaxlib": importlib.metadata.version("jaxlib")}
    if isinstance(record, dict):
        (folder / fused_lstm.RECORD_NAME).write_text(json.dumps({**entries, **record}))
    elif isinstance(record, str):
        (folder / fused_lstm.RECORD_NAME).write_text(record)
    return library


# The reasons fall back before the library is loaded: loading it would say "cannot load".
BUILD_RECORD_CASES = {
    "matching record": ({}, "cannot load _lstm_cpu.so: "),
    "cpu lacks a feature": ({"target_features": ["avx9000"]},
                            "off: built for avx9000, which this CPU lacks; reinstall bench"),
    "no record": (None, "off: _lstm_cpu.so has no build record _lstm_cpu.json (built by an "
                        "older bench); reinstall bench"),
    "unreadable record": ("{", "off: unreadable build record _lstm_cpu.json"),
    "record of another build": ({"library_sha256": "0" * 64},
                                "off: _lstm_cpu.json describes another build than _lstm_cpu.so"),
    "other jaxlib": ({"jaxlib": "0.4.1"}, "off: built against jaxlib 0.4.1, running "),
}


@pytest.mark.skipif(native_kernels.cpu_features() is None, reason="reads Linux's /proc/cpuinfo")
@pytest.mark.parametrize("case", list(BUILD_RECORD_CASES))
def test_build_record_that_does_not_match_falls_back_before_loading(case, tmp_path, monkeypatch,
                                                                    reload):
    record, reason = BUILD_RECORD_CASES[case]
    library = fake_build(tmp_path, record)
    monkeypatch.setattr(fused_lstm, "_library_path", lambda: library)
    assert reload().startswith(reason)


def test_cpu_that_cannot_be_read_falls_back(tmp_path, monkeypatch, reload):
    library = fake_build(tmp_path, {"target_features": ["sse2"]})
    monkeypatch.setattr(fused_lstm, "_library_path", lambda: library)
    monkeypatch.setattr(native_kernels, "cpu_features", lambda: None)
    assert reload().startswith("off: cannot read this CPU's features to check the kernel's (sse2)")


def test_kernel_for_another_cpu_leaves_the_model_on_xla_loop(tmp_path, monkeypatch, reload):
    """A venv copied to an older CPU: a warning, and the model trains with XLA's loop."""
    library = fake_build(tmp_path, {"target_features": ["avx9000"]})
    monkeypatch.setattr(fused_lstm, "_library_path", lambda: library)
    assert reload().startswith("off: built for avx9000")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, when loading
        assert fused_lstm.status().startswith("off: built for avx9000")
    model = tiny("recurrent", jax.nn.relu)
    assert not fused_lstm.supports(jax.nn.relu)
    assert custom_calls(model, "cpu") == set()
    assert np.isfinite(model(images())).all()
    with pytest.raises(RuntimeError, match="off: built for avx9000"):
        fused_lstm.lstm(jnp.tanh, *fused_lstm._smoke_args())


@pytest.mark.parametrize("failure", ["wrong values", "kernel error"])
def test_failed_smoke_call_falls_back(failure, monkeypatch, reload):
    kernel_on()
    if failure == "wrong values":  # the kernel computes relu where XLA's loop computes tanh
        monkeypatch.setitem(fused_lstm.ACTIVATION_IDS, jnp.tanh,
                            fused_lstm.ACTIVATION_IDS[jax.nn.relu])
        expected = "off: smoke test failed: the kernel's value differs from XLA's loop"
    else:  # the forward call declares too small a residual: the kernel refuses it
        monkeypatch.setattr(fused_lstm, "_COEFFICIENTS", 5)
        expected = "off: smoke test failed: JaxRuntimeError: "
    reason = reload()
    assert reason.startswith(expected)
    if failure == "kernel error":
        assert "bench_lstm_forward: coefs must be (2, 2, 24), got (2, 2, 20)" in reason
    assert not fused_lstm.supports(jnp.tanh)


def forward_shapes(steps=2, batch=2, features=3, units=4) -> dict[str, tuple[int, ...]]:
    """bench_lstm_forward's operands, then its results (lstm_cpu.cc's layouts)."""
    return {"xs": (steps, batch, features), "kernel": (units + features, 4 * units),
            "bias": (4 * units,), "h0": (batch, units), "c0": (batch, units),
            "h_last": (batch, units), "c_last": (batch, units),
            "hx": (steps, batch, units + features), "coefs": (steps, batch, 6 * units),
            "cs": (steps, batch, units)}


def backward_shapes(steps=2, batch=2, features=3, units=4) -> dict[str, tuple[int, ...]]:
    """bench_lstm_backward's operands, then its results."""
    return {"kernel": (units + features, 4 * units), "c0": (batch, units),
            "coefs": (steps, batch, 6 * units), "cs": (steps, batch, units),
            "d_h_last": (batch, units), "d_c_last": (batch, units),
            "hx": (steps, batch, units + features), "d_z": (steps, batch, 4 * units),
            "d_h0": (batch, units), "d_c0": (batch, units),
            "d_kernel": (units + features, 4 * units), "d_bias": (4 * units,)}


def call_target(target: str, changes: dict[str, tuple[int, ...]], lead: tuple[int, ...] = (),
                **attributes) -> list:
    """Calls the kernel's target directly, with the operands' and results' shapes changed;
    `lead`: the population's leading axes in front of every shape (before the changes)."""
    shapes, arguments = ((forward_shapes(), 5) if target == "bench_lstm_forward"
                         else (backward_shapes(), 7))
    shapes = list({**{name: lead + shape for name, shape in shapes.items()}, **changes}.values())
    operands = [jnp.full(shape, 0.5, jnp.float32) for shape in shapes[:arguments]]
    results = [jax.ShapeDtypeStruct(shape, jnp.float32) for shape in shapes[arguments:]]
    call = jax.ffi.ffi_call(target, results)
    return jax.block_until_ready(call(*operands, **attributes))


WRONG_SHAPES = {  # target, the operand or result changed, its shape, the kernel's message
    "xs rank": ("forward", "xs", (2, 3), "xs must be (time, batch, features), got (2, 3)"),
    "kernel width": ("forward", "kernel", (7, 12), "kernel must be (7, 16), got (7, 12)"),
    "bias": ("forward", "bias", (15,), "bias must be (16), got (15)"),
    "c0 batch": ("forward", "c0", (3, 4), "c0 must be (2, 4), got (3, 4)"),
    "h0 rank": ("forward", "h0", (2, 1, 4), "h0 must be (batch, units), got (2, 1, 4)"),
    "result hx": ("forward", "hx", (2, 2, 6), "hx must be (2, 2, 7), got (2, 2, 6)"),
    "result cs steps": ("forward", "cs", (1, 2, 4), "cs must be (2, 2, 4), got (1, 2, 4)"),
    "coefs": ("backward", "coefs", (2, 2, 23), "coefs must be (2, 2, 24), got (2, 2, 23)"),
    "cs rank": ("backward", "cs", (2, 4), "cs must be (time, batch, units), got (2, 4)"),
    "kernel rows": ("backward", "kernel", (3, 16), "units must be positive and kernel must be"),
    "d_h_last": ("backward", "d_h_last", (2, 5), "d_h_last must be (2, 4), got (2, 5)"),
    "result d_kernel": ("backward", "d_kernel", (7, 12), "d_kernel must be (7, 16), got (7, 12)"),
    "result d_bias": ("backward", "d_bias", (), "d_bias must be (16), got ()"),
}


# With a population (leading axes (3,)): every operand and result must have the same ones.
POPULATION_WRONG_SHAPES = {
    "kernel members": ("forward", "kernel", (2, 7, 16),
                       "kernel must be (3, 7, 16), got (2, 7, 16)"),
    "bias without members": ("forward", "bias", (16,), "bias must be (3, 16), got (16)"),
    "h0 rank": ("forward", "h0", (2, 4), "h0 must be (3, batch, units), got (2, 4)"),
    "result hx members": ("forward", "hx", (1, 2, 2, 7),
                          "hx must be (3, 2, 2, 7), got (1, 2, 2, 7)"),
    "result cs unbatched": ("forward", "cs", (2, 2, 4), "cs must be (3, 2, 2, 4), got (2, 2, 4)"),
    "kernel rank": ("backward", "kernel", (7, 16),
                    "kernel must be (3, units + features, 4 * units), got (7, 16)"),
    "c0 members": ("backward", "c0", (4, 2, 4), "c0 must be (3, 2, 4), got (4, 2, 4)"),
    "result d_bias": ("backward", "d_bias", (16,), "d_bias must be (3, 16), got (16)"),
    "result d_kernel": ("backward", "d_kernel", (3, 1, 7, 16),
                        "d_kernel must be (3, 7, 16), got (3, 1, 7, 16)"),
}


# Each case with the leading axes its shapes have.
SHAPE_CASES = {**{name: ((), case) for name, case in WRONG_SHAPES.items()},
               **{f"population {name}": ((3,), case)
                  for name, case in POPULATION_WRONG_SHAPES.items()}}


@pytest.mark.parametrize("case", list(SHAPE_CASES))
def test_kernel_refuses_wrong_shapes_with_an_exception(case):
    kernel_on()
    lead, (direction, operand, shape, message) = SHAPE_CASES[case]
    target = f"bench_lstm_{direction}"
    attributes = {"activation": np.int64(3)} if direction == "forward" else {}
    call_target(target, {}, lead, **attributes)  # the same call with the right shapes runs
    with pytest.raises(jax.errors.JaxRuntimeError, match=re.escape(f"{target}: {message}")):
        call_target(target, {operand: shape}, lead, **attributes)


@pytest.mark.parametrize("lead", [(2, 3), (0,), (3, 0)], ids=["nested", "no member", "empty"])
def test_kernel_takes_any_leading_axes(lead):
    """Nested vmaps give several leading axes; a population may be empty."""
    kernel_on()
    results = call_target("bench_lstm_forward", {}, lead=lead, activation=np.int64(3))
    assert [r.shape[:len(lead)] for r in results] == [lead] * len(results)
    results = call_target("bench_lstm_backward", {}, lead=lead)
    assert [r.shape[:len(lead)] for r in results] == [lead] * len(results)


def test_kernel_refuses_an_unknown_activation():
    kernel_on()
    with pytest.raises(jax.errors.JaxRuntimeError, match="unknown activation id 12"):
        call_target("bench_lstm_forward", {}, activation=np.int64(12))


def test_xla_threads_follow_affinity_and_xla_flags():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert native_kernels.xla_cpu_threads("") == cores
    assert native_kernels.xla_cpu_threads("--xla_cpu_multi_thread_eigen=false") == 1
    assert native_kernels.xla_cpu_threads("--xla_cpu_multi_thread_eigen=true") == cores
    assert native_kernels.xla_cpu_threads("intra_op_parallelism_threads=1") == 1


def test_openblas_threads_are_capped_to_xla_threads():
    kernel_on()
    openblas = native_kernels.openblas()
    assert fused_lstm.blas_threads() == openblas.scipy_openblas_get_num_threads()
    assert 1 <= fused_lstm.blas_threads() <= native_kernels.xla_cpu_threads()


# Where the `models` under test was imported from: the checkout, or under tox the installed
# package (whose kernel tox's build compiled; the checkout's own may not be built at all).
PACKAGE_ROOT = Path(fused_lstm.__file__).resolve().parents[1]


def run_python(code: str, *args: str, **environment: str) -> str:
    """`code`'s standard output in a fresh interpreter (the kernel's loading is per process),
    importing the same `models` as this process (`python -c` puts its working directory first)."""
    env = {**os.environ, **environment}
    env.pop("OPENBLAS_NUM_THREADS", None)  # OpenBLAS's own default: one thread per core
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=PACKAGE_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_openblas_runs_one_thread_where_xla_runs_one():
    code = ("from models import fused_lstm, native_kernels; "
            "print(fused_lstm.status(), fused_lstm.blas_threads(), "
            "native_kernels.openblas().scipy_openblas_get_num_threads())")
    out = run_python(code, XLA_FLAGS="--xla_cpu_multi_thread_eigen=false")
    assert out.split() == ["on", "1", "1"]


@pytest.mark.slow
def test_kernel_loads_in_a_fresh_interpreter_without_openblas_imported_first():
    """The library links OpenBLAS itself: nothing has to load it beforehand."""
    kernel_on()
    code = """if True:
        import ctypes, sys
        library = ctypes.CDLL(sys.argv[1])  # every symbol bound now, or an OSError
        assert library.scipy_cblas_sgemm  # found through the library's own dependencies
        assert "scipy_openblas32" not in sys.modules and "jax" not in sys.modules
        from models import fused_lstm
        print(fused_lstm.status())
        """
    assert run_python(code, str(fused_lstm._library_path())).strip() == "on"


@pytest.mark.slow
def test_failed_compile_still_builds(tmp_path):
    """The kernel is optional: a compiler that fails leaves no library and no record."""
    pytest.importorskip("setuptools", minversion="77")  # what pyproject.toml's metadata needs
    command = [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "lib"),
               "--build-temp", str(tmp_path / "temp")]
    env = {**os.environ, "CC": "/bin/false", "CXX": "/bin/false"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert 'building extension "models.native._lstm_cpu" failed' in done.stderr + done.stdout
    assert not list(tmp_path.rglob("_lstm_cpu*"))
