"""run_trial: build, compile, train, time and evaluate one configuration.

A trial never raises for a problem of its own: a NaN/inf loss ends it as
`diverged`, an exception as `failed` with its message, and the sweep goes on.
Evaluation runs between epochs, outside the timed region.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
from flax import nnx

from bench import costs, registry
from bench.data import Dataset
from bench.hostload import LoadMeter
from bench.spec import TrialConfig
from bench.steps import Penalty, build_program
from bench.timing import (CacheHits, TimingProtocol, compile_ahead, summarize, time_rounds,
                          time_to_accuracy, timed_call)
from models import MODELS

STATUSES = ("ok", "diverged", "failed")


@dataclass
class TrialResult:
    """One results.jsonl record. Times are seconds; accuracies are fractions of 1.

    compile_s: the training-epoch program, compiled ahead of time (never inside an
    epoch time). epoch_s: each epoch's synchronised wall time. rounds_s: the timed
    rounds of `round_steps` steps after a burn-in; step_ms and samples_per_s come
    from their median.
    """

    key: str
    config: dict
    status: str = "ok"
    test_accuracy: float | None = None
    test_loss: float | None = None
    compile_s: float | None = None
    eval_compile_s: float | None = None
    round_compile_s: float | None = None
    compile_cache_hits: int = 0
    epoch_s: list[float] = field(default_factory=list)
    first_epoch_s: float | None = None
    steady_epoch_s: float | None = None
    round_steps: int | None = None
    rounds_s: list[float] = field(default_factory=list)
    round_stats: dict | None = None
    step_ms: float | None = None
    samples_per_s: float | None = None
    flops_per_step: float | None = None
    achieved_flops: float | None = None
    peak_fraction: float | None = None
    memory: dict = field(default_factory=dict)
    other_cpu_cores: float | None = None
    busy: bool = False
    time_to_accuracy: dict = field(default_factory=dict)
    steps_per_epoch: int | None = None
    train_examples: int | None = None
    test_examples: int | None = None
    params: int | None = None
    history: list[dict] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    wall_s: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_model(config: TrialConfig) -> nnx.Module:
    """The configured Flax model, initialised from the trial's seed."""
    entry = MODELS[config.model]
    options = {"depth": config.depth, "cell": config.cell, "dropout": config.dropout}
    kwargs = {k: v for k, v in options.items() if k in entry.options and v is not None}
    act = registry.activation(config.activation)
    return entry.build(config.units, act, 10, nnx.Rngs(config.seed), **kwargs)


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
              on_epoch: Callable[[dict], None] | None = None) -> TrialResult:
    """Trains, evaluates and times `config`; failures come back as a record, never raised.

    `peak_flops` is the device's measured FLOP/s (bench.calibrate), for the % of peak.
    `on_epoch`, if given, is called with each epoch's history entry (for progress displays).
    """
    result = TrialResult(key=config.key(), config=config.to_dict(),
                         train_examples=len(dataset.y_train), test_examples=len(dataset.y_test))
    start = time.perf_counter()
    try:
        with jax.default_device(device):
            _measure(config, dataset, device, protocol, result, on_epoch or (lambda _: None))
        _summarise(result, config, protocol, peak_flops, device)
    except Exception as exc:  # noqa: BLE001 - a failing trial becomes a record
        result.status = "failed"
        result.error = f"{type(exc).__name__}: {exc}"
        result.traceback = traceback.format_exc(limit=8)
    result.wall_s = round(time.perf_counter() - start, 3)
    return result


def _measure(config, dataset, device, protocol, result: TrialResult, on_epoch) -> None:
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
        _time_rounds(train_round, state, x, y, key, protocol, result)


def _program(model, config: TrialConfig, tx, protocol: TimingProtocol):
    return build_program(model, tx, config.batch_size, penalty=Penalty(config.l1, config.l2),
                         uses_dropout=config.dropout > 0, round_steps=protocol.round_steps)


def _step_flops(model, program, config, tx, protocol, state, x, y, key) -> float | None:
    """FLOPs of one training step: XLA's count for a round (a scan, so its body: one step).

    Loops inside a step are counted once too, so a model that loops over time is split
    again with the loop unrolled for this count (lowered only, never compiled or run).
    `program` has already split `model`, so changing it here does not affect training.
    """
    if hasattr(model, "unroll"):
        model.unroll = True
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


def _time_rounds(train_round, state, x, y, key, protocol, result: TrialResult) -> None:
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


def _summarise(result: TrialResult, config: TrialConfig, protocol: TimingProtocol,
               peak_flops: float | None, device: jax.Device) -> None:
    """Derived figures: steady epoch time, round statistics, FLOP/s, time to accuracy, memory."""
    if result.epoch_s:
        result.first_epoch_s = result.epoch_s[0]
        result.steady_epoch_s = round(statistics.median(result.epoch_s[1:] or result.epoch_s), 4)
    result.round_steps = min(protocol.round_steps, result.steps_per_epoch)
    if result.rounds_s:
        result.round_stats = {k: (round(v, 6) if isinstance(v, float) else v)
                              for k, v in summarize(result.rounds_s).items()}
        step_s = result.round_stats["median"] / result.round_steps
        result.step_ms = round(1000 * step_s, 4)
        result.samples_per_s = round(config.batch_size / step_s, 1)
        if result.flops_per_step:
            result.achieved_flops = round(result.flops_per_step / step_s, 1)
            if peak_flops:
                result.peak_fraction = round(result.achieved_flops / peak_flops, 4)
    result.time_to_accuracy = time_to_accuracy(result.history, protocol.targets,
                                               result.compile_s or 0.0)
    result.memory["device_peak_bytes"] = costs.device_peak_bytes(device)
    result.memory["process_peak_rss_bytes"] = costs.process_peak_rss_bytes()
