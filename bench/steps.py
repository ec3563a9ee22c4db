"""Pure training and evaluation functions over a model's split state.

Nothing here reads a clock or a flag. The model is split once into a graph
definition and its parameters (`nnx.split`), and every function below is a pure
function of arrays that `jax.jit` can compile: one call of `train_epoch` is one
compiled program that permutes the resident training set and runs every step
of the epoch in a `lax.scan`, with nothing going back to Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx


class TrainState(NamedTuple):
    params: Any
    opt_state: Any


@dataclass(frozen=True)
class Penalty:
    """L1 and L2 weight penalties on kernels (the TensorFlow Playground's regularization)."""

    l1: float = 0.0
    l2: float = 0.0

    def __call__(self, params) -> jax.Array:
        if not (self.l1 or self.l2):
            return jnp.zeros(())
        kernels = [w for w in jax.tree.leaves(params) if w.ndim >= 2]
        l1 = sum(jnp.abs(w).sum() for w in kernels)
        l2 = sum(jnp.square(w).sum() for w in kernels)
        return self.l1 * l1 + self.l2 * l2


@dataclass(frozen=True)
class Program:
    """The pure functions of one trial: build once, jit or lower as needed."""

    init: Callable[[], TrainState]
    train_epoch: Callable  # (state, x, y, key) -> (state, mean loss, mean accuracy)
    train_round: Callable  # the same, over a fixed number of steps (for timed rounds)
    evaluate: Callable  # (params, x, y) -> (mean loss, accuracy)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def build_program(model: nnx.Module, tx: optax.GradientTransformation, batch_size: int,
                  *, penalty: Penalty = Penalty(), uses_dropout: bool = False,
                  eval_batch: int = 1000, round_steps: int = 20) -> Program:
    """Splits `model` once and returns the trial's pure functions.

    An epoch is every full batch of a fresh permutation (the last partial batch is
    dropped); a round is `round_steps` batches drawn at random (fewer if an epoch is shorter).
    """
    graphdef, params = nnx.split(model)

    def apply(p, x, key=None):
        return nnx.merge(graphdef, p)(x, key)

    def loss_fn(p, x, y, key):
        logits = apply(p, x, key)
        loss = cross_entropy(logits, y).mean()
        return loss + penalty(p), (loss, jnp.mean(jnp.argmax(logits, -1) == y))

    def train_step(state: TrainState, batch):
        x, y, key = batch
        grads, (loss, acc) = jax.grad(loss_fn, has_aux=True)(state.params, x, y, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), (loss, acc)

    def train_steps(state: TrainState, x, y, key, order):
        """Runs one step per row of `order` (batch indices) in a scan."""
        dropout_key = jax.random.fold_in(key, 1)

        def body(st, i_and_idx):
            i, idx = i_and_idx
            step_key = jax.random.fold_in(dropout_key, i) if uses_dropout else None
            return train_step(st, (x[idx], y[idx], step_key))

        state, (losses, accs) = jax.lax.scan(body, state, (jnp.arange(order.shape[0]), order))
        return state, losses.mean(), accs.mean()

    def train_epoch(state: TrainState, x, y, key):
        steps = x.shape[0] // batch_size
        order = jax.random.permutation(key, x.shape[0])[: steps * batch_size]
        return train_steps(state, x, y, key, order.reshape(steps, batch_size))

    def train_round(state: TrainState, x, y, key):
        # Batches drawn with replacement: a full permutation per short round would
        # cost more than the steps it feeds and distort the per-step time.
        steps = min(round_steps, x.shape[0] // batch_size)
        order = jax.random.randint(key, (steps, batch_size), 0, x.shape[0])
        return train_steps(state, x, y, key, order)

    def evaluate(p, x, y):
        return evaluate_in_chunks(lambda xb: apply(p, xb), x, y, eval_batch)

    return Program(lambda: TrainState(params, tx.init(params)), train_epoch, train_round, evaluate)


def evaluate_in_chunks(logits_fn, x: jax.Array, y: jax.Array, chunk: int):
    """Mean loss and accuracy over (x, y), `chunk` examples at a time (padding masked)."""
    n = x.shape[0]
    chunk = min(chunk, n)
    pad = -n % chunk
    xs = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)).reshape(-1, chunk, *x.shape[1:])
    ys = jnp.pad(y, (0, pad)).reshape(-1, chunk)
    mask = (jnp.arange(n + pad) < n).reshape(-1, chunk)

    def one(batch):
        xb, yb, mb = batch
        logits = logits_fn(xb)
        loss = jnp.where(mb, cross_entropy(logits, yb), 0.0).sum()
        return loss, jnp.where(mb, jnp.argmax(logits, -1) == yb, False).sum()

    losses, correct = jax.lax.map(one, (xs, ys, mask))
    return losses.sum() / n, correct.sum() / n
