"""run_trial: build, compile, train, time and evaluate one configuration.

A trial never raises for a problem of its own: a NaN/inf loss ends it as
`diverged`, an exception as `failed` with its message, and the sweep goes on.
Evaluation runs between epochs, outside the timed region.
"""

from __future__ import annotations

import math
import statistics
import time
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from bench.engine import costs
from bench.contract import registry
from bench.engine.data import Dataset
from bench.engine.hostload import LoadMeter
from bench.contract.schema import Record, TimingProtocol, TrialConfig, model_options
from bench.engine.steps import Penalty, build_program
from bench.engine.timing import CacheHits, compile_ahead, summarize, time_rounds, time_to_accuracy, timed_call
from models import MODELS


def build_model(config: TrialConfig) -> nnx.Module:
    """The configured Flax model, initialised from the trial's seed."""
    options = {name: getattr(config, name) for name in model_options(config.model)}
    act = registry.activation(config.activation)
    family = MODELS[config.model].build_impl(config.impl or "tuned")
    return family(config.units, act, 10, nnx.Rngs(config.seed), **options)


_DEVICE_DATA: dict = {}


def place_dataset(dataset: Dataset, device: jax.Device) -> tuple:
    """The data set's four arrays on `device`, transferred once per process."""
    cached = _DEVICE_DATA.get(str(device))
    # Matched by identity, not id(): a freed data set's id is often reused by the next one.
    if cached is None or cached[0] is not dataset:
        _DEVICE_DATA.clear()  # keep one data set resident, not every one ever seen
        arrays = (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)
        _DEVICE_DATA[str(device)] = (dataset, tuple(jax.device_put(jnp.asarray(a), device)
                                                    for a in arrays))
    return _DEVICE_DATA[str(device)][1]


def run_trial(config: TrialConfig, dataset: Dataset, device: jax.Device,
              protocol: TimingProtocol = TimingProtocol(), *, peak_flops: float | None = None,
              on_epoch: Callable[[dict], None] | None = None) -> Record:
    """Trains, evaluates and times `config`; failures come back as a record, never raised.

    `peak_flops` is the device's measured FLOP/s (bench.engine.calibrate), for the % of peak.
    `on_epoch`, if given, is called with each epoch's history entry (for progress displays).
    """
    result = Record(config=config, train_examples=len(dataset.y_train),
                    test_examples=len(dataset.y_test))
    start = time.perf_counter()
    try:
        with jax.default_device(device), costs.TrialMemory(device) as memory:
            _measure(config, dataset, device, protocol, result, on_epoch or (lambda _: None))
        result.memory.update(memory.figures())
        _summarise(result, config, protocol, peak_flops)
    except Exception as exc:  # noqa: BLE001 - a failing trial becomes a record
        result.status = "failed"
        result.error = f"{type(exc).__name__}: {exc}"
        result.traceback = traceback.format_exc(limit=8)
    result.wall_s = round(time.perf_counter() - start, 3)
    return result


def _measure(config, dataset, device, protocol, result: Record, on_epoch) -> None:
    x, y, x_test, y_test = place_dataset(dataset, device)
    result.steps_per_epoch = len(dataset.y_train) // config.batch_size
    if result.steps_per_epoch == 0:
        raise ValueError(f"batch size {config.batch_size} exceeds the "
                         f"{len(dataset.y_train)} training examples")
    tx = registry.optimizer(config.optimizer, config.learning_rate)
    model = build_model(config)
    program = _program(model, config, tx, protocol)
    state = jax.device_put(program.init(), device)
    result.params = sum(p.size for p in jax.tree.leaves(state.params))
    key = jax.random.key(config.seed)
    with CacheHits() as cache:
        epoch, result.compile_s = compile_ahead(program.train_epoch, state, x, y, key,
                                                donate_argnums=0)
        evaluate, result.eval_compile_s = compile_ahead(program.evaluate, state.params,
                                                        x_test, y_test)
        train_round, result.round_compile_s = compile_ahead(program.train_round, state, x, y,
                                                            key, donate_argnums=0)
    result.compile_cache_hits = cache.hits
    result.flops_per_step = _step_flops(model, program, config, tx, protocol, state, x, y, key)
    result.memory = {"program": costs.program_memory(epoch)}
    state = _train_epochs(config, epoch, evaluate, state, (x, y, x_test, y_test), key, result,
                          on_epoch)
    if result.status == "ok":
        time_alone(train_round, state, x, y, key, protocol, result)


def _program(model, config: TrialConfig, tx, protocol: TimingProtocol):
    return build_program(model, tx, config.batch_size, penalty=Penalty(config.l1, config.l2),
                         uses_dropout=config.dropout > 0, round_steps=protocol.round_steps)


# What a model is switched to for its FLOP count: loops unrolled, XLA forms instead of kernels.
_COUNTED_FORM = {"unroll": True, "fused_kernel": False}


def _step_flops(model, program, config, tx, protocol, state, x, y, key) -> float | None:
    """FLOPs of one training step: XLA's count for a round (a scan, so its body: one step).

    Loops inside a step are counted once too, so a model that loops over time is split
    again with the loop unrolled for this count (lowered only, never compiled or run); and
    XLA cannot count inside a CPU kernel's custom call, so a model with one is split again
    in its XLA form. `program` has already split `model`, so changing it here does not
    affect training.
    """
    counted_form = {name: value for name, value in _COUNTED_FORM.items() if hasattr(model, name)}
    if counted_form:
        for name, value in counted_form.items():
            setattr(model, name, value)
        program = _program(model, config, tx, protocol)
    return costs.flops(jax.jit(program.train_round).lower(state, x, y, key))


def _train_epochs(config, epoch, evaluate, state, arrays, key, result, on_epoch):
    x, y, x_test, y_test = arrays
    for index in range(config.epochs):
        (state, loss, acc), seconds = timed_call(epoch, state, x, y, jax.random.fold_in(key, index))
        test_loss, test_acc = (float(v) for v in evaluate(state.params, x_test, y_test))
        result.epoch_s.append(round(seconds, 4))
        result.history.append({"epoch": index + 1, "train_loss": float(loss),
                               "train_accuracy": float(acc), "test_loss": test_loss,
                               "test_accuracy": test_acc, "epoch_s": round(seconds, 4)})
        result.test_loss, result.test_accuracy = test_loss, test_acc
        on_epoch(result.history[-1])
        if not (math.isfinite(float(loss)) and math.isfinite(test_loss)):
            result.status = "diverged"
            break
    return state


def time_alone(train_round, state, x, y, key, protocol, result: Record) -> None:
    """Burn-in, then `repeats` synchronised rounds on the trained state (after evaluation)."""
    box = [state]
    round_key = jax.random.fold_in(key, 1_000_003)

    def one_round():
        box[0], loss, _ = train_round(box[0], x, y, round_key)
        return box[0], loss

    with LoadMeter() as load:
        result.rounds_s = [round(t, 5) for t in
                           time_rounds(one_round, repeats=protocol.repeats, burn_in=protocol.burn_in)]
    result.other_cpu_cores, result.busy = load.other_cores(), load.busy()


def _summarise(result: Record, config: TrialConfig, protocol: TimingProtocol,
               peak_flops: float | None) -> None:
    """Derived figures: steady epoch time, round statistics, FLOP/s, time to accuracy."""
    if result.epoch_s:
        result.first_epoch_s = result.epoch_s[0]
        result.steady_epoch_s = steady(result.epoch_s)
    round_figures(result, config, protocol, peak_flops)
    result.time_to_accuracy = time_to_accuracy(result.history, protocol.targets,
                                               result.compile_s or 0.0)


def steady(epoch_s: list[float]) -> float:
    """The steady epoch time: the median of the epochs after the first (the first alone)."""
    return round(statistics.median(epoch_s[1:] or epoch_s), 4)


def round_figures(result: Record, config: TrialConfig, protocol: TimingProtocol,
                  peak_flops: float | None) -> None:
    """Round statistics, step time, samples/s, FLOP/s and % of peak from the timed rounds."""
    result.round_steps = min(protocol.round_steps, result.steps_per_epoch)
    if not result.rounds_s:
        return
    result.round_stats = {k: (round(v, 6) if isinstance(v, float) else v)
                          for k, v in summarize(result.rounds_s).items()}
    step_s = result.round_stats["median"] / result.round_steps
    result.step_ms = round(1000 * step_s, 4)
    result.samples_per_s = round(config.batch_size / step_s, 1)
    if result.flops_per_step:
        result.achieved_flops = round(result.flops_per_step / step_s, 1)
        if peak_flops:
            result.peak_fraction = round(result.achieved_flops / peak_flops, 4)
