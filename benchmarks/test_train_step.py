"""pytest-benchmark micro-benchmarks: one jitted training step of each reference model.

Run with `tox -e bench` (saves JSON under .benchmarks/); compare two saved runs with
`pytest benchmarks --benchmark-only --benchmark-compare --benchmark-compare-fail=median:10%`.
The step is compiled before timing and every timed call waits for its result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from bench.contract import registry
from bench.contract.schema import make_config
from bench.engine.steps import build_program
from bench.engine.training import build_model
from models import MODELS

BATCH = 128


@pytest.mark.parametrize("family", list(MODELS))
def test_train_step(benchmark, family):
    config = make_config({"model": family, "activation": "relu", "optimizer": "adam",
                          "batch_size": BATCH})
    program = build_program(build_model(config), registry.optimizer("adam"), BATCH, round_steps=1)
    x = jax.random.uniform(jax.random.key(0), (BATCH, 28, 28))
    y = jax.random.randint(jax.random.key(1), (BATCH,), 0, 10)
    state, key = program.init(), jax.random.key(2)
    step = jax.jit(program.train_round).lower(state, x, y, key).compile()
    holder = [state]

    def one_step():
        holder[0], loss, _ = jax.block_until_ready(step(holder[0], x, y, key))
        return loss

    benchmark.extra_info.update(model=family, units=config.units, batch_size=BATCH,
                                device=str(jax.devices()[0]))
    loss = benchmark(one_step)
    assert jnp.isfinite(loss)
