"""The schema: the axes table, trial configs and their keys, records and their versions.

Nothing here compiles or trains; the cases are expanded over the registry tables and
the axes table, so a new model, activation, optimizer or axis is covered without
further work.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.contract import registry
from bench.contract.facts import MachineFacts, PopulationFacts
from bench.contract.schema import (AXES, AXIS_BY_KEY, SCHEMA_VERSION, Record, SchemaError, SpecError,
                          TrialConfig, axis, make_config, model_options)
from bench.contract.sweepfile import expand
from models import CELLS, MODELS

REPO = Path(__file__).resolve().parents[1]


def test_default_sweep_is_the_quick_twelve():
    trials = expand({})
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
    trial = make_config({"model": model, "activation": "relu", "optimizer": "sgd", "depth": 3,
                         "cell": "gru"})
    options = model_options(model)
    assert trial.depth == (3 if "depth" in options else None)
    assert trial.cell == ("gru" if "cell" in options else None)


@pytest.mark.parametrize("model, axis, values", [
    ("conv", "depth", (1, 2, 3)),
    ("recurrent", "depth", (1, 2, 3)),
    ("dense", "cell", tuple(CELLS)),
    ("conv", "cell", tuple(CELLS)),
])
def test_an_ignored_axis_does_not_multiply_trials(model, axis, values):
    trials = expand({"models": (model,), axis: values})
    assert len(trials) == 4  # 2 activations x 2 optimizers, once each
    assert len({t.key for t in trials}) == 4


@pytest.mark.parametrize("model, axis, values", [
    ("dense", "depth", (1, 2, 3)),
    ("recurrent", "cell", tuple(CELLS)),
])
def test_a_used_axis_multiplies_trials(model, axis, values):
    trials = expand({"models": (model,), axis: values})
    assert len(trials) == 4 * len(values)
    assert {getattr(t, axis) for t in trials} == set(values)


def test_repeated_values_are_deduplicated_keeping_order():
    trials = expand({"models": ("dense", "dense"), "activations": ("tanh", "relu", "tanh"),
                     "optimizers": ("adam",)})
    assert [t.activation for t in trials] == ["tanh", "relu"]


@pytest.mark.parametrize("model", MODELS)
def test_units_none_means_the_reference_width(model):
    (auto, given) = expand({"models": (model,), "activations": ("relu",), "optimizers": ("adam",),
                            "units": (None, 7)})
    assert auto.units == MODELS[model].reference_units
    assert given.units == 7


@pytest.mark.parametrize("optimizer", registry.OPTIMIZERS)
def test_learning_rate_none_means_the_optimizers_default(optimizer):
    (auto, given) = expand({"models": ("dense",), "activations": ("relu",),
                            "optimizers": (optimizer,), "learning_rate": (None, 0.0123)})
    assert auto.learning_rate == registry.OPTIMIZERS[optimizer].default_lr
    assert given.learning_rate == 0.0123


BASE = TrialConfig(model="dense", units=4, activation="relu", optimizer="adam",
                   learning_rate=1e-3, depth=2)

# A different value for every field: the key must see each of them.
CHANGED = {"model": "conv", "units": 5, "activation": "tanh", "optimizer": "sgd",
           "learning_rate": 2e-3, "batch_size": 64, "epochs": 4, "seed": 1, "depth": 3,
           "cell": "gru", "pooling": "max", "dropout": 0.1, "l1": 1e-5, "l2": 1e-4,
           "impl": "flax"}


def test_changed_covers_every_field():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(TrialConfig)} == {a.name for a in AXES}


def test_key_is_stable():
    """Pinned: a changed key would orphan every run directory that is resumed or compared."""
    assert BASE.key == "e69a3108ceb2"


@pytest.mark.parametrize("field, value", CHANGED.items())
def test_key_changes_with_any_field(field, value):
    assert dataclasses.replace(BASE, **{field: value}).key != BASE.key


# Keys of each family's configs from before the pooling axis (bench at 30ce21e).
KEYS_BEFORE_POOLING = {
    "e2861a1762aa": {"model": "conv", "activation": "relu", "optimizer": "adam"},
    "b76903b6fa71": {"model": "conv", "units": 16, "activation": "tanh", "optimizer": "sgd",
                     "dropout": 0.2, "impl": "flax"},
    "439dec1304c9": {"model": "recurrent", "activation": "relu", "optimizer": "adam",
                     "cell": "gru"},
    "6c856168b62b": {"model": "dense", "activation": "relu", "optimizer": "adam"},
}


@pytest.mark.parametrize("key", KEYS_BEFORE_POOLING)
def test_pooling_axis_keeps_the_keys_of_earlier_configs(key):
    """pooling is keyed_at_default=False: avg (the CNN before the axis) and None (families
    without it) leave the key as it was; max and stride make other trials."""
    config = make_config(KEYS_BEFORE_POOLING[key])
    assert config.key == key
    if config.model != "conv":
        assert config.pooling is None
        return
    assert config.pooling == "avg"
    assert make_config({**config.to_dict(), "pooling": "avg"}).key == key
    others = {make_config({**config.to_dict(), "pooling": p}).key for p in ("max", "stride")}
    assert key not in others and len(others) == 2


def test_pooling_shows_in_the_label_only_when_not_the_default():
    base = {"model": "conv", "units": 32, "activation": "relu", "optimizer": "adam"}
    assert make_config(base).label() == "conv-32 relu adam lr=0.001"
    assert make_config({**base, "pooling": "max"}).label() == "conv-32 pool=max relu adam lr=0.001"
    assert "pool=stride" in make_config({**base, "pooling": "stride"}).label()
    assert make_config({**base, "model": "dense", "pooling": "max"}).pooling is None  # conv only
    with pytest.raises(SpecError, match="pooling: unknown value 'min'; valid: avg, max, stride"):
        make_config({**base, "pooling": "min"})


def test_an_axis_added_later_is_keyed_only_when_set_and_not_its_default():
    pooling, impl, depth = AXIS_BY_KEY["pooling"], AXIS_BY_KEY["impl"], AXIS_BY_KEY["depth"]
    assert not pooling.keyed("avg") and not pooling.keyed(None) and pooling.keyed("max")
    assert not impl.keyed("tuned") and impl.keyed("flax")
    assert depth.keyed(None) and depth.keyed(2)  # an axis of the first schema: always


def test_from_dict_round_trip_through_json():
    config = TrialConfig(**CHANGED)
    again = TrialConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == make_config(CHANGED)
    assert again.key == make_config(CHANGED).key


def test_from_dict_refuses_fields_it_does_not_know():
    """A config field this bench does not know would be silently dropped from the trial's key."""
    with pytest.raises(SpecError, match="added_later"):
        TrialConfig.from_dict({**BASE.to_dict(), "added_later": 1})


def test_label_names_the_trial():
    assert BASE.label() == "dense-4 relu adam lr=0.001"
    assert dataclasses.replace(BASE, depth=3, l2=1e-4).label() == "dense-4x3 relu adam lr=0.001 l2=0.0001"


def test_label_shows_batch_size_and_epochs_when_not_the_default():
    """Otherwise a sweep over batch sizes would show one label for different trials."""
    changed = dataclasses.replace(BASE, batch_size=256, epochs=5)
    assert changed.label() == "dense-4 relu adam lr=0.001 bs=256 epochs=5"


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
        expand({axis: (value,)})
    for text in expected:
        assert text in str(err.value)


@pytest.mark.parametrize("axis, value, expected", [
    ("dropout", 0.0, 0.0), ("dropout", 0.5, 0.5), ("seeds", 0, 0), ("l1", 0.0, 0.0),
    ("l2", 0, 0.0), ("units", None, None), ("learning_rate", None, None),
    ("learning_rate", 1, 1.0), ("units", 1, 1), ("units", 64.0, 64),
])
def test_boundary_values_are_accepted(axis, value, expected):
    normalised = AXIS_BY_KEY[axis].normalise(value)
    assert normalised == expected and type(normalised) is type(expected)


def test_an_empty_axis_is_an_error():
    with pytest.raises(SpecError, match="optimizers: give at least one value"):
        expand({"optimizers": ()})


def test_an_unknown_axis_lists_the_axes():
    with pytest.raises(SpecError) as err:
        axis("model")
    assert all(a.key in str(err.value) for a in AXES)


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)


# ---- normalisation: one trial, one key, however a value was written


@pytest.mark.parametrize("written", [1, 1.0])
def test_a_number_is_normalised_to_its_axis_type_before_hashing(written):
    config = make_config({"model": "dense", "activation": "relu", "optimizer": "sgd",
                          "learning_rate": written, "units": 64.0})
    assert config.learning_rate == 1.0 and isinstance(config.learning_rate, float)
    assert config.units == 64 and isinstance(config.units, int)
    assert config.key == make_config({"model": "dense", "activation": "relu", "optimizer": "sgd",
                                      "learning_rate": 1.0, "units": 64}).key


@pytest.mark.parametrize("a", [a for a in AXES if a.kind in (int, float)], ids=lambda a: a.name)
def test_every_numeric_axis_normalises_to_its_kind(a):
    small = 0 if a.low_inclusive else 1  # inside every numeric axis's bounds
    value = a.normalise(small if a.kind is float else float(small))
    assert type(value) is a.kind and value == small


def test_records_of_schema_version_1_keep_their_keys():
    """The `ci` baseline as committed until 2026-12-02, written by schema version 1 (kept in
    tests/golden); read now, each key is the same."""
    lines = (REPO / "tests/golden/ci-baseline-v1-results.jsonl").read_text().splitlines()
    stored = [json.loads(line) for line in lines]
    assert stored and all(Record.from_json(d).key == d["key"] for d in stored)


# ---- the axes table


@pytest.mark.parametrize("a", AXES, ids=lambda a: a.name)
def test_every_axis_is_complete(a):
    assert a.help and a.default and a.kind in (int, float, str)
    assert a.flag == "--" + a.key.replace("_", "-")
    assert (a.choices is not None) == (a.kind is str)
    for value in a.default:
        assert a.normalise(value) == value


@pytest.mark.parametrize("a", [a for a in AXES if a.families], ids=lambda a: a.name)
def test_family_axes_name_real_families(a):
    assert set(a.families) <= set(MODELS)


def test_cells_of_the_catalogue_are_the_models():
    from models.recurrent import CELLS as DEFINED
    assert tuple(DEFINED) == CELLS


def test_poolings_of_the_axis_are_the_models():
    from models.conv import POOLINGS
    assert tuple(AXIS_BY_KEY["pooling"].valid_names()) == POOLINGS
    assert model_options("conv") == ("pooling", "dropout")


# ---- records


def _record(**fields) -> Record:
    return Record(config=BASE, test_accuracy=0.9, epoch_s=[1.0, 2.0], rounds_s=[0.1, 0.2],
                  round_steps=10, history=[{"epoch": 1, "epoch_s": 1.0}, {"epoch": 2, "epoch_s": 2.0}],
                  **fields)


def test_a_record_round_trips_through_json():
    record = _record(memory={"peak_rss_bytes": 5})
    data = json.loads(json.dumps(record.to_json()))
    assert data["schema_version"] == SCHEMA_VERSION and data["key"] == BASE.key
    assert Record.from_json(data) == record


def test_a_record_from_a_newer_bench_is_refused_with_what_to_do():
    data = {**_record().to_json(), "schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(SchemaError, match="newer bench.*upgrade bench"):
        Record.from_json(data)


def test_a_version_1_record_is_migrated():
    """Version 1 had no version field and process-wide memory maxima."""
    data = _record().to_json()
    del data["schema_version"]
    data["memory"] = {"device_peak_bytes": 7, "process_peak_rss_bytes": 9}
    record = Record.from_json(data)
    assert record.memory == {"process_device_peak_bytes": 7, "process_peak_rss_bytes": 9}


def test_a_version_2_record_reads_without_machine_facts():
    """Version 2 had no `machine`; such a record reads as one from no known machine."""
    data = _record().to_json()
    del data["machine"]
    data["schema_version"] = 2
    record = Record.from_json(data)
    assert record.machine is None
    assert record == _record()


def test_a_version_3_record_carries_the_machine_that_produced_it():
    """Version 3's machine and population tables read into the typed facts of version 4."""
    machine = {"host": "alpha", "node": "ab" * 28, "platform": "cpu", "peak_flops": 1e11,
               "bench": "0.1.0"}
    population = {"group": "95d8a5a3", "size": 3, "index": 1, "compile_s": 1.5,
                  "epoch_s": [2.0, 1.0], "time_to_accuracy": {"0.9": None}}
    data = {**_record().to_json(), "machine": machine, "population": population,
            "schema_version": 3}
    record = Record.from_json(json.loads(json.dumps(data)))
    assert SCHEMA_VERSION == 4
    assert record.machine == MachineFacts(**machine) and record.machine.host == "alpha"
    assert record.population == PopulationFacts(**population) and record.population.together
    assert record.time_to("0.9") is None
    again = Record.from_json(record.to_json())  # written and read through the same classes
    assert again.population == record.population and again.machine == record.machine
    assert record.to_json()["population"] == population  # the same keys as version 3 wrote


@pytest.mark.parametrize("table", ["population", "machine"])
def test_an_unknown_fact_is_refused_by_name(table):
    data = {**_record().to_json(), table: {"group": "g", "size": 1, "cores_used": 2}
            if table == "population" else {"host": "a", "cores_used": 2}}
    with pytest.raises(SchemaError, match=f"unknown {table} field.*cores_used"):
        Record.from_json(data)


def test_a_record_of_a_newer_version_is_refused():
    with pytest.raises(SchemaError, match="schema version 5.*reads up to 4"):
        Record.from_json({**_record().to_json(), "schema_version": 5})


def test_unknown_record_fields_are_refused():
    with pytest.raises(SchemaError, match="colour"):
        Record.from_json({**_record().to_json(), "colour": "blue"})


def test_derived_figures_of_a_record():
    record = _record()
    assert record.train_s == 3.0 and record.epochs_run == 2
    assert record.step_times() == [0.01, 0.02]
    assert record.step_times(scale=2.0) == [0.02, 0.04]


# ---- the reading side imports no JAX


READING_SIDE = [
    "import bench.cli; bench.cli.build_parser().format_help()",
    "import bench.read.compare, bench.read.render.report, bench.read.listing, bench.contract.schema, bench.contract.sweepfile",
]


@pytest.mark.slow
@pytest.mark.parametrize("code", READING_SIDE)
def test_the_reading_side_imports_no_jax(code):
    probe = (f"{code}\nimport sys\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('jax', 'jaxlib', 'flax', 'optax') or m == 'models.fused_lstm'))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout
    assert out.strip() == "[]"
