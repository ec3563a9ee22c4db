"""`--impl flax` (models/stock.py): stock Flax forms of each family against bench's tuned ones.

Both forms have the same parameters (names mapped), shapes, initialisers and counts; for
dense one seed even gives the same values (the same layers draw the same keys; nnx.Conv
and nnx's cells draw keys in another order than the tuned forms). Given the same
parameters, both compute the same logits and the same gradients, with dropout too, for
every family, cell and a few activations. The LSTM's tuned form is checked with its CPU
kernel and with XLA's loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bench.contract import registry
from bench.run.groups import group_id, plan_units
from bench.contract.schema import make_config
from models import CELLS, IMPLS, MODELS
from rounding import assert_close
from test_models import model_terms

ACTIVATIONS = ("relu", "tanh", "gelu")
CASES = [("dense", {}), ("dense", {"depth": 3}), ("conv", {}), ("conv", {"pooling": "max"}),
         ("conv", {"pooling": "stride"}), *[("recurrent", {"cell": cell}) for cell in CELLS]]
UNITS = {"dense": 8, "conv": 3, "recurrent": 6}


def build(family: str, impl: str, activation: str, seed: int = 0, **options) -> nnx.Module:
    act = registry.activation(activation)
    return MODELS[family].build_impl(impl)(UNITS[family], act, 10, nnx.Rngs(seed), **options)


def tuned_to_stock_names(family: str, cell: str | None) -> dict[str, str]:
    """Where each tuned parameter lives in the stock form (path -> path)."""
    if family != "recurrent":
        return {}  # the same names: hidden.i.kernel, conv1.kernel, dense.bias, out.kernel ...
    bias_home = "rnn.cell.dense_h.bias" if cell == "lstm" else "rnn.cell.dense_i.bias"
    return {"input_proj.kernel": "rnn.cell.dense_i.kernel", "input_proj.bias": bias_home,
            "recurrent_kernel": "rnn.cell.dense_h.kernel"}


def flat(tree) -> dict[str, np.ndarray]:
    """{'a.b.kernel': array} of an nnx State of parameters (or of their gradients)."""
    return {path_name(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def as_stock(params: dict, family: str, cell: str | None) -> dict:
    names = tuned_to_stock_names(family, cell)
    return {names.get(k, k): v for k, v in params.items()}


def path_name(path) -> str:
    parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
    return ".".join(p for p in parts if p != "value")


def load_tuned(stock: nnx.Module, tuned: nnx.Module, family: str, cell: str | None) -> None:
    """Gives `stock` the tuned model's parameters."""
    values = as_stock(flat(nnx.state(tuned, nnx.Param)), family, cell)
    state = nnx.state(stock, nnx.Param)
    nnx.update(stock, jax.tree_util.tree_map_with_path(
        lambda path, leaf: jnp.asarray(values[path_name(path)]), state))


def images(seed: int = 1, batch: int = 4) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (batch, 28, 28))


def loss_and_grads(model: nnx.Module, x, key=None):
    graphdef, params = nnx.split(model, nnx.Param)
    labels = jnp.arange(x.shape[0]) % 10

    def loss(p):
        logits = nnx.merge(graphdef, p)(x, key)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(x.shape[0]), labels]), logits

    (value, logits), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return value, logits, flat(grads)


def test_every_family_has_a_stock_form_and_impls_are_listed():
    assert set(IMPLS) == {"tuned", "flax"}
    for family, entry in MODELS.items():
        assert entry.build_impl("flax").__module__ == "models.stock", family
        assert entry.build_impl("tuned") is entry.build


@pytest.mark.parametrize("family,options", CASES, ids=[f"{f}{o}" for f, o in CASES])
def test_both_forms_have_the_same_parameters(family, options):
    tuned = flat(nnx.state(build(family, "tuned", "relu", seed=3, **options), nnx.Param))
    stock = flat(nnx.state(build(family, "flax", "relu", seed=3, **options), nnx.Param))
    mapped = as_stock(tuned, family, options.get("cell"))
    assert sorted(mapped) == sorted(stock)
    assert {k: v.shape for k, v in mapped.items()} == {k: v.shape for k, v in stock.items()}
    same_draws = family == "dense"
    for name, value in mapped.items():
        if same_draws or name.endswith("bias"):
            np.testing.assert_array_equal(value, stock[name], err_msg=name)
        else:  # the same initialiser (LeCun normal, orthogonal), other draws
            assert abs(np.std(value) - np.std(stock[name])) < 0.5 * np.std(stock[name]), name
    if options.get("cell") == "lstm":  # Keras' forget bias of 1 in both
        assert stock["rnn.cell.dense_h.bias"][UNITS[family]:2 * UNITS[family]].tolist() == [1.0] * UNITS[family]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("family,options", CASES, ids=[f"{f}{o}" for f, o in CASES])
def test_both_forms_compute_the_same_logits_and_gradients(family, options, activation):
    x = images()
    tuned = build(family, "tuned", activation, **options)
    stock = build(family, "flax", activation, **options)
    load_tuned(stock, tuned, family, options.get("cell"))
    forms = [tuned]
    if options.get("cell") == "lstm":  # the tuned LSTM with XLA's loop, too
        xla = build(family, "tuned", activation, **options)
        xla.fused_kernel = False
        forms.append(xla)
    want_loss, want_logits, want_grads = loss_and_grads(stock, x)
    for form in forms:
        loss, logits, grads = loss_and_grads(form, x)
        terms = model_terms(tuned, len(x))
        assert_close((logits, loss), (want_logits, want_loss), terms=terms)
        grads = as_stock(grads, family, options.get("cell"))
        assert sorted(grads) == sorted(want_grads)
        for name, g in grads.items():
            assert_close(g, want_grads[name], terms=terms, err_msg=name)


@pytest.mark.parametrize("family,options", CASES, ids=[f"{f}{o}" for f, o in CASES])
def test_both_forms_drop_the_same_units_for_one_key(family, options):
    x, key = images(seed=2), jax.random.key(9)
    tuned = build(family, "tuned", "relu", dropout=0.5, **options)
    stock = build(family, "flax", "relu", dropout=0.5, **options)
    load_tuned(stock, tuned, family, options.get("cell"))
    assert_close(tuned(x, key), stock(x, key), terms=model_terms(tuned, len(x)))
    assert not np.allclose(stock(x, key), stock(x))  # the key does drop units


def test_the_impl_axis_keys_and_labels():
    base = {"model": "dense", "activation": "relu", "optimizer": "adam"}
    tuned, stock = make_config(base), make_config({**base, "impl": "flax"})
    assert tuned == make_config({**base, "impl": "tuned"})  # the default
    assert tuned.key == "6c856168b62b"  # unchanged by the axis's arrival (and in the baselines)
    assert stock.key != tuned.key
    assert "impl=flax" in stock.label() and "impl" not in tuned.label()
    assert group_id(tuned) == "95d8a5a3" != group_id(stock)


def test_stock_trials_share_a_population_only_at_one_dropout_rate():
    def trial(impl, dropout, seed):
        return make_config({"model": "dense", "activation": "relu", "optimizer": "adam",
                            "impl": impl, "dropout": dropout, "seed": seed})
    tuned = [trial("tuned", rate, s) for rate in (0.2, 0.4) for s in (0, 1)]
    stock = [trial("flax", rate, s) for rate in (0.2, 0.4) for s in (0, 1)]
    assert len({group_id(t) for t in tuned}) == 1  # a traced per-member rate
    assert len({group_id(t) for t in stock}) == 2  # nnx.Dropout's rate is fixed in the module
    units = plan_units(stock, "auto", 64)
    assert sorted(u.size for u in units) == [2, 2]
    assert all(len({m.dropout for m in u.members}) == 1 for u in units)


def test_the_report_puts_both_forms_of_a_configuration_side_by_side(tmp_path):
    from bench.read.render.report import render_run
    from bench.contract.schema import Record
    from test_compare import write_run
    records = []
    for impl, step in (("tuned", 0.002), ("flax", 0.005)):
        for seed in (0, 1):
            cfg = make_config({"model": "dense", "activation": "relu", "optimizer": "adam",
                               "impl": impl, "seed": seed})
            records.append(Record(config=cfg, test_accuracy=0.9, step_ms=1000 * step))
    alone = make_config({"model": "conv", "activation": "relu", "optimizer": "adam"})
    records.append(Record(config=alone, test_accuracy=0.9, step_ms=3.0))  # no flax twin
    [report] = render_run([write_run(tmp_path / "run", records)], ("md",), tmp_path / "out")
    text = report.read_text()  # a section past the answer is folded in a <details> block
    section = text.split("<summary><b>Implementations side by side</b></summary>")[1]
    section = section.split("</details>")[0]
    rows = [line for line in section.splitlines() if line.startswith("| dense")]
    assert len(rows) == 1 and "conv" not in section.split("\n\n")[1]
    assert "| 2 | 2.00 ± 0.00 | 5.00 ± 0.00 | 2.50× |" in rows[0]  # n, tuned, flax, ratio
