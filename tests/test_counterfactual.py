import logging
import re

import datasets
import pytest

from fairtune.data.counterfactual import (
    ERR_BAD_TERM,
    ERR_EMPTY_DATASET,
    ERR_EMPTY_LIST,
    ERR_EMPTY_TERM,
    ERR_FLAG_EXISTS,
    ERR_MALFORMED_LINE,
    ERR_MODE,
    ERR_NO_SWAP_VALUES,
    ERR_PAIR_SHAPE,
    ERR_PAIRS_REPLACE,
    ERR_SELF_PAIR,
    ERR_SHARE,
    ERR_SHARE_ADD,
    ERR_SWAP_WITHOUT_ATTRIBUTE,
    ERR_TWO_PARTNERS,
    ERR_UNKNOWN_BUILTIN,
    ERR_UNKNOWN_COLUMN,
    PAIR_COLUMN,
    WordPairs,
    augment_counterfactual,
    counterfactual,
    find_terms,
)

GENDER = WordPairs.builtin("gender")
SEX_SWAP = {"Male": "Female", "Female": "Male"}


def literal(template: str) -> str:
    """The longest literal part of an ERR_ template (between placeholders), for ``pytest.raises(match=)``."""
    return re.escape(max(re.split(r"\{[^}]*\}", template), key=len))


@pytest.mark.parametrize(
    "text, expected, swaps",
    [
        # capitals
        ("He said", "She said", 1),
        ("HE SAID", "SHE SAID", 1),
        ("She", "He", 1),
        ("Her mother and HER father", "His father and HIS mother", 4),
        # possessives and contractions
        ("the man's hat", "the woman's hat", 1),
        ("the men's room", "the women's room", 1),
        ("the king’s crown", "the queen’s crown", 1),
        ("Mary’s hat", "Mary’s hat", 0),
        ("the boys' toys", "the girls' toys", 1),
        ("he'll say she's late", "she'll say he's late", 2),
        # punctuation and whitespace untouched
        ("he, she; him.", "she, he; her.", 3),
        ("  Mr. Smith (a man)!\n", "  Mrs. Smith (a woman)!\n", 2),
        # words that contain a term
        ("the shepherd", "the shepherd", 0),
        ("a hero in a helmet", "a hero in a helmet", 0),
        ("these themselves Sheila", "these themselves Sheila", 0),
        ("the manager and the woman", "the manager and the man", 1),
        # her -> him (object) / his (possessive)
        ("I saw her.", "I saw him.", 1),
        ("I saw her yesterday", "I saw him yesterday", 1),
        ("her book", "his book", 1),
        ("give her the book", "give him the book", 1),
        ("I told her he left", "I told him she left", 2),
        ("her well-known son", "his well-known daughter", 2),
        ("gave her her book", "gave him his book", 2),
        # his -> her (determiner) / hers (pronoun), hers -> his, him -> her
        ("his car", "her car", 1),
        ("it is his.", "it is hers.", 1),
        ("His is red; hers is blue.", "Hers is red; his is blue.", 2),
        ("ask him", "ask her", 1),
        # several terms, no term
        ("The king and his wife met their son.", "The queen and her husband met their daughter.", 4),
        ("A 30-year-old nurse works nights.", "A 30-year-old nurse works nights.", 0),
        ("", "", 0),
    ],
)
def test_counterfactual_table(text, expected, swaps):
    assert counterfactual(text, GENDER) == (expected, swaps)


@pytest.mark.parametrize(
    "text",
    [
        "He is a king and she is a queen.",
        "The men's room, the WOMEN'S room; Mr. Smith's son!",
        "Ask him about herself: he'd know.",
        "Nothing to swap here.",
    ],
)
def test_swap_is_its_own_inverse(text):
    swapped, n = counterfactual(text, GENDER)
    assert counterfactual(swapped, GENDER) == (text, n)


def test_custom_pairs_without_pronoun_rule():
    pairs = WordPairs({"john": "mary", "Christian": "Muslim", "her": "his"})  # a dict, as from a config
    assert not pairs.pronoun_rule  # "her" is paired with "his" here: a plain swap, no next-word rule
    assert counterfactual("John's CHRISTIAN friend saw her", pairs) == ("Mary's MUSLIM friend saw his", 3)


def test_word_pairs_from_file_merge_and_builtin(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("# first names\nJohn\tMary\n\nPeter , Anna  # trailing comment\njohn,mary\n")
    names = WordPairs.from_file(path)
    assert names.pairs == [("john", "mary"), ("peter", "anna")]  # lower-cased, repeat dropped
    assert names.mapping["mary"] == "john" and names.partner("ANNA") == "peter" and "Peter" in names

    assert len(GENDER) >= 60 and "gender" in WordPairs.available()
    assert all(GENDER.mapping[b] == a for a, b in GENDER.pairs)
    merged = GENDER + names
    assert len(merged) == len(GENDER) + 2 and len(GENDER) >= 60  # operands untouched
    assert counterfactual("John and his father", merged) == ("Mary and her mother", 3)

    names.extend([("paul", "paula"), ("anna", "peter")])  # the reverse of a known pair is a repeat
    assert names.pairs[-1] == ("paul", "paula") and len(names) == 3
    with pytest.raises(ValueError, match=literal(ERR_UNKNOWN_BUILTIN)):
        WordPairs.builtin("religion")


@pytest.mark.parametrize(
    "pairs, template, names",
    [
        ([("he", "she"), ("she", "it")], ERR_TWO_PARTNERS, ["'she'", "'he,she'", "'she,it'", "#1", "#2"]),
        ([("he", "she"), ("he", "it")], ERR_TWO_PARTNERS, ["'he'", "'he,she'", "'he,it'"]),
        ([("he", " ")], ERR_EMPTY_TERM, ["#1"]),
        ([("he", "HE")], ERR_SELF_PAIR, ["'he'"]),
        ([], ERR_EMPTY_LIST, []),
        ([("he", "she", "it")], ERR_PAIR_SHAPE, []),
        (["he"], ERR_PAIR_SHAPE, []),
        ([("Mr.", "Mrs.")], ERR_BAD_TERM, ["'mr.'"]),
    ],
)
def test_word_pairs_errors(pairs, template, names):
    with pytest.raises(ValueError, match=literal(template)) as err:
        WordPairs(pairs)
    assert all(n in str(err.value) for n in names)


def test_word_pairs_file_errors_and_atomic_extend(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("he,she\nking queen\n")
    with pytest.raises(ValueError, match=literal(ERR_MALFORMED_LINE)) as err:
        WordPairs.from_file(bad)
    assert f"{bad}, line 2" in str(err.value)

    clash = tmp_path / "clash.txt"
    clash.write_text("# clash\nhe,she\nshe,it\n")
    with pytest.raises(ValueError, match=literal(ERR_TWO_PARTNERS)) as err:
        WordPairs.from_file(clash)
    assert f"{clash}:2" in str(err.value) and f"{clash}:3" in str(err.value)

    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match=literal(ERR_EMPTY_LIST)):
        WordPairs.from_file(empty)

    pairs = WordPairs([("he", "she")])
    with pytest.raises(ValueError, match=literal(ERR_TWO_PARTNERS)):
        pairs.extend([("king", "queen"), ("he", "it")])
    assert pairs.pairs == [("he", "she")]  # nothing added


@pytest.mark.parametrize(
    "text, expected, swaps",
    [
        # "ms" has no unique partner: one-way to "mr", while "mr" <-> "mrs" stays two-way
        ("Ms. Smith met Mr. Jones and Mrs. Brown.", "Mr. Smith met Mrs. Jones and Mr. Brown.", 3),
        ("MS. SMITH AND MRS. SMITH", "MR. SMITH AND MR. SMITH", 2),
        ("Yes, ma'am, said the bridegroom's mum.", "Yes, sir, said the bride's dad.", 3),
        ("Her mum's friends", "His dad's friends", 2),
        ("the groom and the bridegroom", "the bride and the bride", 2),
        # words that merely contain a one-way term are untouched
        ("msg from mums", "msg from dads", 1),
    ],
)
def test_one_way_entries_of_the_gender_list(text, expected, swaps):
    assert counterfactual(text, GENDER) == (expected, swaps)


def test_one_way_entries_in_files_and_the_api(tmp_path):
    assert ("ms", "mr") in GENDER.one_way and ("mr", "mrs") in GENDER.pairs
    assert GENDER.partner("Ms") == "mr" and GENDER.partner("mr") == "mrs"
    path = tmp_path / "titles.txt"
    path.write_text("sir,madam\nma'am > sir  # one-way, spaces allowed\nsir>madam\n")
    titles = WordPairs.from_file(path)
    assert titles.pairs == [("sir", "madam")] and titles.one_way == [("ma'am", "sir")]  # repeat dropped
    assert len(titles) == 2 and titles.mapping == {"sir": "madam", "madam": "sir", "ma'am": "sir"}
    assert counterfactual("Sir, Madam, Ma'am", titles) == ("Madam, Sir, Sir", 3)
    api = WordPairs([("sir", "madam")], one_way={"ma'am": "sir"})
    assert api == titles and api.one_way == [("ma'am", "sir")]
    only_one_way = WordPairs(one_way=[("ms", "mr")])
    assert only_one_way.pairs == [] and counterfactual("Mr and Ms", only_one_way) == ("Mr and Mr", 1)


@pytest.mark.parametrize(
    "lines, bad_line, template, names",
    [
        # a one-way entry may not give a paired term a second replacement
        ("mr,mrs\nmr>ms\n", 2, ERR_TWO_PARTNERS, ["'mr'", "'mrs'", "'ms'", "'mr,mrs'", "'mr>ms'"]),
        ("ms>mr\nms>mrs\n", 2, ERR_TWO_PARTNERS, ["'ms>mr'", "'ms>mrs'"]),
        ("mr,mrs\nms>mr\nmrs>ms\n", 3, ERR_TWO_PARTNERS, ["'mrs'", "'mr,mrs'", "'mrs>ms'"]),
        ("he,she\nms>>mr\n", 2, ERR_MALFORMED_LINE, []),
        ("he,she\nms>mr,mrs\n", 2, ERR_MALFORMED_LINE, []),
        ("he>\n", 1, ERR_EMPTY_TERM, []),
        ("mr.>mrs\n", 1, ERR_BAD_TERM, ["'mr.'"]),
        ("he>HE\n", 1, ERR_SELF_PAIR, []),
    ],
)
def test_one_way_file_errors_name_file_and_line(tmp_path, lines, bad_line, template, names):
    path = tmp_path / "list.txt"
    path.write_text(lines)
    with pytest.raises(ValueError, match=literal(template)) as err:
        WordPairs.from_file(path)
    message = str(err.value)
    assert f"{path}:{bad_line}" in message or f"{path}, line {bad_line}" in message
    assert all(n in message for n in names)


def people() -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {
            "text": [
                "He is a nurse.",
                "A quiet person.",
                "She met her aunt.",
                "The man's car.",
                "Mr. X left.",
            ],
            "sex": ["Male", "Other", "Female", "Male", "Other"],
            "label": [1, 0, 1, 0, 1],
            "id": [0, 1, 2, 3, 4],
        }
    )


def test_augment_add(caplog):
    data = people()
    with caplog.at_level(logging.INFO, logger="fairtune.data.counterfactual"):
        out = augment_counterfactual(data, "text", GENDER, attribute="sex", swap_values=SEX_SWAP)
    assert len(out) == 5 + 4  # the quiet person has no term, so no copy
    assert out.column_names == ["text", "sex", "label", "id", "counterfactual"]
    assert list(out["counterfactual"]) == [False] * 5 + [True] * 4
    copies = out.select(range(5, 9))
    assert list(copies["id"]) == [0, 2, 3, 4] and list(copies["label"]) == [1, 1, 0, 1]
    assert list(copies["text"]) == [
        "She is a nurse.",
        "He met his uncle.",
        "The woman's car.",
        "Mrs. X left.",
    ]
    assert list(copies["sex"]) == ["Female", "Male", "Female", "Other"]  # "Other" is not in swap_values
    assert out.select(range(5)).remove_columns("counterfactual").to_dict() == data.to_dict()
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "1 'sex' value(s)" in record.getMessage()


def test_augment_replace_share_and_text_pair():
    data = people().add_column("hypothesis", ["he", "x", "x", "x", "his"])
    full = augment_counterfactual(data, "text", GENDER, mode="replace", text_pair_column="hypothesis")
    assert len(full) == 5 and list(full["id"]) == [0, 1, 2, 3, 4]
    assert list(full["counterfactual"]) == [True, False, True, True, True]
    assert list(full["hypothesis"]) == ["she", "x", "x", "x", "hers"] and full[1]["text"] == "A quiet person."

    half = [
        augment_counterfactual(data, "text", GENDER, mode="replace", share=0.5, seed=s) for s in (1, 1, 2)
    ]
    assert sum(half[0]["counterfactual"]) == 2  # round(0.5 * 4 examples with a term)
    assert half[0].to_dict() == half[1].to_dict()  # seeded
    swapped = [i for i, flag in enumerate(half[0]["counterfactual"]) if flag]
    assert all(half[0][i]["text"] != data[i]["text"] for i in swapped)
    assert all(half[0][i]["text"] == data[i]["text"] for i in set(range(5)) - set(swapped))


@pytest.mark.parametrize(
    "kwargs, template",
    [
        ({"text_column": "sentence"}, ERR_UNKNOWN_COLUMN),
        ({"attribute": "gender", "swap_values": SEX_SWAP}, ERR_UNKNOWN_COLUMN),
        ({"text_pair_column": "premise"}, ERR_UNKNOWN_COLUMN),
        ({"attribute": "sex"}, ERR_NO_SWAP_VALUES),
        ({"swap_values": SEX_SWAP}, ERR_SWAP_WITHOUT_ATTRIBUTE),
        ({"mode": "swap"}, ERR_MODE),
        ({"mode": "replace", "share": 0.0}, ERR_SHARE),
        ({"mode": "replace", "share": 1.5}, ERR_SHARE),
        ({"share": 0.5}, ERR_SHARE_ADD),
    ],
)
def test_augment_errors(kwargs, template):
    with pytest.raises(ValueError, match=literal(template)) as err:
        augment_counterfactual(people(), **{"text_column": "text", "pairs": GENDER, **kwargs})
    if template is ERR_UNKNOWN_COLUMN:
        assert "['text', 'sex', 'label', 'id']" in str(err.value)
    if template is ERR_MODE:
        assert "['add', 'replace']" in str(err.value)


def test_augment_errors_on_data():
    with pytest.raises(ValueError, match=literal(ERR_EMPTY_DATASET)):
        augment_counterfactual(people().select([]), "text", GENDER)
    flagged = people().add_column("counterfactual", [False] * 5)
    with pytest.raises(ValueError, match=literal(ERR_FLAG_EXISTS)):
        augment_counterfactual(flagged, "text", GENDER)


def test_pair_ids_keep_rows_and_order_and_pair_each_copy_with_its_original():
    from fairtune.data.pairs import check_pairs

    plain = augment_counterfactual(people(), "text", GENDER, attribute="sex", swap_values=SEX_SWAP)
    paired = augment_counterfactual(
        people(), "text", GENDER, attribute="sex", swap_values=SEX_SWAP, pair_ids=True
    )
    assert paired.column_names == plain.column_names + [PAIR_COLUMN]
    assert paired.remove_columns(PAIR_COLUMN).to_dict() == plain.to_dict()  # same rows, same order
    # Originals carry their position; each copy its original's; the quiet person (row 1) is a pair of one.
    assert list(paired[PAIR_COLUMN]) == [0, 1, 2, 3, 4, 0, 2, 3, 4]
    assert all(paired[i]["id"] == paired[i][PAIR_COLUMN] for i in range(len(paired)))
    assert check_pairs(paired) == (4, 1)


def test_pair_id_errors():
    with pytest.raises(ValueError, match=literal(ERR_PAIRS_REPLACE)):
        augment_counterfactual(people(), "text", GENDER, mode="replace", pair_ids=True)
    taken = people().add_column(PAIR_COLUMN, [0] * 5)
    with pytest.raises(ValueError, match=literal(ERR_FLAG_EXISTS)) as err:
        augment_counterfactual(taken, "text", GENDER, pair_ids=True)
    assert repr(PAIR_COLUMN) in str(err.value)
    assert len(augment_counterfactual(taken, "text", GENDER)) == 9  # the column is only ours with pair_ids


def test_sides_of_the_gender_list_and_of_one_way_entries(tmp_path):
    sides = GENDER.sides
    assert [sides[t] for t in ("he", "him", "his", "man", "mr", "sir", "groom")] == [0] * 7
    assert [sides[t] for t in ("she", "her", "hers", "woman", "mrs", "madam", "bride")] == [1] * 7
    # one-way entries take the side opposite their replacement's
    assert (sides["ms"], sides["ma'am"], sides["mum"], sides["bridegroom"]) == (1, 1, 1, 0)
    assert set(sides) == set(GENDER.mapping)  # every term has a side
    alone = WordPairs([("x", "y")], one_way=[("q", "y"), ("a", "b")])
    assert dict(alone.sides) == {"x": 0, "y": 1, "q": 0, "a": 0, "b": 1}


def test_find_terms_matches_what_counterfactual_swaps():
    texts = ["The man's son met HIS wife.", "Sheila the shepherd", "he'll go; Ms. X and the boys' dad"]
    assert find_terms(texts[0], GENDER) == ["man", "son", "his", "wife"]
    assert find_terms(texts[1], GENDER) == []
    assert find_terms(texts[2], GENDER) == ["he", "ms", "boys", "dad"]
    assert [len(find_terms(t, GENDER)) for t in texts] == [counterfactual(t, GENDER)[1] for t in texts]
