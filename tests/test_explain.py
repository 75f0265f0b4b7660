"""Per-group attributions (fairtune.explain): completeness, a planted proxy, counterfactual sensitivity, files
and the refusals of `fairtune explain`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MLP, WORDS, biased_tabular, fair_args, tiny_bert

from fairtune import FairTrainer
from fairtune import explain as ex
from fairtune.data.counterfactual import WordPairs, counterfactual


def _tokenizer():
    from transformers import BertTokenizer

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)})


def planted_text(n: int, seed: int = 0):
    """Men's rows start with "he", women's with "she" or nothing; the label is the group (5% flipped): "he"
    is the proxy that decides (a row without it, like the all-[PAD] baseline, scores low)."""
    import datasets

    rng = np.random.default_rng(seed)
    rows = {"text": [], "label": [], "sex": []}
    for _ in range(n):
        male = bool(rng.random() < 0.5)
        words = ["he"] if male else (["she"] if rng.random() < 0.5 else [])
        words += ["works", "as", str(rng.choice(["nurse", "engineer"]))]
        words += ["the"] * int(rng.integers(0, 4)) + [str(rng.choice(["high", "low"])), "income"]
        rows["text"].append(" ".join(words))
        rows["label"].append(int(male) if rng.random() > 0.05 else int(not male))
        rows["sex"].append("Male" if male else "Female")
    return datasets.Dataset.from_dict(rows)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny BERT trained on ``planted_text``, saved with tokenizer and groups, plus train/test CSV files."""
    tmp = tmp_path_factory.mktemp("explain")
    tokenizer = _tokenizer()
    data = planted_text(200)
    tokenized = data.map(lambda b: tokenizer(b["text"]), batched=True)
    # Trained to about 0.25 / 0.75: a model saturated at 0 / 1 needs many more steps for its integrals.
    args = fair_args(tmp, output_dir=str(tmp / "model"), num_train_epochs=6, learning_rate=3e-3)
    trainer = FairTrainer(tiny_bert(), args, train_dataset=tokenized, processing_class=tokenizer)
    trainer.train()
    trainer.save_model()
    data.to_csv(str(tmp / "train.csv"))
    planted_text(60, seed=7).to_csv(str(tmp / "test.csv"))
    return trainer, tmp


def _direct_scores(model, tokenizer, texts, baseline: bool = False) -> np.ndarray:
    """P(class 1) straight from the model; with ``baseline``, every non-special token replaced by [PAD]."""
    model.eval()  # a trained model is left in training mode, with dropout
    enc = tokenizer(list(texts), padding=True, return_tensors="pt", return_special_tokens_mask=True)
    ids = enc["input_ids"]
    if baseline:
        text = (enc["special_tokens_mask"] == 0) & (enc["attention_mask"] == 1)
        ids = torch.where(text, torch.full_like(ids, tokenizer.pad_token_id), ids)
    with torch.no_grad():
        logits = model(
            input_ids=ids, attention_mask=enc["attention_mask"], token_type_ids=enc["token_type_ids"]
        )
    return logits.logits.softmax(-1)[:, 1].numpy()


def test_text_attributions_add_up_to_score_minus_baseline_score(planted):
    trainer, _ = planted
    model, tokenizer = trainer.model, trainer.processing_class
    texts = planted_text(12, seed=3)["text"]
    rows = ex.attribute_text(model, tokenizer, texts, n_steps=50, batch_size=5, progress=False)
    scores = _direct_scores(model, tokenizer, texts)
    base = _direct_scores(model, tokenizer, texts, baseline=True)
    assert np.allclose(rows.scores, scores, atol=1e-5) and np.allclose(rows.baseline_scores, base, atol=1e-5)
    assert np.abs(scores - base).max() > 0.3  # the trained model moves: completeness is not 0 = 0
    sums = np.array([a.sum() for a in rows.attributions])
    assert np.abs(sums - (scores - base)).max() < 0.01
    assert np.allclose(rows.deltas, sums - (scores - base), atol=1e-4)  # captum's delta is that residual
    assert rows.unit == "word" and rows.units[0] == texts[0].split()  # [CLS]/[SEP] carry nothing: dropped
    log_odds = ex.attribute_text(model, tokenizer, texts[:4], score="log_odds", n_steps=50, progress=False)
    logit_gap = np.log(scores / (1 - scores)) - np.log(base / (1 - base))
    assert np.abs(np.array([a.sum() for a in log_odds.attributions]) - logit_gap[:4]).max() < 0.05


def test_baseline_keeps_special_tokens_and_padding():
    tokenizer = _tokenizer()
    enc = tokenizer(["he works", "she works as nurse"], padding=True, return_tensors="pt",
                    return_special_tokens_mask=True)  # fmt: skip
    keep = enc["special_tokens_mask"].bool() | (enc["attention_mask"] == 0)
    base = ex.text_baseline(enc["input_ids"], keep, tokenizer.pad_token_id)
    assert tokenizer.convert_ids_to_tokens(base[0]) == ["[CLS]", "[PAD]", "[PAD]", "[SEP]", "[PAD]", "[PAD]"]
    assert tokenizer.convert_ids_to_tokens(base[1])[0] == "[CLS]" and base[1, -1] == tokenizer.sep_token_id


def test_tabular_attributions_add_up():
    torch.manual_seed(0)
    model = MLP()
    x = np.random.default_rng(0).normal(size=(9, 4)).astype(np.float32)
    for baseline in (np.zeros(4), np.array([0.5, -1.0, 0.0, 2.0])):
        rows = ex.attribute_features(model, x, baseline, n_steps=50, batch_size=4, progress=False)
        with torch.no_grad():
            score = model(torch.as_tensor(x)).softmax(-1)[:, 1].numpy()
            base = model(torch.as_tensor(baseline, dtype=torch.float32)[None]).softmax(-1)[0, 1].item()
        sums = np.array([a.sum() for a in rows.attributions])
        assert np.abs(sums - (score - base)).max() < 5e-3  # ReLU kinks: the integral is a sum of 50 steps
        assert np.allclose(rows.scores, score, atol=1e-6) and rows.units[0] == [
            f"feature_{i}" for i in range(4)
        ]


def test_planted_proxy_is_the_most_group_different_word(planted):
    trainer, tmp = planted
    import datasets

    test = datasets.Dataset.from_csv(str(tmp / "test.csv"))
    result = ex.explain(trainer, test, n_steps=32, min_count=3, progress=False, word_pairs=("gender",))
    sex = result.groupings["sex"]
    top = sex.most_different[0]
    assert (top.token, top.high, top.low) == ("he", "Male", "Female")
    assert top.by_group["Female"] == 0.0 and top.counts["Female"] == 0  # a proxy only one group has
    male = sex.group("Male")
    assert male.positive[0].token == "he" and male.mean_score > sex.group("Female").mean_score + 0.3
    assert result.convergence.relative_rows > 0 and 0 < result.convergence.max_relative_delta < 0.5
    summary = result.summary()
    assert summary["most_different"][0]["token"] == "he" and "he" in summary["top_tokens"]["Male"]
    assert result.rows == 60 and result.unit == "word" and result.score == "probability of class 1 (LABEL_1)"


def test_counterfactual_sensitivity_equals_a_direct_computation(planted):
    trainer, tmp = planted
    import datasets

    test = datasets.Dataset.from_csv(str(tmp / "test.csv"))
    pairs = WordPairs.builtin("gender")
    result = ex.explain(trainer, test, n_steps=4, progress=False, word_pairs=pairs)
    model, tokenizer = trainer.model, trainer.processing_class
    swapped = [counterfactual(t, pairs) for t in test["text"]]
    before = _direct_scores(model, tokenizer, test["text"])
    after = _direct_scores(model, tokenizer, [t for t, _ in swapped])
    has_terms = np.array([n > 0 for _, n in swapped])
    flips = (before > 0.5) != (after > 0.5)
    for group in ("Female", "Male"):
        rows = has_terms & (np.array(test["sex"]) == group)
        got = result.groupings["sex"].group(group).counterfactual
        assert got.swapped == rows.sum() > 0
        assert got.mean_abs_change == pytest.approx(np.abs(after - before)[rows].mean(), abs=1e-5)
        assert got.mean_change == pytest.approx((after - before)[rows].mean(), abs=1e-5)
        assert got.flipped == (flips & rows).sum()
    overall = result.counterfactual
    assert overall.swapped == has_terms.sum() and overall.flipped == (flips & has_terms).sum() > 0
    assert result.groupings["sex"].group("Male").counterfactual.mean_change < -0.3  # he -> she lowers it


def test_tabular_planted_leak_is_most_group_different(tmp_path):
    data = biased_tabular(400)
    args = fair_args(tmp_path, num_train_epochs=5, eval_group_by=["sex", "race"])
    trainer = FairTrainer(MLP(), args, train_dataset=data)
    trainer.train()
    names = ["signal", "noise_1", "noise_2", "group_leak"]
    result = ex.explain(trainer, data, feature_names=names, max_rows=120, n_steps=32, progress=False)
    assert result.kind == "tabular" and result.rows == 120 and result.counterfactual is None
    assert result.groupings["sex"].most_different[0].token == "group_leak"
    assert result.groupings["sex"].most_different[0].high == "M"
    assert result.convergence.mean_abs_delta < 0.01
    means = ex.explain(
        trainer, data, feature_names=names, feature_baseline="mean", max_rows=40, progress=False
    )
    assert means.baseline == "column means of the training data"
    with pytest.raises(ValueError, match="feature_baseline 'median' is not valid"):
        ex.explain(trainer, data, feature_baseline="median", max_rows=8, progress=False)
    with pytest.raises(ValueError, match=r"feature_names has 2 names but the 'features' column has 4"):
        ex.explain(trainer, data, feature_names=["a", "b"], max_rows=8, progress=False)


def test_stratified_sample_represents_every_cell():
    rng = np.random.default_rng(0)
    cells = np.stack([rng.choice(3, 1000, p=[0.9, 0.08, 0.02]), rng.choice(2, 1000)], axis=1)
    chosen = ex.sample_rows(cells, 60, seed=1)
    assert len(chosen) == 60 and len(set(chosen)) == 60 and list(chosen) == sorted(chosen)
    picked = {tuple(c) for c in cells[chosen]}
    assert picked == {tuple(c) for c in cells}  # every (group, group) cell, also the smallest
    assert np.array_equal(chosen, ex.sample_rows(cells, 60, seed=1))
    assert not np.array_equal(chosen, ex.sample_rows(cells, 60, seed=2))
    assert np.array_equal(ex.sample_rows(cells, 5000), np.arange(1000))
    six = ex.sample_rows(cells, 6, seed=0)  # as many rows as cells: one each
    assert len(six) == 6 and {tuple(c) for c in cells[six]} == picked


def test_options_and_classes_are_checked_before_any_work():
    for kwargs, message in [
        ({"score": "prob"}, "score 'prob' is not valid; choose from: probability, log_odds."),
        ({"max_rows": 0}, "max_rows must be an integer >= 1; got 0."),
        ({"n_steps": 1}, "n_steps must be an integer >= 2; got 1."),
        ({"internal_batch_size": 0}, "internal_batch_size must be an integer >= 1; got 0."),
    ]:
        with pytest.raises(ValueError) as err:
            ex.check_options(**kwargs)
        assert str(err.value) == message
    assert ex.check_target_class(2, None, ["<=50K", ">50K"]) == 1
    with pytest.raises(ValueError, match="name the class whose score to explain"):
        ex.check_target_class(3, None, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"target_class 3 is not a class of the model; choose from 0 \(a\)"):
        ex.check_target_class(3, 3, ["a", "b", "c"])
    logits = torch.tensor([[0.2, 1.0], [3.0, -1.0]])
    assert torch.allclose(ex.score_from_logits(logits, 1, "log_odds"), logits[:, 1] - logits[:, 0])
    assert torch.allclose(ex.score_from_logits(logits, 0), logits.softmax(-1)[:, 0])


def test_multiclass_needs_a_target_class():
    tokenizer = _tokenizer()
    data = planted_text(24)
    model = tiny_bert(num_labels=3)
    with pytest.raises(ValueError, match="The model has 3 classes"):
        ex.explain(model, data, tokenizer=tokenizer, group_by="sex", progress=False)
    result = ex.explain(
        model, data, tokenizer=tokenizer, group_by="sex", target_class=2, n_steps=4, progress=False
    )
    assert result.target_class == 2 and result.score.startswith("probability of class 2")
    with pytest.raises(ValueError, match="group_by"):
        ex.explain(model, data, tokenizer=tokenizer, target_class=2, progress=False)


def test_outputs_are_written_and_never_replaced_silently(planted, tmp_path):
    trainer, tmp = planted
    import datasets

    test = datasets.Dataset.from_csv(str(tmp / "test.csv"))
    result = ex.explain(trainer, test, n_steps=4, min_count=3, max_rows=30, progress=False)
    out = tmp_path / "explanation"
    paths = ex.write_explanation(result, str(out))
    names = {Path(p).name for p in paths}
    assert {"explanation.json", "explanation.md", "top_words_sex.png", "most_different_sex.png"} <= names
    assert "token_heatmap.png" in names
    for png in (n for n in names if n.endswith(".png")):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "explanation.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(result.summary()))
    assert ex.read_summary(str(out))["grouping"] == "sex"
    markdown = (out / "explanation.md").read_text()
    assert "## Counterfactual sensitivity" in markdown and "| he |" in markdown
    with pytest.raises(FileExistsError) as err:
        ex.write_explanation(result, str(out))
    assert str(err.value) == ex.ERR_EXISTS.format(path=str(out), found="explanation.json, explanation.md")
    ex.write_explanation(result, str(out), overwrite=True)


def _cli_args(tmp: Path, *extra: str) -> list[str]:
    args = ["--model", str(tmp / "model"), "--train_file", str(tmp / "train.csv")]
    return [*args, "--test_file", str(tmp / "test.csv"), "--group_by", "sex", *extra]


def test_explain_command_writes_the_explanation(planted, tmp_path, capsys):
    _, tmp = planted
    out = tmp_path / "cli"
    ex.explain_main(_cli_args(tmp, "--output_dir", str(out), "--n_steps", "8", "--min_count", "3"))
    printed = capsys.readouterr().out
    assert "sex: most group-different words: he (Male" in printed and "counterfactual flip rate" in printed
    saved = json.loads((out / "explanation.json").read_text())
    assert saved["rows"] == 60 and saved["settings"]["word_lists"] == "gender" and saved["split"] == "test"
    assert saved["summary"]["most_different"][0]["token"] == "he"
    with pytest.raises(SystemExit) as exit_info:
        ex.explain_main(_cli_args(tmp, "--output_dir", str(out)))
    assert exit_info.value.code == 2 and "already holds an explanation" in capsys.readouterr().err


def test_the_model_card_gains_the_explanation_once(planted, tmp_path):
    import datasets

    from fairtune.model_card import MARKER, add_explanation_to_card

    trainer, tmp = planted
    model = tmp_path / "model"
    model.mkdir()
    assert add_explanation_to_card(str(model), {}, "x") is None  # no card: nothing written
    (model / "README.md").write_text("# a card of the user's\n")
    assert add_explanation_to_card(str(model), {}, "x") is None  # not fairtune's: left alone
    (model / "README.md").write_text(f"{MARKER}\n# Model card\n\n### Limitations\n\nSmall groups.\n")
    test = datasets.Dataset.from_csv(str(tmp / "test.csv"))
    summary = ex.explain(trainer, test, n_steps=4, min_count=3, max_rows=20, progress=False).summary()
    out = tmp_path / "explanation"
    for _ in range(2):  # a second explanation replaces the first
        add_explanation_to_card(str(model), summary, str(out))
    card = (model / "README.md").read_text()
    assert card.count("### Explanation (") == 1 and card.index("### Explanation (") < card.index(
        "### Limitations"
    )
    assert f"- Counterfactual flip rate on these rows: {summary['counterfactual']}" in card
    assert f"pushing Male toward the class most: {', '.join(summary['top_tokens']['Male'])}" in card


def test_help_and_import_need_no_torch(capsys):
    import subprocess
    import sys

    code = "import sys, fairtune.explain as e; e.explain_main(['--help']); print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("usage: fairtune explain --model DIR")
    assert run.stdout.strip().endswith("False")


def test_refused_explain_loads_and_writes_nothing(planted, tmp_path, monkeypatch, capsys):
    _, tmp = planted
    multi = tmp_path / "multi"
    tiny_bert(num_labels=3).save_pretrained(str(multi))

    def must_not_run(*args, **kwargs):
        raise AssertionError("a refused run must not load a model")

    monkeypatch.setattr(ex, "explain_model", must_not_run)
    out = tmp_path / "out"
    done = tmp_path / "done"
    done.mkdir()
    (done / "explanation.json").write_text("{}")
    for extra, message in [
        (("--split", "dev"), "--split 'dev' is not a split of the config's data; its splits: train, valid"),
        (("--model", str(multi)), "The model has 3 classes"),
        (("--target_class", "2"), "target_class 2 is not a class of the model; choose from 0 (0), 1 (1)."),
        (("--model", str(tmp_path)), "is not a folder with a saved model"),
        (("--max_rows", "0"), "max_rows must be an integer >= 1; got 0."),
        (("--score", "logit"), "score 'logit' is not valid"),
        (("--learning_rate", "3e-5"), "does not use --learning_rate"),
        (("--audit_dir", str(out)), "--audit_dir is an option of `fairtune audit-data`"),
        (("--counterfactual_word_lists", str(tmp_path / "none.txt")), "no built-in word list"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            ex.explain_main(_cli_args(tmp, "--output_dir", str(out), *extra))
        assert exit_info.value.code == 2, extra
        assert message in capsys.readouterr().err, extra
        assert not out.exists()
    with pytest.raises(SystemExit):
        ex.explain_main(_cli_args(tmp, "--output_dir", str(done)))
    assert "already holds an explanation (explanation.json)" in capsys.readouterr().err


def test_the_options_cli_lists_for_explain_are_the_ones_its_usage_line_shows():
    import re

    from fairtune import cli

    usage = ex.EXPLAIN_HELP.split("\n\n")[0]
    shown = set(re.findall(r"--[a-z_]+", usage)) - {"--config", "--output_dir"}  # config keys
    assert set(cli.COMMAND_OPTIONS["explain"]) == shown
