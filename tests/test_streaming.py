"""Streaming data (issue 11.3): iterable datasets train and evaluate like in-memory ones; what a stream cannot
do is refused by name; a row's error names the row; lean evaluation keeps no predictions."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fairtune import pipeline
from fairtune.config import DataArguments, FairTrainingArguments, ModelArguments
from fairtune.data import streaming as st
from fairtune.groups import GroupVocabulary

ROOT = Path(__file__).resolve().parent.parent


def _jsonl(path, dataset):
    with open(path, "w") as f:
        for row in dataset:
            f.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture
def text_files(tmp_path, tokenizer):
    from conftest import text_dataset, tiny_bert

    model_dir = tmp_path / "tiny"
    tiny_bert(vocab_size=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    train = _jsonl(tmp_path / "train.jsonl", text_dataset(64, seed=0))
    valid = _jsonl(tmp_path / "valid.jsonl", text_dataset(48, seed=1))
    return str(model_dir), train, valid


def _args(out, **kw):
    options = dict(
        output_dir=str(out),
        group_by="sex",
        max_steps=8,
        per_device_train_batch_size=16,
        learning_rate=5e-3,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        bootstrap_samples=0,
        min_group_size=0,  # the tiny evaluation groups still get headline gaps to compare
        save_strategy="no",
        seed=0,
        # The stream is read in file order; the in-memory run reads it in the same order to compare.
        train_sampling_strategy="sequential",
    )
    return FairTrainingArguments(**(options | kw))


def test_streamed_run_matches_the_in_memory_run(tmp_path, text_files):
    """Same files, same order: the streamed run (counting pass, kamiran_calders fitted on its counts) gives
    the in-memory run's validation metrics, and writes the counts it found."""
    model_dir, train, valid = text_files
    results = {}
    for streaming in (False, True):
        out = tmp_path / f"out_{streaming}"
        data = DataArguments(train_file=train, validation_file=valid, streaming=streaming)
        args = _args(out, reweighting="kamiran_calders")
        results[streaming] = pipeline.run(ModelArguments(model_name_or_path=model_dir), data, args)
    memory, streamed = results[False]["validation"], results[True]["validation"]
    keys = [k for k in memory if k.startswith("eval_sex/") or k == "eval_loss"]
    assert len(keys) > 10 and "eval_sex/demographic_parity_difference" in keys
    for key in keys:
        assert streamed[key] == pytest.approx(memory[key], abs=1e-5), key
    counts = json.loads((tmp_path / "out_True" / st.STREAM_COUNTS_FILE).read_text())
    rows = [json.loads(line) for line in open(train)]
    assert counts["rows"] == 64
    assert counts["groups"]["sex"] == {s: sum(r["sex"] == s for r in rows) for s in ("Female", "Male")}
    report = json.loads((tmp_path / "out_True" / "fairness_report.json").read_text())
    assert report["run"]["train_rows"] == "streamed (64 rows counted)"


def test_declared_vocabulary_and_counts_file_skip_the_counting_pass(tmp_path, text_files, monkeypatch):
    model_dir, train, valid = text_files

    def no_pass(*a, **k):
        raise AssertionError("counting pass ran")

    monkeypatch.setattr(pipeline, "count_stream", no_pass)
    data = DataArguments(
        train_file=train,
        validation_file=valid,
        streaming=True,
        group_values={"sex": ["Male", "Female"]},
        class_names=["0", "1"],
        max_train_samples=20,
    )
    model = ModelArguments(model_name_or_path=model_dir)
    trainer, streams = pipeline.build(model, data, _args(tmp_path / "o"))
    assert trainer.group_vocab.names("sex") == ["Female", "Male"]  # sorted, as in memory
    assert sum(1 for _ in streams["train"]) == 20  # max_train_samples: take(n)
    # A counts file recorded by an earlier pass gives reweighting its counts.
    counts = st.StreamCounts(
        rows=4,
        groups={"sex": {"Female": 3, "Male": 1}},
        labels={"0": 2, "1": 2},
        cells={"Female": {"0": 2, "1": 1}, "Male": {"1": 1}},
        train_grouping="sex",
    )
    path = counts.save(str(tmp_path / "counts"))
    data = DataArguments(train_file=train, validation_file=valid, streaming=True, stream_counts=path)
    args = _args(tmp_path / "o2", reweighting="balanced_group_label")
    trainer, _ = pipeline.build(model, data, args)
    weights = trainer.mitigations.loss_reweighters[0].weights
    # 1 / n_(g,y) = (1/2, 1, 1), scaled to mean 1 over the 4 counted rows (x 4/3); the empty cell gets 0.
    assert torch.allclose(weights, torch.tensor([[2 / 3, 4 / 3], [0.0, 4 / 3]]))


def test_declared_shares_fit_the_reweighter_as_counts_do(tabular):
    from fairtune.mitigation.reweighting import KamiranCalders

    vocab = GroupVocabulary("sex").fit(tabular)
    groups = torch.tensor(vocab.groupings["sex"].encode(tabular["sex"]))
    labels = torch.tensor(tabular["labels"])
    expected = KamiranCalders().fit(groups, labels, 2, 2).weights
    n = len(labels)
    shares = {
        g: {str(y): float(((groups == i) & (labels == y)).sum()) / n for y in (0, 1)}
        for i, g in enumerate(vocab.names("sex"))
    }
    table = st.cell_counts(vocab, None, 2, group_shares=shares, methods=["kamiran_calders"])
    assert torch.allclose(KamiranCalders().fit_counts(table).weights, expected)
    with pytest.raises(ValueError) as err:
        st.cell_counts(vocab, None, 2, group_shares={"F": 0.4, "M": 0.6}, methods=["kamiran_calders"])
    assert str(err.value) == st.ERR_SHARES_FLAT.format(method="kamiran_calders")
    with pytest.raises(ValueError, match="names group 'X'"):
        st.cell_counts(vocab, None, 2, group_shares={"X": {"0": 1.0}})


def test_declared_intersections_are_the_product_sorted():
    vocab = st.declared_vocabulary("sex", ["sex+race"], {"sex": ["M", "F"], "race": ["White", "Black"]})
    assert vocab.names("sex+race") == ["F|Black", "F|White", "M|Black", "M|White"]
    assert st.declared_vocabulary("sex", ["race"], {"sex": ["M", "F"]}) is None  # race undetermined
    with pytest.raises(ValueError, match="neither an attribute nor a grouping"):
        st.declared_vocabulary("sex", None, {"age": [1, 2]})
    with pytest.raises(ValueError, match="only 1 group"):
        st.declared_vocabulary("sex", None, {"sex": ["F"]})


def _stream(rows):
    import datasets

    return datasets.Dataset.from_list(rows).to_iterable_dataset()


def test_a_value_the_vocabulary_lacks_or_a_missing_one_stops_the_stream_naming_the_row():
    rows = [{"label": i % 2, "sex": "F" if i % 2 else "M"} for i in range(6)]
    rows[4]["sex"] = "X"
    vocab = st.declared_vocabulary("sex", None, {"sex": ["F", "M"]})
    with pytest.raises(ValueError) as err:
        list(st.encode_stream_groups(_stream(rows), vocab, "training"))
    assert str(err.value) == st.ERR_STREAM_UNKNOWN_GROUP.format(
        row=4, split="training", value="X", grouping="sex", known=["F", "M"]
    )
    rows[4]["sex"] = None
    with pytest.raises(ValueError) as err:
        list(st.encode_stream_groups(_stream(rows), vocab, "training"))
    assert "Row 4 of the training stream" in str(err.value) and "'sex'" in str(err.value)
    with pytest.raises(ValueError, match="Row 4 of the train stream has a missing"):
        st.count_stream(_stream(rows), ["sex"], split="train")
    rows[4]["sex"], rows[2]["label"] = "F", 7
    with pytest.raises(ValueError, match="Row 2 of the validation stream has label 7"):
        list(st.encode_stream_labels(_stream(rows), None, 2, "validation"))
    # A counting pass that meets a group the declaration lacks refuses before training.
    rows[2]["label"], rows[4]["sex"] = 0, "X"
    counts = st.count_stream(_stream(rows), ["sex"])
    assert counts.groups["sex"] == {"F": 3, "M": 2, "X": 1} and counts.cells["X"] == {"0": 1}
    with pytest.raises(ValueError, match="holds group 'X'"):
        st.check_counted_groups(vocab, counts)


def test_vectorised_encoding_equals_the_row_by_row_encoding_over_several_batches():
    """Groups of string, int, float and bool columns (and their intersection) and string labels encode as
    the in-memory vocabulary does; a bad row in a later Arrow batch is named by its row number."""
    rng = np.random.default_rng(0)
    n = 2_500  # three of datasets' 1,000-row map batches
    rows = [
        {
            "label": ["no", "yes"][int(rng.integers(2))],
            "sex": ["F", "M"][int(rng.integers(2))],
            "age": int(rng.integers(3)),
            "score": [0.5, 1.0][int(rng.integers(2))],
            "flag": bool(rng.integers(2)),
        }
        for _ in range(n)
    ]
    vocab = GroupVocabulary("sex+age", ["score", "flag"])
    vocab.fit(datasets_from(rows))
    stream = st.encode_stream_labels(_stream(rows), ["no", "yes"], 2, "validation")
    encoded = list(st.encode_stream_groups(stream, vocab, "validation"))
    expected = vocab.encode(datasets_from(rows), split="validation")
    for column in ("group:sex+age", "group:score", "group:flag"):
        assert [r[column] for r in encoded] == expected[column]
    assert vocab.names("score") == ["0.5", "1.0"] and vocab.names("flag") == ["False", "True"]
    assert [r["label"] for r in encoded] == [["no", "yes"].index(r["label"]) for r in rows]
    rows[1_733]["age"] = 7
    with pytest.raises(
        ValueError, match=f"Row 1733 of the training stream has group '{rows[1_733]['sex']}\\|7'"
    ):
        list(st.encode_stream_groups(_stream(rows), vocab, "training"))
    rows[1_733]["age"], rows[2_100]["label"] = 1, "maybe"
    with pytest.raises(ValueError, match="Row 2100 of the validation stream has label 'maybe'"):
        list(st.encode_stream_labels(_stream(rows), ["no", "yes"], 2, "validation"))
    rows[2_100]["label"], rows[2_400]["score"] = "no", float("nan")
    with pytest.raises(
        ValueError, match="Row 2400 of the training stream has a missing or NaN value in column 'score'"
    ):
        list(st.encode_stream_groups(_stream(rows), vocab, "training"))


def datasets_from(rows):
    import datasets

    return datasets.Dataset.from_list(rows)


def test_what_a_stream_cannot_do_is_refused_by_name_before_anything_is_written(tmp_path, text_files):
    model_dir, train, valid = text_files
    cases = [
        (dict(), dict(max_steps=-1), "set max_steps > 0"),
        (dict(oversample_by="sex"), {}, "oversample_by='sex' is not supported with streaming"),
        (dict(counterfactual_augmentation="add"), {}, "counterfactual_augmentation='add' is not supported"),
        (
            dict(),
            dict(reweighting="balanced_group", reweighting_mode="sampler"),
            "reweighting_mode='sampler' is not supported",
        ),
        (dict(), dict(post_processing="demographic_parity"), "post_processing='demographic_parity' is not"),
        (
            dict(),
            dict(batch_sampling="group_stratified"),
            "batch_sampling='group_stratified' is not supported",
        ),
        (dict(), dict(missing_group="ignore"), "missing_group='ignore' is not supported"),
        (dict(), dict(reweighting="jtt"), "reweighting='jtt' is not supported"),
        (dict(validation_file=None), {}, "has no 'validation' split"),
        (dict(group_shares={"Male": 1.0}), {}, "no count-based reweighting"),
        (dict(streaming=False, group_values={"sex": ["F", "M"]}), {}, "group_values is set, but streaming"),
        (dict(), dict(task="causal_lm"), "task='causal_lm' is not supported with streaming"),
    ]
    for data_kw, train_kw, message in cases:
        out = tmp_path / "never"
        data = DataArguments(**(dict(train_file=train, validation_file=valid, streaming=True) | data_kw))
        with pytest.raises(ValueError) as err:
            pipeline.build(ModelArguments(model_name_or_path=model_dir), data, _args(out, **train_kw))
        assert message in str(err.value)
        assert not out.exists()


def test_hub_datasets_are_loaded_with_streaming(monkeypatch):
    import datasets

    calls = []

    def fake_load(name, config=None, **kwargs):
        calls.append((name, config, kwargs))
        rows = [{"sentence": "a", "y": i % 2, "sex": "FM"[i % 2]} for i in range(4)]
        return datasets.IterableDatasetDict({s: _stream(rows) for s in ("train", "validation")})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    args = DataArguments(dataset_name="someone/data", dataset_config_name="c", label_column="y")
    args.streaming = True
    raw, sources = st.load_streaming_datasets(args, ["sex"])
    assert calls == [("someone/data", "c", {"streaming": True})]
    assert sources["train"] == "someone/data" and "label" in raw["train"].column_names


def _record(trainer) -> list:
    """Record what prediction_step hands Trainer's evaluation loop (what the loop would keep)."""
    step, seen = trainer.prediction_step, []

    def recording(*args, **kwargs):
        seen.append(step(*args, **kwargs))
        return seen[-1]

    trainer.prediction_step = recording
    return seen


def test_lean_evaluation_keeps_no_predictions_and_gives_the_same_metrics(tmp_path, tabular):
    from conftest import MLP, biased_tabular, fair_args

    from fairtune import FairTrainer

    metrics, returned = {}, {}
    for lean in (False, True):
        torch.manual_seed(0)
        args = fair_args(tmp_path, lean_evaluation=lean, max_steps=5, bootstrap_samples=20)
        trainer = FairTrainer(MLP(), args, train_dataset=tabular, eval_dataset=biased_tabular(150, seed=3))
        trainer.train()
        returned[lean] = _record(trainer)
        metrics[lean] = trainer.evaluate()
    assert all(out == (None, None, None) for out in returned[True])
    assert all(out[0] is not None and out[2] is not None for out in returned[False])
    for key, value in metrics[False].items():
        if "runtime" not in key and "per_second" not in key:
            assert metrics[True][key] == pytest.approx(value, rel=1e-12), key
    with pytest.raises(ValueError, match="compute_metrics needs them"):
        FairTrainer(
            MLP(),
            fair_args(tmp_path, lean_evaluation=True),
            train_dataset=tabular,
            compute_metrics=lambda p: {},
        )


def test_streamed_evaluation_of_a_trained_model_equals_in_memory(tmp_path, tabular):
    """Trainer on an IterableDataset (vocabulary declared): lean evaluation of a stream, same numbers."""
    from conftest import MLP, biased_tabular, fair_args

    from fairtune import FairTrainer

    valid = biased_tabular(150, seed=3)
    vocab = st.declared_vocabulary("sex", ["race"], {"sex": ["F", "M"], "race": ["Black", "White"]})
    args = fair_args(
        tmp_path, max_steps=6, num_labels=2, eval_group_by=["race"], penalty="demographic_parity"
    )
    trainer = FairTrainer(MLP(), args, train_dataset=tabular.to_iterable_dataset(), group_vocab=vocab)
    trainer.train()
    streamed = trainer.evaluate(valid.to_iterable_dataset())
    memory = trainer.evaluate(valid)
    for key, value in memory.items():
        if "runtime" not in key and "per_second" not in key:
            assert streamed[key] == pytest.approx(value, rel=1e-9), key
    assert np.isfinite(streamed["eval_race/demographic_parity_difference"])
    with pytest.raises(ValueError, match="cannot fit the group vocabulary"):
        FairTrainer(MLP(), args, train_dataset=tabular.to_iterable_dataset())
    args = fair_args(tmp_path, max_steps=6, num_labels=2, reweighting="kamiran_calders")
    with pytest.raises(ValueError, match="call its fit_counts"):
        FairTrainer(MLP(), args, train_dataset=tabular.to_iterable_dataset(), group_vocab=vocab)
    args = fair_args(
        tmp_path, max_steps=6, num_labels=2, reweighting="balanced_group", reweighting_mode="sampler"
    )
    with pytest.raises(ValueError, match="needs the training rows by index"):
        FairTrainer(MLP(), args, train_dataset=tabular.to_iterable_dataset(), group_vocab=vocab)


def _bench():
    path = ROOT / "benchmarks" / "streaming_eval.py"
    spec = importlib.util.spec_from_file_location("bench_streaming_eval", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_streaming_benchmark_core_runs_on_a_tiny_n(tmp_path):
    bench = _bench()
    chunked = bench.groupstats_chunked(5_000, chunk=1_000)
    whole = bench.groupstats_in_memory(5_000, chunk=1_000)  # same chunks: the same rows
    assert chunked["accuracy"] == pytest.approx(whole["accuracy"]) and chunked["rows"] == 5_000
    assert chunked["dp_difference"] == pytest.approx(whole["dp_difference"])
    streamed = bench.trainer_eval(2_000, streamed=True, out=str(tmp_path / "a"))
    memory = bench.trainer_eval(2_000, streamed=False, out=str(tmp_path / "b"))
    assert streamed["rows"] == memory["rows"] == 2_000
    assert streamed["accuracy"] == pytest.approx(memory["accuracy"])
    assert streamed["dp_difference"] == pytest.approx(memory["dp_difference"])
