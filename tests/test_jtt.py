"""Just Train Twice: the second stage repeats exactly the first stage's errors, needs no training groups, and
lifts worst-group accuracy over ERM on a planted spurious correlation."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MLP, biased_tabular, fair_args

from fairtune import FairTrainer, GroupVocabulary
from fairtune.mitigation import Mitigations
from fairtune.mitigation.jtt import (
    ERR_MODE,
    ERR_NOT_RUN,
    ERR_UPWEIGHT,
    ERROR_SET_FILE,
    JustTrainTwice,
    just_train_twice,
    upsample,
)
from fairtune.trainer import ERR_TRAIN_GROUPS_NEEDED

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_jtt_spurious", ROOT / "benchmarks" / "jtt_spurious.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_upsample_repeats_error_rows_upweight_times():
    data = biased_tabular(10).add_column("row", list(range(10)))
    errors = np.zeros(10, dtype=bool)
    errors[[2, 7]] = True
    counts = Counter(upsample(data, errors, 4)["row"])
    assert counts == {r: 4 if r in (2, 7) else 1 for r in range(10)}
    assert Counter(upsample(data, errors, 1)["row"]) == dict.fromkeys(range(10), 1)


def test_second_stage_upweights_exactly_the_first_stage_errors_without_training_groups(tmp_path):
    validation = biased_tabular(200, seed=1)
    vocab = GroupVocabulary("sex").fit(validation)
    # No attribute column in the training data: neither stage can read a training row's group.
    train = biased_tabular(300, seed=0).remove_columns(["sex", "race"]).add_column("row", list(range(300)))
    args = fair_args(
        tmp_path,
        reweighting="jtt",
        reweighting_options={"upweight": 5, "first_stage_epochs": 1},
        num_train_epochs=1,
        learning_rate=1e-2,
    )
    made = []

    def make_trainer(train_dataset, stage_args):
        torch.manual_seed(0)
        trainer = FairTrainer(
            MLP(), stage_args, train_dataset=train_dataset, eval_dataset=validation, group_vocab=vocab
        )
        made.append(trainer)
        return trainer

    result = just_train_twice(make_trainer, train, args)
    first, second = made
    assert result.trainer is second
    assert "group:sex" not in first.train_dataset.column_names
    assert (
        first.args.num_train_epochs == 1
        and first.args.eval_strategy == "no"
        and first.args.reweighting is None
    )
    # The error set is what the first model gets wrong on the training rows, recomputed here.
    model = first.model.eval()
    with torch.no_grad():
        predicted = model(torch.tensor(train["features"])).argmax(-1).numpy()
    errors = predicted != np.array(train["labels"])
    assert 0 < errors.sum() < len(errors)
    np.testing.assert_array_equal(result.errors, errors)
    # The second stage trains on each error row 5 times and on every other row once.
    counts = Counter(second.train_dataset["row"])
    assert counts == {r: 5 if errors[r] else 1 for r in range(300)}
    assert second.mitigations.two_stage.error_rows == int(errors.sum())
    saved = json.loads((Path(args.output_dir) / ERROR_SET_FILE).read_text())
    assert saved["error_rows"] == np.flatnonzero(errors).tolist()


def test_reweighting_jtt_alone_refuses_to_train_plain_erm(tmp_path, tabular):
    args = fair_args(tmp_path, reweighting="jtt")
    trainer = FairTrainer(MLP(), args, train_dataset=tabular)
    with pytest.raises(ValueError) as err:
        trainer.train()
    assert str(err.value) == ERR_NOT_RUN.format(rows=len(tabular))


def test_methods_that_need_training_groups_refuse_data_without_them(tmp_path):
    validation = biased_tabular(100, seed=1)
    vocab = GroupVocabulary("sex").fit(validation)
    train = biased_tabular(100).remove_columns(["sex", "race"])
    args = fair_args(tmp_path, reweighting="group_dro")
    with pytest.raises(ValueError) as err:
        FairTrainer(MLP(), args, train_dataset=train, group_vocab=vocab)
    methods = repr(Mitigations.from_args(args).group_dro)
    assert str(err.value) == ERR_TRAIN_GROUPS_NEEDED.format(methods=methods, attributes="sex")


def test_jtt_options_are_checked():
    with pytest.raises(ValueError) as err:
        JustTrainTwice(upweight=0)
    assert str(err.value) == ERR_UPWEIGHT.format(value=0)
    with pytest.raises(ValueError, match="first_stage_epochs"):
        JustTrainTwice(first_stage_epochs=0)
    with pytest.raises(ValueError, match="first_stage_steps"):
        JustTrainTwice(first_stage_steps=0)
    with pytest.raises(ValueError) as err:
        Mitigations.from_args(fair_args(Path("/tmp/unused"), reweighting="jtt", reweighting_mode="sampler"))
    assert str(err.value) == ERR_MODE.format(mode="sampler")
    with pytest.raises(ValueError, match="are not options of JustTrainTwice"):
        Mitigations.from_args(
            fair_args(Path("/tmp/unused"), reweighting="jtt", reweighting_options={"lam": 3})
        )


@pytest.mark.slow  # about a minute alone; several under a loaded CPU
def test_jtt_beats_erm_on_worst_group_accuracy_of_a_planted_spurious_correlation(tmp_path, one_thread):
    # A clean spurious feature agrees with the label in 95% of training rows; the test cells are balanced.
    bench = _bench()
    settings = dict(seed=0, train_rows=1000, epochs=6, upweight=20, first_stage_epochs=2)
    erm = bench.run_method("erm", output_dir=str(tmp_path / "erm"), **settings)
    jtt = bench.run_method("jtt", output_dir=str(tmp_path / "jtt"), **settings)
    assert erm["worst_group_accuracy"] < 0.4  # ERM follows the shortcut
    assert jtt["worst_group_accuracy"] > erm["worst_group_accuracy"] + 0.2
    # Most of the first stage's errors are minority rows: that is what JTT relies on.
    assert jtt["errors_in_minority"] > 0.5 * jtt["minority_rows"]


def test_config_run_with_reweighting_jtt_trains_both_stages(tmp_path, tokenizer):
    from conftest import text_dataset, tiny_bert

    from fairtune import pipeline
    from fairtune.config import DataArguments, FairTrainingArguments, ModelArguments, parse_config

    model_dir = tmp_path / "tiny"
    tiny_bert(vocab_size=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    train, valid = tmp_path / "train.csv", tmp_path / "valid.csv"
    text_dataset(64, seed=0).to_csv(str(train), index=False)
    text_dataset(32, seed=1).to_csv(str(valid), index=False)
    out = tmp_path / "out"
    # The shipped method config parses, layered on the quickstart.
    _, _, shipped = parse_config(
        [
            "--config",
            str(ROOT / "configs/quickstart.yaml"),
            "--config",
            str(ROOT / "configs/methods/jtt.yaml"),
        ]
    )
    assert shipped.reweighting == "jtt" and shipped.reweighting_options == {
        "upweight": 6,
        "first_stage_epochs": 1,
    }
    args = FairTrainingArguments(
        output_dir=str(out),
        group_by="sex",
        reweighting="jtt",
        reweighting_options={"upweight": 3, "first_stage_steps": 2},
        max_steps=2,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    data = DataArguments(dataset_name=None, train_file=str(train), validation_file=str(valid))
    pipeline.run(ModelArguments(model_name_or_path=str(model_dir)), data, args)
    saved = json.loads((out / ERROR_SET_FILE).read_text())
    assert saved["train_rows"] == 64 and saved["first_stage"] == {"epochs": 1.0, "steps": 2}
    report = json.loads((out / "fairness_report.json").read_text())
    errors = len(saved["error_rows"])
    assert (
        report["run"]["mitigation"]
        == f"JustTrainTwice(upweight=3, first_stage_steps=2, error_set={errors}/64)"
    )
    assert (out / "model.safetensors").is_file()
