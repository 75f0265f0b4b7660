"""Attribute columns -> integer group ids, with a vocabulary fixed from the training data.

A *grouping* is one attribute (``"sex"``) or an intersection of several (``"sex+race"``). Its vocabulary
lists the values seen in the training data in sorted order, so id ``i`` always means the same group: the
vocabulary is saved next to the model (``group_vocab.json``) and reloaded for later evaluation. A value met
only at evaluation gets an id after the training ones and is reported under its own name; mitigation
methods never see it because they run on training batches only.

A missing (None / NaN) attribute value follows the run's ``missing_group`` policy (`MISSING_GROUP_POLICIES`):

* ``error`` (default): refused, naming the column, the count and the rows (`ERR_MISSING_VALUES`).
* ``unknown``: the row belongs to the group `UNKNOWN_GROUP` (``"unknown"``), a normal group everywhere
  (vocabulary, training statistics, metrics). In an intersection, a row with *any* missing part is in the one
  group ``"unknown"``, not in ``"Female|unknown"``: the row's intersection is unknown, and partial cells would
  split the unknown rows into many tiny groups that no gap could use. A value already spelled ``"unknown"``
  joins the same group.
* ``ignore``: the row gets id `NO_GROUP` (-1). It trains on the task loss with weight 1 but is left out of
  every group statistic (penalties, reweighter weights, GroupDRO, adversary, group metrics and gaps), which
  count it as a row without a group.

The policy is a property of the run's data handling, not of the model: ``group_vocab.json`` holds only the
vocabulary (with ``"unknown"`` in it when the training data had such rows), and a saved model evaluated
later applies the evaluation run's ``missing_group``; ``"unknown"`` then maps to its training id, or is
appended as an evaluation-only group when training had none.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

GROUP_COLUMN_PREFIX = "group:"
# Counterfactual pairs: a row and its swapped copy share an id (fairtune.data.counterfactual writes them).
PAIR_COLUMN = "pair_id"
INTERSECTION_SEPARATOR = "+"
VALUE_SEPARATOR = "|"
VOCAB_FILE = "group_vocab.json"
MAX_ROWS_SHOWN = 5  # rows an error message lists
MISSING_GROUP_POLICIES = ("error", "unknown", "ignore")
UNKNOWN_GROUP = "unknown"  # the group of rows with a missing attribute under missing_group: unknown
NO_GROUP = -1  # the id of rows with a missing attribute under missing_group: ignore

ERR_EMPTY_SPEC = "A grouping must name at least one attribute column; got {spec!r}."
ERR_MISSING_COLUMN = (
    "The {split} data has no column {column!r} (named by {what}). Its columns are: {columns}."
)
ERR_MISSING_VALUES = (
    "Column {column!r} (named by {what}) of the {split} data has {count} missing or NaN value(s), at row(s) "
    "{rows} (numbered from 0, not counting a header); drop or fill them first: a group or a label cannot be "
    "missing."
)
# The group-column variant says how to keep such rows.
ERR_MISSING_GROUP_VALUES = (
    ERR_MISSING_VALUES + " To keep such rows, set missing_group: unknown (a group of their own) or "
    "missing_group: ignore (trained on the task loss, left out of group statistics)."
)
ERR_MISSING_GROUP_POLICY = "missing_group must be one of {choices}; got {value!r}."
ERR_MISSING_VALUE = (
    "Attribute {column!r} of grouping {grouping!r} is missing or NaN in a row; a group cannot be missing "
    "with missing_group: error (choose unknown or ignore to keep such rows)."
)
ERR_SINGLE_GROUP = (
    "Grouping {grouping!r} has only {count} group(s) in the {split} data ({values}); fairness metrics and "
    "mitigation need at least two. Choose another attribute or check the data."
)
ERR_NOT_FITTED = "Grouping {grouping!r} has no vocabulary yet: fit it on the training data first."


def group_column(grouping: str) -> str:
    """Name of the dataset column / batch key that carries a grouping's ids, e.g. ``"group:sex+race"``."""
    return f"{GROUP_COLUMN_PREFIX}{grouping}"


def groupings_of(group_by: str | Sequence[str], eval_group_by: Sequence[str] | None = None) -> list[str]:
    """The canonical list of a run's groupings: the training one first, then the evaluation ones.

    Names are normalised (``"sex + race"`` -> ``"sex+race"``) and duplicates dropped, so every module that
    lists groupings (vocabulary, reports, audits) lists the same ones in the same order.
    """
    names = [INTERSECTION_SEPARATOR.join(parse_grouping(g)) for g in [group_by, *(eval_group_by or [])]]
    return list(dict.fromkeys(names))


def parse_grouping(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"sex+race"`` or ``["sex", "race"]`` -> ``("sex", "race")``."""
    parts = spec.split(INTERSECTION_SEPARATOR) if isinstance(spec, str) else list(spec)
    attributes = tuple(p.strip() for p in parts if p and p.strip())
    if not attributes:
        raise ValueError(ERR_EMPTY_SPEC.format(spec=spec))
    return attributes


def is_missing(value: Any) -> bool:
    """``None`` and float NaN count as missing; an empty string does not (it may be a real category)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


@dataclass
class Grouping:
    """One grouping: its attribute columns and the vocabulary of their (joined) values.

    ``values[:num_train_groups]`` come from the training data; later entries were first seen at evaluation.
    """

    attributes: tuple[str, ...]
    values: list[str] = field(default_factory=list)
    num_train_groups: int = 0

    @property
    def name(self) -> str:
        return INTERSECTION_SEPARATOR.join(self.attributes)

    def value_of(self, row: dict[str, Any], missing_group: str = "error") -> str | None:
        """Joined attribute values of one row, e.g. ``"Female|Black"``. A missing value is an error under
        ``missing_group="error"`` (never a group named ``'None'`` or ``'nan'``), makes the whole row
        `UNKNOWN_GROUP` under ``"unknown"``, and gives None (no group) under ``"ignore"``."""
        for a in self.attributes:
            if is_missing(row[a]):
                if missing_group == "unknown":
                    return UNKNOWN_GROUP
                if missing_group == "ignore":
                    return None
                raise ValueError(ERR_MISSING_VALUE.format(column=a, grouping=self.name))
        return VALUE_SEPARATOR.join(str(row[a]) for a in self.attributes)

    def fit(self, rows: Iterable[dict[str, Any]], missing_group: str = "error") -> Grouping:
        values = (self.value_of(r, missing_group) for r in rows)
        self.values = sorted({v for v in values if v is not None})
        self.num_train_groups = len(self.values)
        return self

    def encode(self, values: Iterable[str | None], *, split: str = "evaluation") -> list[int]:
        """Map joined values to ids (None -> `NO_GROUP`); an unseen value is appended to the vocabulary and
        warned about."""
        if not self.num_train_groups:
            raise ValueError(ERR_NOT_FITTED.format(grouping=self.name))
        index = {v: i for i, v in enumerate(self.values)}
        ids = []
        for v in values:
            if v is None:
                ids.append(NO_GROUP)
                continue
            if v not in index:
                logger.warning(
                    "Group %r of grouping %r appears in the %s data but not in the training data; it is "
                    "reported under its own name.",
                    v,
                    self.name,
                    split,
                )
                index[v] = len(self.values)
                self.values.append(v)
            ids.append(index[v])
        return ids

    def to_dict(self) -> dict[str, Any]:
        # Only training groups are saved: evaluation-only groups are per-run, not part of the model.
        return {"attributes": list(self.attributes), "values": self.values[: self.num_train_groups]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grouping:
        return cls(tuple(d["attributes"]), list(d["values"]), len(d["values"]))


class GroupVocabulary:
    """All groupings of a run: the one mitigation trains on and the ones evaluation reports.

    Args:
        train_grouping: attribute(s) the training objective groups by, e.g. ``"sex"``.
        eval_groupings: groupings reported at evaluation, e.g. ``["sex", "race", "sex+race"]``;
            the training grouping is always included.
        missing_group: what a missing attribute value means (see the module docstring): ``error``,
            ``unknown`` or ``ignore``. Not saved with the vocabulary: set it per run (the trainer sets it
            from ``FairTrainingArguments.missing_group``).
    """

    def __init__(
        self,
        train_grouping: str | Sequence[str],
        eval_groupings: Sequence[str] | None = None,
        missing_group: str = "error",
    ):
        names = groupings_of(train_grouping, eval_groupings)
        self.train_grouping = names[0]
        self.groupings: dict[str, Grouping] = {name: Grouping(parse_grouping(name)) for name in names}
        self.missing_group = check_missing_group(missing_group)

    @property
    def attributes(self) -> list[str]:
        """Every attribute column any grouping needs, in first-use order."""
        return list(dict.fromkeys(a for g in self.groupings.values() for a in g.attributes))

    @property
    def fitted(self) -> bool:
        return all(g.num_train_groups for g in self.groupings.values())

    def names(self, grouping: str) -> list[str]:
        return list(self.groupings[grouping].values)

    def _attribute_rows(self, dataset: Any, split: str) -> list[dict[str, Any]]:
        """Check the attribute columns (their values too under ``missing_group="error"``), then return them
        as one dict per row."""
        check_group_columns(dataset, self.attributes, split=split, missing_group=self.missing_group)
        columns = {a: list(dataset[a]) for a in self.attributes}
        return [dict(zip(columns, vals, strict=True)) for vals in zip(*columns.values(), strict=True)]

    def fit(self, dataset: Any) -> GroupVocabulary:
        """Fix every vocabulary from the training dataset (a ``datasets.Dataset``)."""
        rows = self._attribute_rows(dataset, "training")
        for g in self.groupings.values():
            g.fit(rows, self.missing_group)
            if g.num_train_groups < 2:
                raise ValueError(
                    ERR_SINGLE_GROUP.format(
                        grouping=g.name, count=g.num_train_groups, split="training", values=g.values
                    )
                )
        return self

    def encode(self, dataset: Any, *, split: str = "evaluation") -> Any:
        """Return ``dataset`` with one ``group:<grouping>`` int column per grouping added."""
        rows = self._attribute_rows(dataset, split)
        for g in self.groupings.values():
            col = group_column(g.name)
            if col in dataset.column_names:
                dataset = dataset.remove_columns(col)
            values = (g.value_of(r, self.missing_group) for r in rows)
            dataset = dataset.add_column(col, g.encode(values, split=split))
        return dataset

    def to_dict(self) -> dict[str, Any]:
        return {
            "train_grouping": self.train_grouping,
            "groupings": {name: g.to_dict() for name, g in self.groupings.items()},
        }

    def save(self, output_dir: str) -> str:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, VOCAB_FILE)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any], missing_group: str = "error") -> GroupVocabulary:
        vocab = cls(d["train_grouping"], missing_group=missing_group)
        vocab.groupings = {name: Grouping.from_dict(g) for name, g in d["groupings"].items()}
        return vocab

    @classmethod
    def load(cls, path: str, missing_group: str = "error") -> GroupVocabulary:
        """Load from a ``group_vocab.json`` file or a directory that holds one."""
        if os.path.isdir(path):
            path = os.path.join(path, VOCAB_FILE)
        with open(path) as f:
            return cls.from_dict(json.load(f), missing_group)


def check_missing_group(value: str) -> str:
    """Return ``value`` if it is a `MISSING_GROUP_POLICIES` entry, else raise naming the choices."""
    if value not in MISSING_GROUP_POLICIES:
        raise ValueError(
            ERR_MISSING_GROUP_POLICY.format(choices=", ".join(MISSING_GROUP_POLICIES), value=value)
        )
    return value


def check_group_columns(dataset: Any, attributes: Sequence[str], *, split: str, missing_group: str) -> None:
    """`check_columns` for attribute columns: under ``missing_group="error"`` a missing value is refused with
    `ERR_MISSING_GROUP_VALUES` (column, count, rows, and how to keep such rows); otherwise only absent
    columns are."""
    what = "group_by / eval_group_by"
    if missing_group == "error":
        check_columns(dataset, attributes, split=split, what=what, message=ERR_MISSING_GROUP_VALUES)
    else:
        for column in attributes:
            if column not in dataset.column_names:
                raise ValueError(
                    ERR_MISSING_COLUMN.format(
                        split=split, column=column, what=what, columns=dataset.column_names
                    )
                )


def check_columns(
    dataset: Any, columns: Sequence[str], *, split: str, what: str, message: str = ERR_MISSING_VALUES
) -> None:
    """Raise if a column is absent or holds a missing / NaN value (checked in Arrow, no Python loop).

    ``split`` names the data in messages ("training", or "test (b.csv)"); the rows named are positions in
    ``dataset`` (its first ``MAX_ROWS_SHOWN`` bad ones). ``message`` is the missing-value error's template.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    for column in columns:
        if column not in dataset.column_names:
            raise ValueError(
                ERR_MISSING_COLUMN.format(split=split, column=column, what=what, columns=dataset.column_names)
            )
        arrow = dataset.with_format("arrow")[column]  # respects select()/shuffle() index mappings
        bad = arrow.is_null()
        if pa.types.is_floating(arrow.type):
            # Kleene logic: is_nan of a null is null, and plain or_(True, null) is null, which sum() skips.
            bad = pc.or_kleene(bad, pc.is_nan(arrow))
        count = pc.sum(bad).as_py() or 0
        if count:
            rows = pc.indices_nonzero(bad.combine_chunks() if hasattr(bad, "combine_chunks") else bad)
            shown = ", ".join(str(r) for r in rows[:MAX_ROWS_SHOWN].to_pylist())
            raise ValueError(
                message.format(
                    column=column,
                    what=what,
                    split=split,
                    count=count,
                    rows=shown + (", ..." if count > MAX_ROWS_SHOWN else ""),
                )
            )
