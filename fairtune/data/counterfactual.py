"""Counterfactual data augmentation (CDA) for text.

``WordPairs`` holds identity terms and their replacements (he/she, king/queen, ms -> mr), ``counterfactual``
swaps them in one text, and ``augment_counterfactual`` adds or substitutes swapped copies in a
``datasets.Dataset`` (``map`` calls, so it runs at the Arrow level and keeps every other column).

Word-list files (``WordPairs.from_file``; the built-in ``wordlists/gender.txt`` is one), one entry a line::

    # a comment; blank lines are skipped
    he,she        two-way: "he" -> "she" and "she" -> "he" (a tab may stand for the comma)
    ms>mr         one-way: "ms" -> "mr" only, for a term without a unique partner ("mr" pairs with "mrs")

Terms are single words, matched case-insensitively as whole words. Each term is replaced by one term only;
several terms may share a replacement. Any error names the file and the line.

Pair ids (``augment_counterfactual(..., pair_ids=True)``; ``fairtune.data.lm_corpus.cda_corpus`` follows the
same convention): an integer ``pair_id`` column in which an original row and its counterfactual copy share one
id, the position of the original in the dataset given to the augmentation, so ids are unique but not
contiguous once rows are dropped. A row without identity terms keeps an id of its own, a pair of one. The
``counterfactual`` flag tells the two members apart; ``fairtune.data.pairs.check_pairs`` checks the convention
and ``PairSampler`` keeps both members of a pair in one micro-batch.

Length: about 600 lines: the word-list format, the swap rules (case, possessives, ``her``) and their
dataset transform belong together; the rules are most of it.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np

from fairtune.groups import PAIR_COLUMN

logger = logging.getLogger(__name__)

WORDLIST_DIR = os.path.join(os.path.dirname(__file__), "wordlists")
ONE_WAY = ">"
FLAG_COLUMN = "counterfactual"
MODES = ("add", "replace")

ERR_EMPTY_LIST = "The word list from {source} is empty; give at least one pair or one-way entry."
ERR_EMPTY_TERM = "Word pair {pair!r} ({where}) has an empty term."
ERR_BAD_TERM = (
    "Term {term!r} ({where}) is not a single word: terms match whole words (letters, digits, inner "
    "apostrophes), so one with spaces or punctuation could never match."
)
ERR_PAIR_SHAPE = "Word pair {pair!r} ({where}) must hold exactly two terms."
ERR_SELF_PAIR = "Word pair {pair!r} ({where}) maps the term {term!r} to itself."
ERR_TWO_PARTNERS = (
    "Term {term!r} is replaced by {old!r} in {first} and by {new!r} in {second}; each term may be replaced "
    "by one term only (several terms may share one replacement through one-way 'a>b' entries)."
)
ERR_MALFORMED_LINE = (
    "{path}, line {line}: expected 'a,b' (two-way pair; a tab may replace the comma) or 'a>b' (a is "
    "replaced by b, b stays), got {text!r}."
)
ERR_UNKNOWN_BUILTIN = "There is no built-in word list {name!r}; available: {choices}."
ERR_UNKNOWN_COLUMN = "The dataset has no column {column!r} (named by {what}). Its columns are: {columns}."
ERR_EMPTY_DATASET = "The dataset is empty; counterfactual augmentation needs rows."
ERR_MODE = "Unknown mode {mode!r}; valid modes: {choices}."
ERR_SHARE = "share must be in (0, 1]; got {share!r}."
ERR_SHARE_ADD = (
    "share={share!r} applies to mode='replace' only: mode='add' copies every example that contains a term."
)
ERR_NO_SWAP_VALUES = (
    "attribute={attribute!r} needs swap_values, e.g. {{'Male': 'Female', 'Female': 'Male'}}, to update it "
    "in the counterfactual copies."
)
ERR_SWAP_WITHOUT_ATTRIBUTE = "swap_values is given but attribute is not; name the column it applies to."
ERR_FLAG_EXISTS = (
    "The dataset already has a {column!r} column (was it augmented already?); remove or rename it first."
)
ERR_PAIRS_REPLACE = (
    "pair_ids=True needs mode='add': mode='replace' swaps rows in place, so no row keeps its original to "
    "pair with."
)

# Whole words: runs of word characters, with apostrophes (straight or curly) allowed *inside* a word, so
# "man's", "he'll" and "O'Neil" are single tokens while quotes around a word are not part of it.
_WORD_RE = re.compile(r"\w+(?:['’]\w+)*")
_APOSTROPHE_RE = re.compile(r"['’]")
# One entry of a word-list file: two terms around ONE_WAY (">") or a two-way separator (comma or tab).
_LINE_RE = re.compile(r"([^,\t>]*)([,\t>])([^,\t>]*)")

# Function words for the her/his rule (see ``counterfactual``). Words that often start a noun phrase after
# a possessive ("other", "many", "most", "few", "past", "one", ...) are left out on purpose.
DETERMINERS = frozenset(
    "a an the this that these those my your his her its our their some any every each no all both either "
    "neither another enough such what whatever which whichever".split()
)
PREPOSITIONS = frozenset(
    "to in on at for with by from of about into onto over under after before during through across against "
    "among between behind beside besides beyond near off out up down around along toward towards upon "
    "within without via like than since until till per despite except".split()
)
CONJUNCTIONS = frozenset(
    "and or but nor so yet because if when whenever while whereas although though unless whether that as "
    "once where wherever how why".split()
)
PRONOUNS = frozenset(
    "i me you he him she it we us they them myself yourself himself herself itself ourselves themselves "
    "who whom whose someone somebody something anyone anybody anything everyone everybody everything "
    "nobody nothing mine yours hers ours theirs".split()
)
AUXILIARIES = frozenset(
    "am is are was were be been being has have had do does did will would shall should can could may might "
    "must".split()
)
ADVERBS = frozenset(
    "yesterday today tonight tomorrow now then again too also here there later soon already always never "
    "often sometimes twice anyway instead either alone not really quickly immediately recently personally "
    "directly well everywhere afterwards ever together".split()
)
# After an object "her" only: particles of phrasal verbs ("bring her back") and a few bare infinitives
# ("let her go"). After "his" these are mostly nouns ("his back", "his away game"), so they stay out there.
OBJECT_ONLY = frozenset("back away home aside apart go come know feel think see get".split())
HER_OBJECT_NEXT = DETERMINERS | PREPOSITIONS | CONJUNCTIONS | PRONOUNS | AUXILIARIES | ADVERBS | OBJECT_ONLY
HIS_STANDALONE_NEXT = PREPOSITIONS | CONJUNCTIONS | PRONOUNS | AUXILIARIES | ADVERBS


class WordPairs:
    """Identity terms and their replacements: two-way pairs (he/she) and one-way entries (ms -> mr).

    A two-way pair ``(a, b)`` replaces ``a`` by ``b`` and ``b`` by ``a``; a one-way entry ``(a, b)`` replaces
    ``a`` by ``b`` only, for a word without a unique partner: "Ms" -> "Mr" while "Mr" <-> "Mrs", so a
    female-to-male copy does not keep "Ms.". Terms are lower-cased and must be single words. Each term is
    replaced by one term only: a term mapped to two different ones (``he,she`` + ``she,it``, or ``he,she`` +
    ``he>it``) is an error naming both entries; several terms may share one replacement. Repeating an entry
    (a pair in either order) is harmless, so lists can be merged freely with ``a + b`` or ``a.extend(b)``.

    Args:
        pairs: two-way pairs, as two-term sequences (tuples, or lists as read from a YAML/JSON config) or a
            ``{a: b}`` dict.
        one_way: one-way entries ``(term, replacement)``, in the same forms.
        source: where the entries come from, used in error messages.
    """

    def __init__(
        self,
        pairs: Iterable[Sequence[str]] | Mapping[str, str] = (),
        *,
        one_way: Iterable[Sequence[str]] | Mapping[str, str] = (),
        source: str = "the given pairs",
    ):
        entries = [
            (entry, two_way, f"{source} {'#' if two_way else 'one-way #'}{n}")
            for two_way, given in ((True, pairs), (False, one_way))
            for n, entry in enumerate(given.items() if isinstance(given, Mapping) else given, 1)
        ]
        self._load(entries, source)

    def _load(self, entries: list[tuple[Any, bool, str]], source: str) -> None:
        self._entries: list[tuple[str, str, bool]] = []  # (a, b, two_way) in the order given
        self._origins: list[str] = []  # where each entry was read, for error messages
        self._mapping: dict[str, str] = {}
        self._owner: dict[str, int] = {}  # term -> index into _entries of the entry that maps it
        self._sources = [source]
        self._add(entries)
        if not self._entries:
            raise ValueError(ERR_EMPTY_LIST.format(source=source))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> WordPairs:
        """Read a word-list file, one entry per line (the syntax of the module docstring):

        ``a,b`` (or ``a<TAB>b``): a two-way pair; ``a>b``: ``a`` is replaced by ``b``, ``b`` stays. Blank
        lines and ``#`` comments are skipped; every error names the file and the line.
        """
        path = os.fspath(path)
        entries: list[tuple[Any, bool, str]] = []
        with open(path, encoding="utf-8") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw.split("#", 1)[0].strip()
                if not line:
                    continue
                match = _LINE_RE.fullmatch(line)
                if match is None:
                    raise ValueError(ERR_MALFORMED_LINE.format(path=path, line=lineno, text=raw.rstrip("\n")))
                a, sep, b = match.groups()
                entries.append(((a, b), sep != ONE_WAY, f"{path}:{lineno}"))
        loaded = cls.__new__(cls)
        loaded._load(entries, path)
        return loaded

    @classmethod
    def builtin(cls, name: str = "gender") -> WordPairs:
        """A list shipped in ``fairtune/data/wordlists/`` (``available()`` names them)."""
        if name not in cls.available():
            raise ValueError(ERR_UNKNOWN_BUILTIN.format(name=name, choices=cls.available()))
        return cls.from_file(os.path.join(WORDLIST_DIR, f"{name}.txt"))

    @staticmethod
    def available() -> list[str]:
        return sorted(f[: -len(".txt")] for f in os.listdir(WORDLIST_DIR) if f.endswith(".txt"))

    @staticmethod
    def _show(a: str, b: str, two_way: bool) -> str:
        return f"'{a},{b}'" if two_way else f"'{a}{ONE_WAY}{b}'"

    def _add(self, entries: list[tuple[Any, bool, str]]) -> None:
        """Validate ``(pair, two_way, where)`` entries against the current ones, then add all (or none)."""
        kept, origins = list(self._entries), list(self._origins)
        mapping, owner = dict(self._mapping), dict(self._owner)
        for pair, two_way, where in entries:
            if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise ValueError(ERR_PAIR_SHAPE.format(pair=pair, where=where))
            terms = []
            for term in pair:
                if not isinstance(term, str):
                    raise ValueError(ERR_BAD_TERM.format(term=term, where=where))
                term = term.strip().lower()
                if not term:
                    raise ValueError(ERR_EMPTY_TERM.format(pair=tuple(pair), where=where))
                if not _WORD_RE.fullmatch(term):
                    raise ValueError(ERR_BAD_TERM.format(term=term, where=where))
                terms.append(term)
            a, b = terms
            if a == b:
                raise ValueError(ERR_SELF_PAIR.format(pair=tuple(pair), where=where, term=a))
            new = [(t, r) for t, r in ([(a, b), (b, a)] if two_way else [(a, b)]) if mapping.get(t) != r]
            for term, replacement in new:
                if term in mapping:
                    old = kept[owner[term]]
                    raise ValueError(
                        ERR_TWO_PARTNERS.format(
                            term=term,
                            old=mapping[term],
                            new=replacement,
                            first=f"{self._show(*old)} ({origins[owner[term]]})",
                            second=f"{self._show(a, b, two_way)} ({where})",
                        )
                    )
            if not new:
                continue  # the same entry again (a pair in either order)
            for term, replacement in new:
                mapping[term], owner[term] = replacement, len(kept)
            kept.append((a, b, two_way))
            origins.append(where)
        self._entries, self._origins, self._mapping, self._owner = kept, origins, mapping, owner

    def _own_entries(self) -> list[tuple[Any, bool, str]]:
        return [((a, b), two_way, o) for (a, b, two_way), o in zip(self._entries, self._origins, strict=True)]

    def extend(self, other: WordPairs | Iterable[Sequence[str]]) -> None:
        """Add entries in place (a plain iterable holds two-way pairs); on an error nothing is added."""
        if isinstance(other, WordPairs):
            self._add(other._own_entries())
            self._sources += other._sources
        else:
            self._add([(pair, True, f"extension #{n}") for n, pair in enumerate(other, 1)])

    def __add__(self, other: object) -> WordPairs:
        if not isinstance(other, WordPairs):
            return NotImplemented
        merged = WordPairs.__new__(WordPairs)
        merged._load(self._own_entries(), self._sources[0])
        merged._sources = list(self._sources)
        merged.extend(other)
        return merged

    @property
    def mapping(self) -> Mapping[str, str]:
        """Lower-cased term -> its replacement: both directions of each pair, one of each one-way entry."""
        return MappingProxyType(self._mapping)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """The two-way pairs."""
        return [(a, b) for a, b, two_way in self._entries if two_way]

    @property
    def one_way(self) -> list[tuple[str, str]]:
        """The one-way entries ``(term, replacement)``."""
        return [(a, b) for a, b, two_way in self._entries if not two_way]

    @property
    def sides(self) -> Mapping[str, int]:
        """Lower-cased term -> side, 0 or 1: which member of its pair a term is, e.g. 0 = male and 1 = female
        in the built-in gender list, whose pairs list the male term first.

        A two-way pair ``(a, b)`` puts ``a`` on side 0 and ``b`` on side 1. A one-way entry ``a>b`` puts ``a``
        on the side opposite ``b``'s ("ms>mr": mr is side 0, so ms is side 1; "bridegroom>bride": side 0);
        when ``b`` has no side from a pair, ``a`` takes side 0 and ``b`` side 1.
        """
        sides: dict[str, int] = {}
        for a, b, two_way in self._entries:
            if two_way:
                sides.setdefault(a, 0)
                sides.setdefault(b, 1)
        for a, b, two_way in self._entries:
            if not two_way:
                sides.setdefault(b, 1)
                sides.setdefault(a, 1 - sides[b])
        return MappingProxyType(sides)

    @property
    def pronoun_rule(self) -> bool:
        """Whether ``counterfactual`` applies the her/his rule: needs the pairs him/her and his/hers."""
        return self._mapping.get("her") == "him" and self._mapping.get("his") == "hers"

    def partner(self, term: str) -> str | None:
        """The replacement of ``term`` (any case), or ``None``."""
        return self._mapping.get(term.lower())

    def __contains__(self, term: object) -> bool:
        return isinstance(term, str) and term.lower() in self._mapping

    def __len__(self) -> int:
        """Number of entries (two-way pairs and one-way entries)."""
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordPairs) and self._mapping == other._mapping

    __hash__ = None  # type: ignore[assignment]  # mutable (extend)

    def __repr__(self) -> str:
        return (
            f"WordPairs({len(self.pairs)} pairs, {len(self.one_way)} one-way entries from "
            f"{', '.join(self._sources)})"
        )


def _match_case(source: str, target: str) -> str:
    """Give ``target`` the case pattern of ``source``: lower, Capitalised or UPPER (2+ letters)."""
    if len(source) > 1 and source.isupper():
        return target.upper()
    if source[:1].isupper():
        return target[:1].upper() + target[1:]
    return target


def _next_word(text: str, tokens: list[re.Match[str]], i: int) -> str | None:
    """The word after token ``i`` in the same clause, lower-cased and without an apostrophe suffix.

    ``None`` at the end of the text or when anything but whitespace (punctuation, a quote, a dash) comes
    first. A word glued to a hyphen ("well-known") is returned as ``""``: it starts a compound modifier,
    which counts as noun-like.
    """
    if i + 1 >= len(tokens):
        return None
    nxt = tokens[i + 1]
    if text[tokens[i].end() : nxt.start()].strip():
        return None
    if text[nxt.end() : nxt.end() + 1] == "-":
        return ""
    return _APOSTROPHE_RE.split(nxt.group().lower(), maxsplit=1)[0]


def _term_matches(
    tokens: list[re.Match[str]], mapping: Mapping[str, str]
) -> Iterator[tuple[int, re.Match[str], str, str]]:
    """``(index, token, stem, suffix)`` of every token that is a term, or whose part before its first
    apostrophe is one ("men's" -> stem "men", suffix "'s"); the one place that decides what is a term."""
    for i, match in enumerate(tokens):
        word = match.group()
        if word.lower() in mapping:
            yield i, match, word, ""
            continue
        parts = _APOSTROPHE_RE.split(word, maxsplit=1)
        if len(parts) > 1 and parts[0].lower() in mapping:
            yield i, match, parts[0], word[len(parts[0]) :]


def find_terms(text: str, pairs: WordPairs) -> list[str]:
    """The identity terms in ``text``, lower-cased, in order, as ``counterfactual`` finds and swaps them
    ("The man's son" -> ``["man", "son"]``)."""
    return [stem.lower() for _, _, stem, _ in _term_matches(list(_WORD_RE.finditer(text)), pairs.mapping)]


def counterfactual(text: str, pairs: WordPairs) -> tuple[str, int]:
    """Swap every identity term in ``text`` for its partner; return the new text and the number of swaps.

    Rules:

    * Whole words only. Words are runs of word characters with apostrophes allowed inside
      (``\\w+(?:['’]\\w+)*``), so "he" never touches "the", "shepherd", "hero" or "Sheila", and "man"
      never touches "manager"; "woman" is a word of its own.
    * Case is kept per word: ``he -> she``, ``He -> She``, ``HE -> SHE``.
    * A word not in the list but whose part before its first apostrophe is ("man's", "men’s", "he'll")
      swaps that stem and keeps the suffix: ``men's -> women's``, ``he'll -> she'll``. A plural possessive
      ("boys'") needs nothing: the trailing apostrophe is not part of the word.
    * Everything between words (punctuation, whitespace, digits-only noise) is untouched.
    * One-way entries swap one way only ("Ms." -> "Mr.", whose swap is "Mrs."), so a text with such a
      term is not restored by a second swap.
    * her/his (only when ``pairs.pronoun_rule``, i.e. the list pairs him/her and his/hers, as the built-in
      gender list does): English "her" is both object ("saw her") and possessive ("her book"), and "his"
      both determiner ("his car") and pronoun ("it is his"). The rule looks at the *next word* in the same
      clause: there is none when the text ends or punctuation comes first.

      - "her" -> "him" when there is no next word or it is a function word (determiner, preposition,
        conjunction, pronoun, auxiliary, common adverb, a phrasal-verb particle, or one of a few bare
        infinitives: ``HER_OBJECT_NEXT``); otherwise the next word is taken as a noun phrase -> "his".
        "I saw her." / "I saw her yesterday" / "give her the book" -> him; "her book" -> his.
      - "his" -> "hers" when there is no next word or it is in ``HIS_STANDALONE_NEXT`` ("it is his.",
        "his is red", "his and hers"); otherwise -> "her" ("his car", "his own").
      - "hers" -> "his" and "him" -> "her" always.

      Known failures (each word is seen only with its right neighbour, no parsing): an object "her" before
      a noun or adjective, "I gave her flowers" -> "his flowers", "they made her happy" -> "his happy",
      "saw her leave" -> "his leave", "tell her John called" -> "his John", "I love her very much" -> "his
      very much"; a possessive "her" before a listed word, "her every move" -> "him every move", "her back
      hurts" -> "him back hurts"; and a possessive "his" before a listed adverb, "his now famous novel" ->
      "hers now famous novel".
    """
    mapping = pairs.mapping
    tokens = list(_WORD_RE.finditer(text))
    out: list[str] = []
    last = swaps = 0
    for i, match, stem, suffix in _term_matches(tokens, mapping):
        key = stem.lower()
        partner = mapping[key]
        if not suffix and key in ("her", "his") and pairs.pronoun_rule:
            nxt = _next_word(text, tokens, i)
            if key == "her" and nxt is not None and nxt not in HER_OBJECT_NEXT:
                partner = "his"
            elif key == "his" and nxt is not None and nxt not in HIS_STANDALONE_NEXT:
                partner = "her"
        out += [text[last : match.start()], _match_case(stem, partner), suffix]
        last = match.end()
        swaps += 1
    out.append(text[last:])
    return "".join(out), swaps


# Temporary columns of ``augment_counterfactual``; removed before it returns.
_CF_TEXT, _CF_PAIR, _CF_SWAPS = "__cda_text", "__cda_text_pair", "__cda_swaps"


def _swap_batch(
    batch: dict[str, list[Any]], *, text_column: str, text_pair_column: str | None, pairs: WordPairs
) -> dict[str, list[Any]]:
    columns = [(text_column, _CF_TEXT)] + ([(text_pair_column, _CF_PAIR)] if text_pair_column else [])
    out: dict[str, list[Any]] = {_CF_SWAPS: [0] * len(batch[text_column])}
    for source, target in columns:
        out[target] = []
        for row, text in enumerate(batch[source]):
            new, count = counterfactual(text, pairs) if text is not None else (None, 0)
            out[target].append(new)
            out[_CF_SWAPS][row] += count
    return out


def _apply_batch(
    batch: dict[str, list[Any]],
    indices: list[int],
    *,
    chosen: set[int] | None,
    text_column: str,
    text_pair_column: str | None,
    attribute: str | None,
    swap_values: dict[Any, Any] | None,
) -> dict[str, list[Any]]:
    """Put the swapped text (and attribute) into the rows in ``chosen`` (all rows when ``None``)."""
    use = [chosen is None or i in chosen for i in indices]

    def pick(new: list[Any], old: list[Any]) -> list[Any]:
        return [n if u else o for u, n, o in zip(use, new, old, strict=True)]

    out = {text_column: pick(batch[_CF_TEXT], batch[text_column]), FLAG_COLUMN: use}
    if text_pair_column:
        out[text_pair_column] = pick(batch[_CF_PAIR], batch[text_pair_column])
    if attribute and swap_values is not None:
        old = batch[attribute]
        out[attribute] = pick([swap_values.get(v, v) for v in old], old)
    return out


def _check_column(dataset: Any, column: str, what: str) -> None:
    if column not in dataset.column_names:
        raise ValueError(ERR_UNKNOWN_COLUMN.format(column=column, what=what, columns=dataset.column_names))


def augment_counterfactual(
    dataset: Any,
    text_column: str,
    pairs: WordPairs,
    attribute: str | None = None,
    swap_values: Mapping[Any, Any] | None = None,
    mode: str = "add",
    share: float = 1.0,
    seed: int = 0,
    text_pair_column: str | None = None,
    pair_ids: bool = False,
) -> Any:
    """Counterfactual data augmentation of a ``datasets.Dataset`` (see ``counterfactual`` for the swap).

    Args:
        dataset: the data; every column is kept.
        text_column: the text to swap; ``text_pair_column``, if given, is swapped too (one example, one
            count of swaps over both).
        pairs: the identity terms, e.g. ``WordPairs.builtin("gender")``.
        attribute: a column to update in the swapped examples through ``swap_values``, e.g. ``"sex"`` with
            ``{"Male": "Female", "Female": "Male"}``; values not in ``swap_values`` stay and are counted.
        mode: ``"add"`` keeps every original and appends one swapped copy of each example that contains a
            term; ``"replace"`` swaps, in place, a random ``share`` (seeded; of the examples that contain a
            term, rounded to the nearest count) and keeps the dataset's size and order.
        pair_ids: (mode ``"add"`` only) also write an integer ``pair_id`` column: row ``i`` of ``dataset``
            gets id ``i`` and its copy the same id; a row without terms keeps an id of its own (a pair of
            one). The rows and their order are the same as without it.

    Returns:
        The dataset with a boolean ``counterfactual`` column, true for the swapped examples (and ``pair_id``).
    """
    if mode not in MODES:
        raise ValueError(ERR_MODE.format(mode=mode, choices=list(MODES)))
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise ValueError(ERR_SHARE.format(share=share))
    if mode == "add" and share != 1:
        raise ValueError(ERR_SHARE_ADD.format(share=share))
    if pair_ids and mode != "add":
        raise ValueError(ERR_PAIRS_REPLACE)
    _check_column(dataset, text_column, "text_column")
    if text_pair_column is not None:
        _check_column(dataset, text_pair_column, "text_pair_column")
    if attribute is not None:
        _check_column(dataset, attribute, "attribute")
        if swap_values is None:
            raise ValueError(ERR_NO_SWAP_VALUES.format(attribute=attribute))
    elif swap_values is not None:
        raise ValueError(ERR_SWAP_WITHOUT_ATTRIBUTE)
    for column in (FLAG_COLUMN, PAIR_COLUMN) if pair_ids else (FLAG_COLUMN,):
        if column in dataset.column_names:
            raise ValueError(ERR_FLAG_EXISTS.format(column=column))
    if len(dataset) == 0:
        raise ValueError(ERR_EMPTY_DATASET)
    import datasets

    scored = dataset.map(
        _swap_batch,
        batched=True,
        fn_kwargs={"text_column": text_column, "text_pair_column": text_pair_column, "pairs": pairs},
        desc="Counterfactual swaps",
    )
    counts = list(scored[_CF_SWAPS])
    with_terms = [i for i, c in enumerate(counts) if c]
    if mode == "add":
        applied = with_terms
    else:
        rng = np.random.default_rng(seed)
        k = math.floor(share * len(with_terms) + 0.5)
        applied = sorted(rng.choice(with_terms, size=k, replace=False).tolist()) if k else []

    features = datasets.Features({**dataset.features, FLAG_COLUMN: datasets.Value("bool")})
    apply_kwargs = {
        "text_column": text_column,
        "text_pair_column": text_pair_column,
        "attribute": attribute,
        "swap_values": dict(swap_values) if swap_values is not None else None,
    }
    temp = [c for c in (_CF_TEXT, _CF_PAIR, _CF_SWAPS) if c in scored.column_names]
    if mode == "add":
        originals = dataset.add_column(FLAG_COLUMN, [False] * len(dataset), feature=datasets.Value("bool"))
        copies = scored.select(applied).map(
            _apply_batch,
            with_indices=True,
            batched=True,
            remove_columns=temp,
            features=features,
            fn_kwargs={"chosen": None, **apply_kwargs},
            desc="Counterfactual copies",
        )
        if pair_ids:
            pair_feature = datasets.Value("int64")
            originals = originals.add_column(PAIR_COLUMN, list(range(len(dataset))), feature=pair_feature)
            copies = copies.add_column(PAIR_COLUMN, applied, feature=pair_feature)
        result = datasets.concatenate_datasets([originals, copies.select_columns(originals.column_names)])
    else:
        result = scored.map(
            _apply_batch,
            with_indices=True,
            batched=True,
            remove_columns=temp,
            features=features,
            fn_kwargs={"chosen": set(applied), **apply_kwargs},
            desc="Counterfactual replacement",
        )

    unchanged: Counter[Any] = Counter()
    if attribute is not None and applied:
        values = list(scored.select(applied)[attribute])
        unchanged = Counter(v for v in values if v not in apply_kwargs["swap_values"])
    logger.log(
        logging.WARNING if unchanged else logging.INFO,
        "Counterfactual augmentation (%s): %d of %d examples contain a term; %s %d with %d swaps%s.",
        mode,
        len(with_terms),
        len(dataset),
        "added copies of" if mode == "add" else "replaced",
        len(applied),
        sum(counts[i] for i in applied),
        f"; {sum(unchanged.values())} {attribute!r} value(s) not in swap_values left as they were: "
        f"{dict(unchanged)}"
        if unchanged
        else "",
    )
    return result
