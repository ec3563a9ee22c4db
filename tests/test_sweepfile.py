"""Sweep files: grids, random search, explicit trials, overrides, errors, and the shipped presets."""

from __future__ import annotations

import math
import statistics
import textwrap

import pytest

from bench.contract import registry
from bench.contract.schema import SpecError
from bench.contract.sweepfile import (DISTRIBUTIONS, RUN_KEYS, TOP_KEYS, expand, expected_runtime,
                             load_sweep, preset_names, preset_path)
from models import MODELS


@pytest.fixture
def write(tmp_path):
    """write(text, name='sweep.toml') -> the path of a sweep file holding `text`."""
    def write_file(text: str, name: str = "sweep.toml"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path
    return write_file


def test_grid_with_scalar_and_list_values(write):
    sweep = load_sweep(write("""
        [grid]
        models = "dense"
        units = 8
        activations = ["relu", "tanh"]
        optimizers = "sgd"
        learning_rate = [0.1, 0.01]
        """, name="my-grid.toml"))
    assert sweep.name == "my-grid"  # no name key: the file's stem
    assert [(t.activation, t.learning_rate) for t in sweep.trials] == [
        ("relu", 0.1), ("relu", 0.01), ("tanh", 0.1), ("tanh", 0.01)]
    assert {(t.model, t.units, t.optimizer, t.epochs) for t in sweep.trials} == {("dense", 8, "sgd", 3)}
    assert sweep.references == {} and sweep.run == {}


def test_axes_left_out_take_the_default_sweep(write):
    sweep = load_sweep(write('name = "n"\ndescription = "d"\n[grid]\nepochs = 1\n'))
    assert (sweep.name, sweep.description) == ("n", "d")
    assert len(sweep.trials) == 12 and {t.epochs for t in sweep.trials} == {1}
    assert sweep.trials == tuple(expand({"epochs": (1,)}))


def test_several_grids_are_concatenated(write):
    sweep = load_sweep(write("""
        [[grid]]
        models = "dense"
        units = [8, 16]
        activations = "relu"
        optimizers = ["sgd", "adam"]

        [[grid]]
        models = "recurrent"
        units = 4
        cell = ["lstm", "gru"]
        activations = "tanh"
        optimizers = "adam"
        """))
    assert [(t.model, t.units, t.optimizer, t.cell) for t in sweep.trials] == [
        ("dense", 8, "sgd", None), ("dense", 8, "adam", None),  # AXES order: units, then optimizers
        ("dense", 16, "sgd", None), ("dense", 16, "adam", None),
        ("recurrent", 4, "adam", "lstm"), ("recurrent", 4, "adam", "gru")]


def test_a_trial_in_two_grids_runs_once(write):
    sweep = load_sweep(write("""
        [[grid]]
        models = "dense"
        activations = ["relu", "tanh"]
        optimizers = "sgd"
        [[grid]]
        models = "dense"
        activations = "relu"
        optimizers = "sgd"
        """))
    assert [t.activation for t in sweep.trials] == ["relu", "tanh"]


RANDOM = """
    [random]
    samples = 30
    seed = {seed}
    models = "dense"
    activations = ["relu", "tanh", "gelu"]
    optimizers = "adam"
    learning_rate = {{log_uniform = [1e-4, 1e-1]}}
    l2 = {{log_uniform = [1e-6, 1e-3]}}
    dropout = {{uniform = [0.0, 0.5]}}
    """


def test_random_search_draws_inside_the_ranges(write):
    sweep = load_sweep(write(RANDOM.format(seed=3)))
    trials = sweep.trials
    assert len(trials) == 30
    assert all(1e-4 <= t.learning_rate <= 1e-1 for t in trials)
    assert all(1e-6 <= t.l2 <= 1e-3 for t in trials)
    assert all(0.0 <= t.dropout <= 0.5 for t in trials)
    assert {t.activation for t in trials} == {"relu", "tanh", "gelu"}
    assert {t.model for t in trials} == {"dense"}
    # Log-uniform: the median sits near the geometric middle (1e-2.5), far below the
    # arithmetic middle (0.05) that a uniform draw would give.
    assert 10 ** -3.5 < statistics.median(t.learning_rate for t in trials) < 10 ** -1.5
    log_l2 = [math.log10(t.l2) for t in trials]
    assert min(log_l2) < -5 and max(log_l2) > -4  # spread over the decades


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_random_search_draws_integers_on_an_integer_axis(write, distribution):
    """`units = {uniform = [32, 256]}` gives widths a model can have, both bounds included."""
    sweep = load_sweep(write(f"""
        [random]
        samples = 200
        models = "dense"
        units = {{{distribution} = [32, 256]}}
        depth = {{uniform = [1, 3]}}
        """))
    units = [t.units for t in sweep.trials]
    assert all(type(u) is int and 32 <= u <= 256 for u in units)
    assert len(set(units)) > 50  # drawn over the range, not a few rounded values
    assert {t.depth for t in sweep.trials} == {1, 2, 3}


def test_a_distribution_on_a_named_axis_is_refused(write):
    with pytest.raises(SpecError, match="activations: uniform needs a numeric axis"):
        load_sweep(write('[random]\nsamples = 2\nactivations = {uniform = [0, 1]}\n'))


@pytest.mark.parametrize("written", ["[1]", "[1.0]", "1"])
def test_a_number_written_as_int_or_float_is_one_trial(write, written):
    """learning_rate = [1] and [1.0] (and --learning-rate 1) give the same trial key."""
    sweep = load_sweep(write(f'[grid]\nmodels = "dense"\nlearning_rate = {written}\n'))
    reference = load_sweep(write('[grid]\nmodels = "dense"\nlearning_rate = 1.0\n', "ref.toml"))
    assert [t.key for t in sweep.trials] == [t.key for t in reference.trials]


def test_a_sweep_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\u00e9"\n[grid]\nmodels = "dense"\n'.encode("latin-1"))
    with pytest.raises(SpecError, match="latin1.toml: not a UTF-8 text file"):
        load_sweep(path)


def test_random_search_is_reproducible_from_its_seed(write):
    first = load_sweep(write(RANDOM.format(seed=7), name="a.toml")).trials
    again = load_sweep(write(RANDOM.format(seed=7), name="b.toml")).trials
    other = load_sweep(write(RANDOM.format(seed=8), name="c.toml")).trials
    assert first == again
    assert [t.key for t in first] == [t.key for t in again]
    assert [t.learning_rate for t in first] != [t.learning_rate for t in other]


def test_random_search_runs_every_seed_of_each_draw(write):
    sweep = load_sweep(write("""
        [random]
        samples = 4
        seeds = [0, 1]
        models = "dense"
        learning_rate = {uniform = [0.01, 0.02]}
        """))
    assert len(sweep.trials) == 8
    for first, second in zip(sweep.trials[::2], sweep.trials[1::2]):
        assert (first.seed, second.seed) == (0, 1)
        assert first.learning_rate == second.learning_rate


def test_explicit_trials_carry_their_references(write):
    sweep = load_sweep(write("""
        [[trial]]
        models = "conv"
        units = 8
        activations = "relu"
        optimizers = "momentum"
        learning_rate = 0.1
        reference = {name = "paper CNN", published_test_accuracy = 0.99, source = "the paper"}

        [[trial]]
        models = "dense"
        units = 4
        activations = "tanh"
        optimizers = "sgd"
        """))
    conv, dense = sweep.trials
    assert (conv.model, conv.units, conv.optimizer, conv.learning_rate) == ("conv", 8, "momentum", 0.1)
    assert sweep.references == {conv.key: {"name": "paper CNN", "published_test_accuracy": 0.99,
                                             "source": "the paper"}}
    assert dense.key not in sweep.references


def test_run_table_is_returned_as_is(write):
    sweep = load_sweep(write("""
        [grid]
        models = "dense"
        [run]
        data = "embedded"
        device = "cpu"
        repeats = 3
        round_steps = 4
        targets = [0.5, 0.9]
        """))
    assert sweep.run == {"data": "embedded", "device": "cpu", "repeats": 3, "round_steps": 4,
                         "targets": [0.5, 0.9]}


MIXED = """
    [grid]
    models = ["dense", "conv"]
    activations = "relu"
    optimizers = "sgd"
    epochs = 5

    [random]
    samples = 3
    models = "dense"
    learning_rate = {log_uniform = [1e-3, 1e-1]}

    [[trial]]
    models = "recurrent"
    activations = "tanh"
    optimizers = "adam"
    epochs = 20
    reference = {name = "r", published_test_accuracy = 0.98, source = "s"}
    """


@pytest.mark.parametrize("overrides, check", [
    ({"epochs": (1,)}, lambda t: t.epochs == 1),
    ({"units": (6,)}, lambda t: t.units == 6),
    ({"optimizers": ("nadam",)}, lambda t: t.optimizer == "nadam"),
    ({"learning_rate": (0.5,)}, lambda t: t.learning_rate == 0.5),
])
def test_overrides_replace_the_axis_everywhere(write, overrides, check):
    sweep = load_sweep(write(MIXED), overrides)
    assert {t.model for t in sweep.trials} == {"dense", "conv", "recurrent"}
    assert all(check(t) for t in sweep.trials)
    # The reference follows its trial to the trial's new key.
    (recurrent,) = [t for t in sweep.trials if t.model == "recurrent"]
    assert set(sweep.references) == {recurrent.key}


def test_a_models_override_narrows_every_table(write):
    sweep = load_sweep(write(MIXED), {"models": ("dense",)})
    assert {t.model for t in sweep.trials} == {"dense"}
    assert sweep.references  # the [[trial]] became a dense trial, still with its reference


@pytest.mark.parametrize("text, expected", [
    ('grids = 1\n[grid]\nmodels = "dense"\n',
     ["top level", "unknown key 'grids'", *TOP_KEYS]),
    ('[grid]\nmodel = "dense"\n', ["[grid]", "unknown key 'model'", "models", "activations"]),
    ('[[grid]]\nmodels = "dense"\n[[grid]]\nactivation = "relu"\n',
     ["[grid] #2", "unknown key 'activation'", "activations"]),
    ('[grid]\nactivations = ["relu", "swish"]\n',
     ["[grid]", "activations", "'swish'", *registry.ACTIVATIONS]),
    ('[grid]\nmodels = "mlp"\n', ["models", "'mlp'", *MODELS]),
    ('[grid]\nunits = 0\n', ["[grid]", "units"]),
    ('[grid]\ndropout = 1.0\n', ["[grid]", "dropout"]),
    ('[grid]\nmodels = []\n', ["[grid]", "models", "at least one"]),
    ('[random]\nsamples = 3\nlearning_rate = {normal = [0, 1]}\n',
     ["[random]", "learning_rate", *DISTRIBUTIONS]),
    ('[random]\nsamples = 3\nlearning_rate = {log_uniform = [0, 1]}\n',
     ["[random]", "learning_rate", "> 0"]),
    ('[random]\nsamples = 3\nl2 = {log_uniform = [0, 1e-3]}\n',
     ["[random]", "l2", "log_uniform", "0 < low"]),
    ('[random]\nsamples = 3\nl2 = {uniform = [0.1]}\n', ["[random]", "l2", "[low, high]"]),
    ('[random]\nmodels = "dense"\n', ["[random]", "samples"]),
    ('[random]\nsamples = 0\n', ["[random]", "samples"]),
    ('[random]\nsamples = 2\nsample = 3\n', ["[random]", "unknown key 'sample'"]),
    ('[[trial]]\nmodels = "dense"\nreference = {name = "x", published_test_accuracy = 98.4}\n',
     ["[[trial]] #1", "published_test_accuracy"]),
    ('[[trial]]\nmodels = "dense"\nreference = {name = "x", url = "u"}\n',
     ["[[trial]] #1", "unknown key 'url'", "source"]),
    ('[grid]\nmodels = "dense"\n[run]\nrepeat = 3\n', ["[run]", "unknown key 'repeat'", *RUN_KEYS]),
    ('name = "empty"\n', ["no trials"]),
    ('[grid\nmodels = "dense"\n', ["cannot read"]),
    ('[grid]\nmodels = "dense"\nmodels = "conv"\n', ["cannot read"]),
])
def test_errors_name_the_file_the_key_and_the_valid_values(write, text, expected):
    path = write(text, name="broken.toml")
    with pytest.raises(SpecError) as err:
        load_sweep(path)
    message = str(err.value)
    assert str(path) in message
    for text in expected:
        assert text in message, f"{text!r} not in {message!r}"


def test_a_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read"):
        load_sweep(tmp_path / "absent.toml")


def test_an_unknown_preset_lists_the_presets():
    with pytest.raises(SpecError) as err:
        preset_path("nope")
    assert "'nope'" in str(err.value)
    assert all(name in str(err.value) for name in preset_names())


def test_the_three_presets_ship():
    assert {"quick", "standard", "reference"} <= set(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_says_how_to_run_it(name):
    path = preset_path(name)
    sweep = load_sweep(path)
    assert sweep.trials and sweep.name == name and sweep.description
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("#") and f"python -m bench run --preset {name}" in first_line
    assert expected_runtime(path)  # a '# expected runtime:' line near the top
    assert any(line.startswith("# expected runtime:") for line in path.read_text().splitlines()[:10])


def test_quick_preset_is_the_default_sweep():
    assert load_sweep(preset_path("quick")).trials == tuple(expand({}))


def test_standard_preset_covers_the_grid():
    trials = load_sweep(preset_path("standard")).trials
    assert {t.model for t in trials} == set(MODELS)
    assert len({t.activation for t in trials}) >= 6
    assert len({t.optimizer for t in trials}) >= 5
    for model in MODELS:
        assert len({t.units for t in trials if t.model == model}) >= 3
    assert len(trials) >= 6 * 5 * 3 * 3


@pytest.mark.parametrize("name_part, model, accuracy", [
    ("Flax", "conv", 0.9917),
    ("Keras mnist_mlp", "dense", 0.9840),
    ("LSTM", "recurrent", None),
])
def test_reference_preset_has_the_published_configurations(name_part, model, accuracy):
    sweep = load_sweep(preset_path("reference"))
    by_key = {t.key: t for t in sweep.trials}
    assert set(sweep.references) <= set(by_key)
    matches = [(by_key[k], ref) for k, ref in sweep.references.items() if name_part in ref["name"]]
    assert len(matches) == 1
    trial, ref = matches[0]
    assert trial.model == model
    if accuracy is not None:
        assert ref["published_test_accuracy"] == accuracy
    assert 0.9 < ref["published_test_accuracy"] <= 1
    assert ref["source"].strip()
    if model == "recurrent":
        assert trial.cell == "lstm"


@pytest.mark.parametrize("table", [
    '[random]\nsamples = 2\nmodels = "dense"\nunits = 4\n',
    '[[trial]]\nmodels = "dense"\nunits = 4\n',
])
@pytest.mark.parametrize("overrides, expected", [
    ({"models": ("foo",)}, ["models", "'foo'", *MODELS]),
    ({"learning_rate": (-1.0,)}, ["learning_rate", "out of range"]),
])
def test_command_line_overrides_are_checked_for_every_kind_of_table(write, table, overrides,
                                                                  expected):
    with pytest.raises(SpecError) as err:
        load_sweep(write(table), overrides)
    for text in ["command line", *expected]:
        assert text in str(err.value)
