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


class Hyper(NamedTuple):
    """A trial's per-member values (schema.AXES rows with per_member). In a population they
    are arrays, one entry per member, and inputs of the compiled program; a trial trained
    alone bakes them in as Python numbers (None: the model's own dropout rate)."""

    learning_rate: Any = None
    l1: Any = 0.0
    l2: Any = 0.0
    dropout: Any = None


@dataclass(frozen=True)
class Penalty:
    """L1 and L2 weight penalties on kernels (the TensorFlow Playground's regularization)."""

    l1: float = 0.0
    l2: float = 0.0

    def __call__(self, params) -> jax.Array:
        if not (self.l1 or self.l2):
            return jnp.zeros(())
        return weight_penalty(params, self.l1, self.l2)


def weight_penalty(params, l1, l2) -> jax.Array:
    """l1 * sum |w| + l2 * sum w^2 over the kernels (every parameter of rank >= 2)."""
    kernels = [w for w in jax.tree.leaves(params) if w.ndim >= 2]
    return l1 * sum(jnp.abs(w).sum() for w in kernels) + l2 * sum(jnp.square(w).sum() for w in kernels)


@dataclass(frozen=True)
class Program:
    """The pure functions of one trial: build once, jit or lower as needed."""

    init: Callable[[], TrainState]
    train_epoch: Callable  # (state, x, y, key) -> (state, mean loss, mean accuracy)
    train_round: Callable  # the same, over a fixed number of steps (for timed rounds)
    evaluate: Callable  # (params, x, y) -> (mean loss, accuracy)


@dataclass(frozen=True)
class MemberProgram:
    """A trial's pure functions with its per-member values (`Hyper`) as an input.

    The same functions serve a member trained alone (its timed rounds) and, under
    `jax.vmap`, a whole population (`population_program`)."""

    init: Callable  # (params, hyper) -> TrainState
    train_epoch: Callable  # (state, hyper, x, y, key) -> (state, mean loss, mean accuracy)
    train_round: Callable  # the same, over a fixed number of steps
    evaluate: Callable  # (params, x, y) -> (mean loss, accuracy)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def build_program(model: nnx.Module, tx: optax.GradientTransformation, batch_size: int,
                  *, penalty: Penalty = Penalty(), uses_dropout: bool = False,
                  eval_batch: int = 1000, round_steps: int = 20) -> Program:
    """Splits `model` once and returns the trial's pure functions, its values baked in.

    An epoch is every full batch of a fresh permutation (the last partial batch is
    dropped); a round is `round_steps` batches drawn at random (fewer if an epoch is shorter).
    """
    graphdef, params = nnx.split(model)
    member = build_member_program(graphdef, lambda _: tx, batch_size,
                                  penalized=bool(penalty.l1 or penalty.l2),
                                  uses_dropout=uses_dropout, eval_batch=eval_batch,
                                  round_steps=round_steps)
    hyper = Hyper(l1=penalty.l1, l2=penalty.l2)
    return Program(lambda: TrainState(params, tx.init(params)),
                   lambda state, x, y, key: member.train_epoch(state, hyper, x, y, key),
                   lambda state, x, y, key: member.train_round(state, hyper, x, y, key),
                   member.evaluate)


def injected(make: Callable[[Any], optax.GradientTransformation]) -> Callable:
    """hyper -> the optimizer with the learning rate in its state, not in its code
    (optax.inject_hyperparams), so that one program serves every member's rate."""
    factory = optax.inject_hyperparams(lambda learning_rate: make(learning_rate))
    return lambda hyper: factory(learning_rate=hyper.learning_rate)


def build_member_program(graphdef, tx_of: Callable[[Hyper], optax.GradientTransformation],
                         batch_size: int, *, penalized: bool, uses_dropout: bool,
                         eval_batch: int = 1000, round_steps: int = 20) -> MemberProgram:
    """The pure functions of one trial of the model `graphdef`, its `Hyper` an input."""

    def apply(p, x, key=None, rate=None):
        # Fresh Variables at the current trace level: Flax's own transforms inside a model
        # (nnx.RNN's scan in the stock forms) refuse Variables made under an outer trace,
        # as `p` is inside the evaluation's lax.map. Free at run time (trace-time only).
        return nnx.merge(graphdef, jax.tree.map(lambda a: a, p))(x, key, rate)

    def loss_fn(p, hyper: Hyper, x, y, key):
        logits = apply(p, x, key, hyper.dropout)
        loss = cross_entropy(logits, y).mean()
        total = loss + weight_penalty(p, hyper.l1, hyper.l2) if penalized else loss
        return total, (loss, jnp.mean(jnp.argmax(logits, -1) == y))

    def train_step(state: TrainState, hyper: Hyper, batch):
        x, y, key = batch
        grads, (loss, acc) = jax.grad(loss_fn, has_aux=True)(state.params, hyper, x, y, key)
        updates, opt_state = tx_of(hyper).update(grads, state.opt_state, state.params)
        return TrainState(optax.apply_updates(state.params, updates), opt_state), (loss, acc)

    def train_steps(state: TrainState, hyper: Hyper, x, y, key, order):
        """Runs one step per row of `order` (batch indices) in a scan."""
        dropout_key = jax.random.fold_in(key, 1)

        def body(st, i_and_idx):
            i, idx = i_and_idx
            step_key = jax.random.fold_in(dropout_key, i) if uses_dropout else None
            return train_step(st, hyper, (x[idx], y[idx], step_key))

        state, (losses, accs) = jax.lax.scan(body, state, (jnp.arange(order.shape[0]), order))
        return state, losses.mean(), accs.mean()

    def train_epoch(state: TrainState, hyper: Hyper, x, y, key):
        steps = x.shape[0] // batch_size
        order = jax.random.permutation(key, x.shape[0])[: steps * batch_size]
        return train_steps(state, hyper, x, y, key, order.reshape(steps, batch_size))

    def train_round(state: TrainState, hyper: Hyper, x, y, key):
        # Batches drawn with replacement: a full permutation per short round would
        # cost more than the steps it feeds and distort the per-step time.
        steps = min(round_steps, x.shape[0] // batch_size)
        order = jax.random.randint(key, (steps, batch_size), 0, x.shape[0])
        return train_steps(state, hyper, x, y, key, order)

    def evaluate(p, x, y):
        return evaluate_in_chunks(lambda xb: apply(p, xb), x, y, eval_batch)

    def init(params, hyper: Hyper) -> TrainState:
        return TrainState(params, tx_of(hyper).init(params))

    return MemberProgram(init, train_epoch, train_round, evaluate)


@dataclass(frozen=True)
class PopulationProgram:
    """A member program over a population: every argument has the members on axis 0,
    except the data set, which all members share."""

    init: Callable  # (params, hyper) -> TrainState
    train_epoch: Callable  # (state, hyper, active, x, y, keys) -> (state, losses, accuracies)
    evaluate: Callable  # (params, x, y) -> (losses, accuracies)


def population_program(member: MemberProgram) -> PopulationProgram:
    """`member` vmapped over a population. A member whose `active` entry is False keeps
    its state (a diverged member is frozen while the others train on)."""
    epoch = jax.vmap(member.train_epoch, in_axes=(0, 0, None, None, 0))

    def train_epoch(state, hyper, active, x, y, keys):
        new, losses, accs = epoch(state, hyper, x, y, keys)
        keep = lambda n, o: jnp.where(active.reshape(active.shape + (1,) * (n.ndim - 1)), n, o)  # noqa: E731
        return jax.tree.map(keep, new, state), losses, accs

    return PopulationProgram(jax.vmap(member.init),
                             train_epoch,
                             jax.vmap(member.evaluate, in_axes=(0, None, None)))


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
