"""Datasets from the Hub, from local files (CSV, JSON lines, Parquet), or embedded (``adult``).

All paths end in one ``datasets.DatasetDict`` with ``train`` / ``validation`` / ``test`` splits, label ids in
a ``label`` column and the attribute columns untouched, so the trainer sees one shape whatever the source.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fairtune.config import DataArguments

EMBEDDED = {"adult"}
FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}

ERR_FILE_TYPE = "Data file {path!r} has an unsupported extension; supported: {choices}."
ERR_FILE_MISSING = "Data file {path!r} does not exist."
ERR_NO_SOURCE = "Name a dataset: dataset_name (embedded 'adult', a Hub name or a local path) or train_file."
ERR_NO_SPLIT = "The dataset has no {split!r} split (its splits: {splits}); give {hint}."
ERR_EMPTY = "The {split} split is empty after loading and subsetting; training and evaluation need rows."
ERR_LABEL_VALUES = (
    "Label column {column!r} holds {count} distinct value(s) ({values}); classification needs at least two."
)


def _builder_for(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FILE_BUILDERS:
        raise ValueError(ERR_FILE_TYPE.format(path=path, choices=sorted(FILE_BUILDERS)))
    return FILE_BUILDERS[ext]


def load_local_files(files: dict[str, str]) -> Any:
    """``{"train": "a.csv", "test": "b.csv"}`` -> DatasetDict; all files must share one format."""
    import datasets

    for path in files.values():
        if not os.path.exists(path):
            raise FileNotFoundError(ERR_FILE_MISSING.format(path=path))
    builders = {_builder_for(p) for p in files.values()}
    if len(builders) > 1:
        raise ValueError(f"Local data files must share one format; got {sorted(builders)} for {files}.")
    return datasets.load_dataset(builders.pop(), data_files=files)


def load_raw_datasets(args: DataArguments, seed: int = 0) -> Any:
    """Load, split and subset the data that ``args`` names. ``seed`` fixes carved splits and subsets."""
    import datasets

    files = {
        split: path
        for split, path in (
            ("train", args.train_file),
            ("validation", args.validation_file),
            ("test", args.test_file),
        )
        if path
    }
    name = args.dataset_name
    if files:
        raw = load_local_files(files)
    elif name in EMBEDDED:
        from fairtune.data.adult import load_adult

        raw = load_adult()
    elif name and os.path.isfile(name):
        raw = load_local_files({"train": name})
    elif name:
        # A local directory or a Hub name: datasets resolves both (and uses its cache offline).
        raw = datasets.load_dataset(name, args.dataset_config_name)
    else:
        raise ValueError(ERR_NO_SOURCE)
    if not isinstance(raw, datasets.DatasetDict):
        raw = datasets.DatasetDict({"train": raw})

    if "train" not in raw:
        raise ValueError(ERR_NO_SPLIT.format(split="train", splits=list(raw), hint="train_file"))
    if "validation" not in raw:
        # Carve a fixed share of train so evaluation never sees training rows.
        parts = raw["train"].train_test_split(test_size=args.validation_split_percentage / 100, seed=seed)
        raw["train"], raw["validation"] = parts["train"], parts["test"]

    limits = {
        "train": args.max_train_samples,
        "validation": args.max_eval_samples,
        "test": args.max_test_samples,
    }
    for split, limit in limits.items():
        if split in raw and limit is not None and limit < len(raw[split]):
            raw[split] = raw[split].shuffle(seed=seed).select(range(limit))
    for split in raw:
        if len(raw[split]) == 0:
            raise ValueError(ERR_EMPTY.format(split=split))
    return encode_labels(raw, args.label_column)


def augment_training_data(train: Any, args: DataArguments) -> Any:
    """Counterfactual augmentation and oversampling of the training split, as the data arguments ask.

    Only training data changes: evaluation must measure the model on data as it comes.
    """
    from fairtune.data.counterfactual import WordPairs, augment_counterfactual
    from fairtune.data.oversampling import oversample

    if args.counterfactual_augmentation:
        pairs = None
        for name in args.counterfactual_word_lists:
            words = WordPairs.from_file(name) if os.path.isfile(name) else WordPairs.builtin(name)
            pairs = words if pairs is None else pairs + words
        swap = {}
        for item in args.counterfactual_swap_values:
            old, sep, new = item.partition(":")
            if not sep or not old or not new:
                raise ValueError(f"counterfactual_swap_values entries look like old:new; got {item!r}.")
            swap[old] = new
        train = augment_counterfactual(
            train,
            args.text_column,
            pairs,
            attribute=args.counterfactual_attribute,
            swap_values=swap or None,
            mode=args.counterfactual_augmentation,
            share=args.counterfactual_share,
            text_pair_column=args.text_pair_column,
        )
    if args.oversample_by:
        train = oversample(
            train,
            args.oversample_by,
            target_share=args.oversample_target_share,
            by_label=args.oversample_by_label,
        )
    return train


def encode_labels(raw: Any, column: str) -> Any:
    """Rename the label column to ``label``; string labels become sorted ids (a ClassLabel)."""
    import datasets

    from fairtune.groups import check_columns

    for split in raw:
        check_columns(raw[split], [column], split=split, what="label_column")
    if column != "label":
        if "label" in raw["train"].column_names:
            raw = raw.remove_columns("label")
        raw = raw.rename_column(column, "label")
    feature = raw["train"].features["label"]
    if isinstance(feature, datasets.ClassLabel):
        return raw
    values = sorted(set().union(*(set(raw[s].unique("label")) for s in raw)))
    if len(values) < 2:
        raise ValueError(ERR_LABEL_VALUES.format(column=column, count=len(values), values=values))
    if all(isinstance(v, int) for v in values):
        return raw  # already ids; the trainer checks their range against the model's num_labels
    names = [str(v) for v in values]
    if any(isinstance(v, float) for v in values):
        raise ValueError(
            f"Label column {column!r} holds floats ({names[:5]}...); FairTrainer trains classifiers: "
            "use integer class ids or class names."
        )
    return raw.cast_column("label", datasets.ClassLabel(names=names))


def tokenize(
    raw: Any, tokenizer: Any, text_column: str, text_pair_column: str | None, max_length: int
) -> Any:
    """Tokenize every split without padding (the collator pads each batch to its longest row)."""
    from fairtune.groups import check_columns

    needed = [text_column] + ([text_pair_column] if text_pair_column else [])
    for split in raw:
        check_columns(raw[split], needed, split=split, what="text_column")

    def encode(batch: dict[str, list[Any]]) -> Any:
        pair = batch[text_pair_column] if text_pair_column else None
        return tokenizer(batch[text_column], pair, truncation=True, max_length=max_length)

    return raw.map(encode, batched=True, desc="Tokenizing")
