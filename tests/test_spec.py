"""Trials and sweeps: expansion of a SweepSpec, trial keys, and validation messages.

Nothing here compiles or trains; the cases are expanded over the registry tables,
so a new model, activation or optimizer is covered without further work.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest

from bench import registry
from bench.spec import (AXES, SpecError, SweepSpec, TrialConfig, check_value, expand, make_trial,
                        validate)
from models import CELLS, MODELS


def test_default_sweep_is_the_quick_twelve():
    trials = expand(SweepSpec())
    combos = [(t.model, t.activation, t.optimizer) for t in trials]
    assert len(trials) == 12
    assert combos == list(itertools.product(("dense", "conv", "recurrent"), ("relu", "tanh"),
                                            ("sgd", "adam")))
    for t in trials:
        assert t.units == MODELS[t.model].reference_units
        assert t.learning_rate == registry.OPTIMIZERS[t.optimizer].default_lr
        assert (t.epochs, t.batch_size, t.seed) == (3, 128, 0)
        assert (t.dropout, t.l1, t.l2) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("model", MODELS)
def test_options_a_family_ignores_are_cleared(model):
    """depth only on families with a depth option, cell only on those with a cell."""
    trial = make_trial(model, None, "relu", "sgd", depth=3, cell="gru")
    options = MODELS[model].options
    assert trial.depth == (3 if "depth" in options else None)
    assert trial.cell == ("gru" if "cell" in options else None)


@pytest.mark.parametrize("model, axis, values", [
    ("conv", "depth", (1, 2, 3)),
    ("recurrent", "depth", (1, 2, 3)),
    ("dense", "cell", tuple(CELLS)),
    ("conv", "cell", tuple(CELLS)),
])
def test_an_ignored_axis_does_not_multiply_trials(model, axis, values):
    spec = SweepSpec(models=(model,), **{axis: values})
    trials = expand(spec)
    assert len(trials) == 4  # 2 activations x 2 optimizers, once each
    assert len({t.key() for t in trials}) == 4


@pytest.mark.parametrize("model, axis, values", [
    ("dense", "depth", (1, 2, 3)),
    ("recurrent", "cell", tuple(CELLS)),
])
def test_a_used_axis_multiplies_trials(model, axis, values):
    trials = expand(SweepSpec(models=(model,), **{axis: values}))
    assert len(trials) == 4 * len(values)
    assert {getattr(t, axis) for t in trials} == set(values)


def test_repeated_values_are_deduplicated_keeping_order():
    trials = expand(SweepSpec(models=("dense", "dense"), activations=("tanh", "relu", "tanh"),
                              optimizers=("adam",)))
    assert [t.activation for t in trials] == ["tanh", "relu"]


@pytest.mark.parametrize("model", MODELS)
def test_units_none_means_the_reference_width(model):
    (auto, given) = expand(SweepSpec(models=(model,), activations=("relu",), optimizers=("adam",),
                                     units=(None, 7)))
    assert auto.units == MODELS[model].reference_units
    assert given.units == 7


@pytest.mark.parametrize("optimizer", registry.OPTIMIZERS)
def test_learning_rate_none_means_the_optimizers_default(optimizer):
    (auto, given) = expand(SweepSpec(models=("dense",), activations=("relu",),
                                     optimizers=(optimizer,), learning_rate=(None, 0.0123)))
    assert auto.learning_rate == registry.OPTIMIZERS[optimizer].default_lr
    assert given.learning_rate == 0.0123


BASE = TrialConfig(model="dense", units=4, activation="relu", optimizer="adam",
                   learning_rate=1e-3, depth=2)

# A different value for every field: the key must see each of them.
CHANGED = {"model": "conv", "units": 5, "activation": "tanh", "optimizer": "sgd",
           "learning_rate": 2e-3, "batch_size": 64, "epochs": 4, "seed": 1, "depth": 3,
           "cell": "gru", "dropout": 0.1, "l1": 1e-5, "l2": 1e-4}


def test_changed_covers_every_field():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(TrialConfig)}


def test_key_is_stable():
    """Pinned: a changed key would orphan every run directory that is resumed or compared."""
    assert BASE.key() == dataclasses.replace(BASE).key()
    assert BASE.key() == "e69a3108ceb2"
    assert len(BASE.key()) == 12 and int(BASE.key(), 16) >= 0


@pytest.mark.parametrize("field, value", CHANGED.items())
def test_key_changes_with_any_field(field, value):
    assert dataclasses.replace(BASE, **{field: value}).key() != BASE.key()


def test_from_dict_round_trip_through_json():
    config = TrialConfig(**CHANGED)
    again = TrialConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.key() == config.key()


def test_from_dict_ignores_fields_it_does_not_know():
    """A results record's config may carry more than this version knows."""
    assert TrialConfig.from_dict({**BASE.to_dict(), "added_later": 1}) == BASE


def test_label_names_the_trial():
    assert BASE.label() == "dense-4 relu adam lr=0.001"
    assert dataclasses.replace(BASE, depth=3, l2=1e-4).label() == "dense-4x3 relu adam lr=0.001 l2=0.0001"


@pytest.mark.parametrize("axis, value, expected", [
    ("models", "mlp", ["models", "'mlp'", *MODELS]),
    ("activations", "swish", ["activations", "'swish'", *registry.ACTIVATIONS]),
    ("optimizers", "sgdm", ["optimizers", "'sgdm'", *registry.OPTIMIZERS]),
    ("cell", "transformer", ["cell", "'transformer'", *CELLS]),
    ("units", 0, ["units", "> 0"]),
    ("units", 3.5, ["units", "integer"]),
    ("units", True, ["units", "integer"]),
    ("depth", 0, ["depth"]),
    ("epochs", -1, ["epochs", "> 0"]),
    ("epochs", 0, ["epochs", "> 0"]),
    ("batch_size", 0, ["batch_size"]),
    ("learning_rate", 0.0, ["learning_rate", "> 0"]),
    ("learning_rate", "fast", ["learning_rate", "number"]),
    ("dropout", 1.0, ["dropout", "< 1"]),
    ("dropout", -0.1, ["dropout", ">= 0"]),
    ("l1", -1e-5, ["l1", ">= 0"]),
    ("l2", -0.1, ["l2", ">= 0"]),
    ("seeds", -1, ["seeds", ">= 0"]),
])
def test_bad_values_name_the_axis_and_what_is_valid(axis, value, expected):
    with pytest.raises(SpecError) as err:
        expand(dataclasses.replace(SweepSpec(), **{axis: (value,)}))
    for text in expected:
        assert text in str(err.value)


@pytest.mark.parametrize("axis, value", [
    ("dropout", 0.0), ("dropout", 0.5), ("seeds", 0), ("l1", 0.0), ("l2", 0), ("units", None),
    ("learning_rate", None), ("learning_rate", 1), ("units", 1),
])
def test_boundary_values_are_accepted(axis, value):
    check_value(axis, value)


def test_an_empty_axis_is_an_error():
    with pytest.raises(SpecError, match="optimizers: give at least one value"):
        validate(SweepSpec(optimizers=()))


def test_an_unknown_axis_lists_the_axes():
    with pytest.raises(SpecError) as err:
        check_value("model", "dense")
    assert all(axis in str(err.value) for axis in AXES)


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)
