"""Streaming data: ``datasets`` iterable datasets for training and evaluation, without loading them whole.

``streaming: true`` reads local CSV / JSON lines / Parquet files, the embedded ``adult`` data or a Hub
dataset (``load_dataset(..., streaming=True)``) as ``IterableDataset`` splits. What the in-memory path learns
from the whole training split, a stream must be told or must count first:

* the **group vocabulary**: declared (``group_values``), taken from a saved model's ``group_vocab.json``, or
  read by a counting pass over the training stream;
* the **label names** when labels are names (``class_names``), else read by the counting pass;
* the **(group, label) counts** that count-based reweighters (``kamiran_calders``, ``balanced_*``) fit on:
  declared shares (``group_shares``), the counts a counting pass recorded (``stream_counts``), or the pass.

A counting pass reads the training stream once more (a progress bar; the log says how long it took); the
counts it found are written to ``output_dir/stream_counts.json`` with the report, so a later run can pass
that file as ``stream_counts`` and skip the pass. Rows are checked as they stream: a missing value, a label
or group value the vocabulary lacks stops the run with an error naming the split, the row and the value.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fairtune.groups import (
    ERR_SINGLE_GROUP,
    VALUE_SEPARATOR,
    Grouping,
    GroupVocabulary,
    is_missing,
    parse_grouping,
)

if TYPE_CHECKING:
    from fairtune.config import DataArguments

logger = logging.getLogger(__name__)

STREAM_COUNTS_FILE = "stream_counts.json"
COUNT_BATCH_ROWS = 10_000  # rows per Arrow batch read by the counting pass
# Reweighters that fit on (group, label) counts; which of them can use shares given per group only.
COUNT_REWEIGHTERS = ("kamiran_calders", "balanced_group", "balanced_label", "balanced_group_label")
GROUP_ONLY_REWEIGHTERS = ("balanced_group",)

ERR_STREAM_MAX_STEPS = (
    "streaming: true reads the training data as a stream of unknown length, so the Trainer cannot tell "
    "where an epoch ends: set max_steps > 0 (got max_steps={max_steps})."
)
ERR_STREAM_OPTION = "{option} is not supported with streaming: true: {reason}"
ERR_STREAM_NEEDS_STREAMING = (
    "{option} is set, but streaming is off; it only describes streamed data (set streaming: true, or "
    "drop it)."
)
ERR_STREAM_SPLIT = (
    "The streamed dataset has no {split!r} split (its splits: {splits}); give {hint}. A stream cannot be "
    "carved into train and validation (validation_split_percentage) without reading it first."
)
ERR_STREAM_COLUMN = (
    "The {split} stream has no column {column!r} (named by {what}). Its columns are: {columns}."
)
ERR_STREAM_MISSING = (
    "Row {row} of the {split} stream has a missing or NaN value in column {column!r} (named by {what}); a "
    "group or a label cannot be missing: drop or fill such rows first."
)
ERR_STREAM_UNKNOWN_GROUP = (
    "Row {row} of the {split} stream has group {value!r} of grouping {grouping!r}, which the group "
    "vocabulary does not have (its groups: {known}). A streamed value never joins the vocabulary on the "
    "fly; add it to group_values (or drop such rows)."
)
ERR_STREAM_UNKNOWN_LABEL = (
    "Row {row} of the {split} stream has label {value!r}, which the label set does not have ({known}); add "
    "it to class_names (or drop such rows)."
)
ERR_STREAM_LABEL_KIND = (
    "Row {row} of the {split} stream has label {value!r}; labels are integer class ids (from 0) or class "
    "names (declare them in class_names)."
)
ERR_COUNTED_UNKNOWN_GROUP = (
    "The training stream holds group {value!r} of grouping {grouping!r} (counting pass), which the group "
    "vocabulary does not have (its groups: {known}); add it to group_values (or drop such rows)."
)
ERR_GROUP_VALUES_KEY = (
    "group_values names {key!r}, which is neither an attribute nor a grouping of group_by / eval_group_by "
    "({known})."
)
ERR_GROUP_VALUES_LIST = "group_values[{key!r}] must be a list of distinct values; got {value!r}."
ERR_LABEL_NAMES = "class_names must list at least two distinct class names; got {value!r}."
ERR_SHARES_GROUP = (
    "group_shares names group {group!r}, which grouping {grouping!r} does not have (its groups: {known})."
)
ERR_SHARES_LABEL = (
    "group_shares[{group!r}] names label {label!r}, which the label set does not have ({known})."
)
ERR_SHARES_VALUE = "group_shares[{where}] must be a number >= 0; got {value!r}."
ERR_SHARES_FLAT = (
    "group_shares gives one share per group, but reweighting {method!r} needs shares per (group, label) "
    "cell: give group_shares as {{group: {{label: share}}}}."
)
ERR_SHARES_UNUSED = (
    "group_shares / stream_counts are set, but no count-based reweighting ({methods}) runs: they would be "
    "ignored."
)
ERR_COUNTS_FILE = "stream_counts file {path!r} {problem}."
ERR_COUNTS_MISMATCH = (
    "stream_counts file {path!r} was counted for {what} {found!r}, but this run uses {expected!r}; count "
    "again (leave stream_counts out)."
)


def check_streaming_options(data_args: DataArguments, args: Any, reweighting: Sequence[str] = ()) -> None:
    """Refuse what a stream cannot do, naming the option, before any data is read.

    ``reweighting`` lists the names of the run's reweighting methods (``Mitigations``' reweighters).
    """
    declared = {
        "group_values": data_args.group_values,
        "class_names": data_args.class_names,
        "group_shares": data_args.group_shares,
        "stream_counts": data_args.stream_counts,
    }
    if not data_args.streaming:
        for option, value in declared.items():
            if value:
                raise ValueError(ERR_STREAM_NEEDS_STREAMING.format(option=option))
        return
    if args.max_steps is None or args.max_steps <= 0:
        raise ValueError(ERR_STREAM_MAX_STEPS.format(max_steps=args.max_steps))
    refused = [
        (
            data_args.oversample_by,
            f"oversample_by={data_args.oversample_by!r}",
            "oversampling duplicates rows by the group sizes of the whole training set; use a count-based "
            "reweighting (e.g. balanced_group) instead.",
        ),
        (
            data_args.counterfactual_augmentation,
            f"counterfactual_augmentation={data_args.counterfactual_augmentation!r}",
            "counterfactual copies are made over the training set in memory; turn streaming off for it.",
        ),
        (
            getattr(args, "reweighting_mode", None) == "sampler" and bool(reweighting),
            "reweighting_mode='sampler'",
            "a weighted sampler draws rows by index, which a stream does not have; use reweighting_mode: "
            "weights.",
        ),
        (
            getattr(args, "reweighting", None) == "jtt",
            "reweighting='jtt'",
            "Just Train Twice retrains on an upsampled copy of the training rows held in memory.",
        ),
        (
            getattr(args, "batch_sampling", "random") != "random",
            f"batch_sampling={getattr(args, 'batch_sampling', None)!r}",
            "group-stratified batches draw rows by index from each group, which a stream does not have.",
        ),
        (
            getattr(args, "missing_group", "error") != "error",
            f"missing_group={getattr(args, 'missing_group', None)!r}",
            "streamed rows are checked one by one against a vocabulary fixed before training; a stream "
            "refuses rows without a group (missing_group: error).",
        ),
        (
            getattr(args, "post_processing", None),
            f"post_processing={getattr(args, 'post_processing', None)!r}",
            "group thresholds are fitted on the validation scores held in memory; turn streaming off for it.",
        ),
    ]
    for flag, option, reason in refused:
        if flag:
            raise ValueError(ERR_STREAM_OPTION.format(option=option, reason=reason))
    if (data_args.group_shares or data_args.stream_counts) and not any(
        r in COUNT_REWEIGHTERS for r in reweighting
    ):
        raise ValueError(ERR_SHARES_UNUSED.format(methods=", ".join(COUNT_REWEIGHTERS)))


# ----- loading ----------------------------------------------------------------------------------------
def load_streaming_datasets(args: DataArguments, groupings: Sequence[str]) -> tuple[Any, dict[str, str]]:
    """The splits ``args`` names as an ``IterableDatasetDict`` (nothing read but a schema), and each
    split's source for messages.

    Label and attribute columns must exist in every split; ``max_*_samples`` keep the first rows
    (``take(n)``; the in-memory path draws a seeded random subset instead). The label column is renamed to
    ``label``; its values are checked and encoded later (``encode_stream_labels``).
    """
    import datasets

    from fairtune.data.loading import (
        DEFAULT_DATASET,
        EMBEDDED,
        ERR_EMPTY_FILE,
        ERR_FILE_MISSING,
        ERR_MIXED_FORMATS,
        _builder_for,
        _check_source,
        _is_blank,
    )

    files = _check_source(args)
    name = args.dataset_name or DEFAULT_DATASET
    if not files and os.path.isfile(name):
        files = {"train": name}
    if files:
        for path in files.values():
            if not os.path.exists(path):
                raise FileNotFoundError(ERR_FILE_MISSING.format(path=path))
        builders = {_builder_for(p) for p in files.values()}
        if len(builders) > 1:
            raise ValueError(ERR_MIXED_FORMATS.format(formats=sorted(builders), files=files))
        for path in files.values():
            if _is_blank(path, _builder_for(path)):
                raise ValueError(ERR_EMPTY_FILE.format(path=path))
        raw = datasets.load_dataset(builders.pop(), data_files=dict(files), streaming=True)
        sources = dict(files)
    elif name in EMBEDDED:
        from fairtune.data.adult import load_adult

        # In memory already; streamed anyway so the embedded data exercises the streaming path.
        raw = datasets.IterableDatasetDict({k: v.to_iterable_dataset() for k, v in load_adult().items()})
        sources = dict.fromkeys(raw, f"embedded {name}")
    else:
        # A Hub name (or a local folder): datasets streams it shard by shard, without a full download.
        raw = datasets.load_dataset(name, args.dataset_config_name, streaming=True)
        sources = dict.fromkeys(raw, name)
    if not isinstance(raw, datasets.IterableDatasetDict):
        raw = datasets.IterableDatasetDict({"train": raw})
    for split, hint in (("train", "train_file"), ("validation", "validation_file")):
        if split not in raw:
            raise ValueError(ERR_STREAM_SPLIT.format(split=split, splits=list(raw), hint=hint))

    attributes = list(dict.fromkeys(a for g in groupings for a in parse_grouping(g)))
    limits = {
        "train": args.max_train_samples,
        "validation": args.max_eval_samples,
        "test": args.max_test_samples,
    }
    for split in list(raw):
        stream = known_columns(raw[split])
        where = f"{split} ({sources[split]})"
        for column, what in [(args.label_column, "label_column")] + [
            (a, "group_by / eval_group_by") for a in attributes
        ]:
            if column not in stream.column_names:
                raise ValueError(
                    ERR_STREAM_COLUMN.format(
                        split=where, column=column, what=what, columns=stream.column_names
                    )
                )
        if args.label_column != "label":
            if "label" in stream.column_names:
                stream = stream.remove_columns("label")
            stream = stream.rename_column(args.label_column, "label")
        if limits.get(split) is not None:
            stream = stream.take(limits[split])
        raw[split] = stream
    return raw, sources


def known_columns(stream: Any) -> Any:
    """``stream`` with its features resolved (a ``map`` forgets them), so ``column_names`` is known.

    Resolving reads the first row, not the stream.
    """
    if stream.features is None:
        stream = stream._resolve_features()
    return stream


# ----- counting pass ----------------------------------------------------------------------------------
@dataclass
class StreamCounts:
    """What a counting pass over the training stream found.

    Attributes:
        rows: rows read.
        groups: grouping -> joined group value -> rows, e.g. ``{"sex": {"Female": 10771, ...}}``.
        labels: raw label value (as text) -> rows.
        cells: training-grouping value -> raw label (as text) -> rows.
        train_grouping: the grouping ``cells`` is counted for.
        label_kind: ``"int"`` (class ids) or ``"str"`` (class names).
        seconds: how long the pass took.
    """

    rows: int = 0
    groups: dict[str, dict[str, int]] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    cells: dict[str, dict[str, int]] = field(default_factory=dict)
    train_grouping: str = ""
    label_kind: str = "int"
    seconds: float = 0.0

    def save(self, output_dir: str) -> str:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, STREAM_COUNTS_FILE)
        with open(path, "w") as f:
            json.dump(self.__dict__, f, indent=2)
        return path

    @classmethod
    def load(cls, path: str) -> StreamCounts:
        if os.path.isdir(path):
            path = os.path.join(path, STREAM_COUNTS_FILE)
        if not os.path.isfile(path):
            raise ValueError(ERR_COUNTS_FILE.format(path=path, problem="does not exist"))
        try:
            with open(path) as f:
                return cls(**json.load(f))
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(
                ERR_COUNTS_FILE.format(path=path, problem=f"is not a stream_counts file ({err})")
            ) from None


def count_stream(train: Any, groupings: Sequence[str], split: str = "train") -> StreamCounts:
    """One pass over the training stream: rows per group of every grouping, per label, per (group, label).

    Reads only the label and attribute columns, in Arrow batches, with a progress bar. A missing value stops
    the pass with an error naming the row; so does a float label (classification needs ids or names).
    """
    from tqdm.auto import tqdm

    parsed = {g: parse_grouping(g) for g in groupings}
    attributes = list(dict.fromkeys(a for attrs in parsed.values() for a in attrs))
    counts = StreamCounts(train_grouping=groupings[0])
    group_counters: dict[str, Counter] = {g: Counter() for g in groupings}
    labels: Counter = Counter()
    cells: Counter = Counter()
    kinds: set[str] = set()
    start = time.perf_counter()
    columns = train.select_columns(["label", *attributes])
    with tqdm(desc="Counting pass over the training stream", unit=" rows") as bar:
        for batch in columns.iter(batch_size=COUNT_BATCH_ROWS):
            n = len(batch["label"])
            for column, what in [("label", "label_column")] + [
                (a, "group_by / eval_group_by") for a in attributes
            ]:
                bad = next((i for i, v in enumerate(batch[column]) if is_missing(v)), None)
                if bad is not None:
                    raise ValueError(
                        ERR_STREAM_MISSING.format(
                            row=counts.rows + bad, split=split, column=column, what=what
                        )
                    )
            for i, value in enumerate(batch["label"]):
                kind = _label_kind(value, counts.rows + i, split)
                kinds.add(kind)
            values = {
                g: [VALUE_SEPARATOR.join(str(batch[a][i]) for a in attrs) for i in range(n)]
                for g, attrs in parsed.items()
            }
            for g, vals in values.items():
                group_counters[g].update(vals)
            raw_labels = [str(v) for v in batch["label"]]
            labels.update(raw_labels)
            cells.update(zip(values[groupings[0]], raw_labels, strict=True))
            counts.rows += n
            bar.update(n)
    if len(kinds) > 1:
        raise ValueError(ERR_STREAM_LABEL_KIND.format(row="(several)", split=split, value=sorted(labels)[:5]))
    counts.label_kind = kinds.pop() if kinds else "int"
    counts.groups = {g: dict(sorted(c.items())) for g, c in group_counters.items()}
    counts.labels = dict(sorted(labels.items()))
    for (group, label), n in sorted(cells.items()):
        counts.cells.setdefault(group, {})[label] = n
    counts.seconds = time.perf_counter() - start
    logger.warning(
        "Counting pass over the training stream: %d rows in %.1f s (%.0f rows/s), one extra read of the "
        "training data; declare group_values and class_names (and group_shares), or pass the "
        "stream_counts.json this run writes as stream_counts, to skip it.",
        counts.rows,
        counts.seconds,
        counts.rows / max(counts.seconds, 1e-9),
    )
    return counts


def _label_kind(value: Any, row: int, split: str) -> str:
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError(ERR_STREAM_LABEL_KIND.format(row=row, split=split, value=value))
    if isinstance(value, int):
        if value < 0:
            raise ValueError(ERR_STREAM_LABEL_KIND.format(row=row, split=split, value=value))
        return "int"
    return "str"


# ----- vocabularies -----------------------------------------------------------------------------------
def declared_vocabulary(
    group_by: str | Sequence[str], eval_group_by: Sequence[str] | None, group_values: Mapping[str, Any] | None
) -> GroupVocabulary | None:
    """The group vocabulary ``group_values`` declares, or None when it leaves a grouping undetermined.

    ``group_values`` maps an attribute (``sex: [Female, Male]``) or a grouping (``"sex+race": ["Female|Black",
    ...]``) to its values. An intersection not named itself is every combination of its attributes' values.
    Values are sorted as the in-memory vocabulary sorts them, so ids mean the same either way.
    """
    vocab = GroupVocabulary(group_by, eval_group_by)
    group_values = dict(group_values or {})
    known = set(vocab.attributes) | set(vocab.groupings)
    for key, value in group_values.items():
        if key not in known:
            raise ValueError(ERR_GROUP_VALUES_KEY.format(key=key, known=sorted(known)))
        if not isinstance(value, list | tuple) or len({str(v) for v in value}) != len(value):
            raise ValueError(ERR_GROUP_VALUES_LIST.format(key=key, value=value))
    for name, grouping in vocab.groupings.items():
        if name in group_values:
            values = [str(v) for v in group_values[name]]
        elif all(a in group_values for a in grouping.attributes):
            product = itertools.product(*([str(v) for v in group_values[a]] for a in grouping.attributes))
            values = [VALUE_SEPARATOR.join(p) for p in product]
        else:
            return None
        _set_values(grouping, values)
    return vocab


def counted_vocabulary(
    group_by: str | Sequence[str], eval_group_by: Sequence[str] | None, counts: StreamCounts
) -> GroupVocabulary:
    """The vocabulary of the groups a counting pass met (what ``GroupVocabulary.fit`` gives in memory)."""
    vocab = GroupVocabulary(group_by, eval_group_by)
    for name, grouping in vocab.groupings.items():
        if name not in counts.groups:
            raise ValueError(
                ERR_COUNTS_MISMATCH.format(
                    path="(counts)", what="groupings", found=list(counts.groups), expected=name
                )
            )
        _set_values(grouping, list(counts.groups[name]))
    return vocab


def check_counted_groups(vocab: GroupVocabulary, counts: StreamCounts) -> None:
    """Refuse a declared vocabulary that lacks a group the counting pass met, before training starts."""
    for name, grouping in vocab.groupings.items():
        unknown = sorted(set(counts.groups.get(name, {})) - set(grouping.values))
        if unknown:
            raise ValueError(
                ERR_COUNTED_UNKNOWN_GROUP.format(value=unknown[0], grouping=name, known=grouping.values)
            )


def _set_values(grouping: Grouping, values: list[str]) -> None:
    grouping.values = sorted(values)
    grouping.num_train_groups = len(values)
    if len(values) < 2:
        raise ValueError(
            ERR_SINGLE_GROUP.format(
                grouping=grouping.name, count=len(values), split="training", values=values
            )
        )


def label_vocabulary(class_names: Sequence[Any] | None, counts: StreamCounts | None) -> list[str] | None:
    """Class names (index = class id) when labels are names; None when labels are ids.

    Declared ``class_names`` keep their order (so ids follow the declaration); counted names are sorted, as
    the in-memory path's ``ClassLabel`` sorts them.
    """
    if class_names:
        names = [str(v) for v in class_names]
        if len(set(names)) != len(names) or len(names) < 2:
            raise ValueError(ERR_LABEL_NAMES.format(value=list(class_names)))
        return names
    if counts is None or counts.label_kind == "int":
        return None
    return sorted(counts.labels)


def num_classes(class_names: list[str] | None, counts: StreamCounts | None) -> int:
    """C: the number of class names, or (ids) one more than the largest id counted, at least 2."""
    if class_names:
        return len(class_names)
    if counts is None or not counts.labels:
        return 2
    return max(2, max(int(v) for v in counts.labels) + 1)


# ----- lazy row checks and encodings ------------------------------------------------------------------
# Both encoders run as ``map``s over Arrow tables: a batch is checked and encoded with vectorised Arrow and
# NumPy operations (Python touches only its distinct values), which reads a file-backed stream several times
# faster than a map over Python rows. A batch that fails a fast check is run again through the row-by-row
# check, so the error names the first bad row exactly as it did before.
def _arrow_map(stream: Any, encode: Any, features: Any) -> Any:
    """``stream.map(encode)`` over Arrow tables (``encode(table, rows) -> table``), keeping the stream's
    own output format."""
    stream_format = stream._formatting.format_type if stream._formatting else None
    mapped = stream.with_format("arrow").map(encode, batched=True, with_indices=True, features=features)
    return mapped.with_format(stream_format)


def _has_missing(column: Any) -> bool:
    """Whether an Arrow column holds a null or (floating point) a NaN: ``is_missing`` for a column."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        return True
    return pa.types.is_floating(column.type) and bool(pc.any(pc.is_nan(column)).as_py())


def _distinct_codes(column: Any) -> tuple[list[str], Any]:
    """The distinct values of an Arrow column as ``str(python value)`` (as the row path joins them), and each
    row's index into them: ``(values, codes (n,) int64)``."""
    import numpy as np
    import pyarrow.compute as pc

    distinct = pc.unique(column)
    codes = pc.index_in(column, value_set=distinct).to_numpy(zero_copy_only=False)
    return [str(v) for v in distinct.to_pylist()], np.asarray(codes, dtype=np.int64)


def encode_stream_labels(
    stream: Any, class_names: list[str] | None, num_labels: int, split: str, column: str = "label"
) -> Any:
    """Lazily check each row's label (in ``column``) and turn a class name into its id (``class_names``
    order).

    Ids must lie in ``[0, num_labels)``; a name outside ``class_names``, a missing label or a float one
    raises naming the row.
    """
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc

    index = {n: i for i, n in enumerate(class_names)} if class_names else None
    known = class_names if class_names else list(range(num_labels))

    def check_rows(values: list[Any], rows: list[int]) -> list[int]:
        out = []
        for row, value in zip(rows, values, strict=True):
            if is_missing(value):
                raise ValueError(
                    ERR_STREAM_MISSING.format(row=row, split=split, column=column, what="label_column")
                )
            if index is not None and isinstance(value, str):
                if value not in index:
                    raise ValueError(
                        ERR_STREAM_UNKNOWN_LABEL.format(row=row, split=split, value=value, known=known)
                    )
                out.append(index[value])
                continue
            _label_kind(value, row, split)
            if isinstance(value, str) or value >= num_labels:
                raise ValueError(
                    ERR_STREAM_UNKNOWN_LABEL.format(row=row, split=split, value=value, known=known)
                )
            out.append(int(value))
        return out

    def fast(values: Any) -> Any:
        """The encoded (n,) int64 Arrow array, or None when some row needs the row-by-row check."""
        if values.null_count or not len(values):
            return None
        if pa.types.is_integer(values.type):
            low, high = pc.min_max(values).values()
            return values.cast(pa.int64()) if low.as_py() >= 0 and high.as_py() < num_labels else None
        if index is not None and (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            ids = pc.index_in(values, value_set=pa.array(class_names, values.type))
            return ids.cast(pa.int64()) if not ids.null_count else None
        return None

    def encode(table: Any, rows: list[int]) -> Any:
        values = table[column].combine_chunks()
        encoded = fast(values)
        if encoded is None:
            encoded = pa.array(check_rows(values.to_pylist(), rows), pa.int64())
        return table.set_column(table.column_names.index(column), column, encoded)

    stream = known_columns(stream)
    features = stream.features.copy()
    features[column] = datasets.ClassLabel(names=class_names) if class_names else datasets.Value("int64")
    return _arrow_map(stream, encode, features)


def encode_stream_groups(stream: Any, vocab: GroupVocabulary, split: str) -> Any:
    """Lazily add one ``group:<grouping>`` id column per grouping to ``stream``.

    A missing attribute value, or a value the (declared or counted) vocabulary lacks, raises naming the
    split, the row and the value: in a stream a new value cannot become a group (training statistics are
    sized by the vocabulary), nor an evaluation-only group (the evaluation statistics are sized before the
    first row arrives).
    """
    import datasets
    import numpy as np
    import pyarrow as pa

    from fairtune.groups import group_column

    index = {name: {v: i for i, v in enumerate(g.values)} for name, g in vocab.groupings.items()}

    def check_rows(batch: dict[str, list[Any]], rows: list[int]) -> None:
        """Raise for the first bad row of a batch, as a row-by-row read would."""
        for a in vocab.attributes:
            bad = next((i for i, v in enumerate(batch[a]) if is_missing(v)), None)
            if bad is not None:
                raise ValueError(
                    ERR_STREAM_MISSING.format(
                        row=rows[bad], split=split, column=a, what="group_by / eval_group_by"
                    )
                )
        for name, g in vocab.groupings.items():
            for i, row in enumerate(rows):
                value = VALUE_SEPARATOR.join(str(batch[a][i]) for a in g.attributes)
                if value not in index[name]:
                    raise ValueError(
                        ERR_STREAM_UNKNOWN_GROUP.format(
                            row=row, split=split, value=value, grouping=name, known=g.values
                        )
                    )

    def encode(table: Any, rows: list[int]) -> Any:
        columns = {a: table[a].combine_chunks() for a in vocab.attributes}
        if any(_has_missing(c) for c in columns.values()):
            check_rows(table.select(vocab.attributes).to_pydict(), rows)
        distinct = {a: _distinct_codes(c) for a, c in columns.items()}
        out = table
        for name, g in vocab.groupings.items():
            # One code per row for the combination of its attributes' values; Python joins only the
            # distinct combinations.
            key = np.zeros(table.num_rows, dtype=np.int64)
            for a in g.attributes:
                key = key * len(distinct[a][0]) + distinct[a][1]
            combos, inverse = np.unique(key, return_inverse=True)
            ids = []
            for combo in combos.tolist():
                parts = []
                for a in reversed(g.attributes):
                    combo, code = divmod(combo, len(distinct[a][0]))
                    parts.append(distinct[a][0][code])
                value = VALUE_SEPARATOR.join(reversed(parts))
                if value not in index[name]:
                    check_rows(table.select(vocab.attributes).to_pydict(), rows)
                ids.append(index[name][value])
            column = np.asarray(ids, dtype=np.int64)[inverse.reshape(-1)]
            col = group_column(name)
            if col in out.column_names:
                out = out.drop_columns([col])
            out = out.append_column(col, pa.array(column, pa.int64()))
        return out

    stream = known_columns(stream)
    features = stream.features.copy()
    for name in vocab.groupings:
        features[group_column(name)] = datasets.Value("int64")
    return _arrow_map(stream, encode, features)


# ----- counts for reweighters ---------------------------------------------------------------------------
def cell_counts(
    vocab: GroupVocabulary,
    class_names: list[str] | None,
    num_labels: int,
    counts: StreamCounts | None = None,
    group_shares: Mapping[str, Any] | None = None,
    methods: Iterable[str] = (),
) -> Any:
    """(G, C) float64 tensor of training (group, label) counts or shares, for ``Reweighter.fit_counts``.

    From declared ``group_shares`` (``{group: {label: share}}``, or ``{group: share}`` for reweighters that
    weigh groups only) when given, else from a counting pass's ``counts``. Shares need not sum to 1: the
    reweighters use proportions only.
    """
    import torch

    grouping = vocab.groupings[vocab.train_grouping]
    g_index = {v: i for i, v in enumerate(grouping.values)}
    # A label is named by its class id ("0") or, with label names, by its name.
    c_index = {str(i): i for i in range(num_labels)} | {n: i for i, n in enumerate(class_names or [])}
    table = torch.zeros(len(grouping.values), num_labels, dtype=torch.float64)
    if group_shares:
        for group, share in group_shares.items():
            if str(group) not in g_index:
                raise ValueError(
                    ERR_SHARES_GROUP.format(group=group, grouping=grouping.name, known=grouping.values)
                )
            if isinstance(share, Mapping):
                for label, value in share.items():
                    if str(label) not in c_index:
                        raise ValueError(
                            ERR_SHARES_LABEL.format(group=group, label=label, known=list(c_index))
                        )
                    table[g_index[str(group)], c_index[str(label)]] = _share(value, f"{group!r}][{label!r}")
                continue
            flat_needers = [m for m in methods if m in COUNT_REWEIGHTERS and m not in GROUP_ONLY_REWEIGHTERS]
            if flat_needers:
                raise ValueError(ERR_SHARES_FLAT.format(method=flat_needers[0]))
            # Spread evenly over the classes: a group-only reweighter reads the row sums alone.
            table[g_index[str(group)]] = _share(share, repr(group)) / num_labels
        return table
    if counts is None:
        raise ValueError("cell_counts needs counts from a counting pass or group_shares.")
    if counts.train_grouping != grouping.name:
        raise ValueError(
            ERR_COUNTS_MISMATCH.format(
                path="(counts)", what="training grouping", found=counts.train_grouping, expected=grouping.name
            )
        )
    for group, by_label in counts.cells.items():
        if group not in g_index:
            raise ValueError(
                ERR_SHARES_GROUP.format(group=group, grouping=grouping.name, known=grouping.values)
            )
        for label, n in by_label.items():
            if label not in c_index:
                raise ValueError(ERR_SHARES_LABEL.format(group=group, label=label, known=list(c_index)))
            table[g_index[group], c_index[label]] = float(n)
    return table


def _share(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(ERR_SHARES_VALUE.format(where=where, value=value))
    return float(value)
