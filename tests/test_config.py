import subprocess
import sys

import pytest
import yaml

from fairtune.config import (
    ERR_BAD_VALUE,
    ERR_CHOICE,
    ERR_UNKNOWN_FLAGS,
    ERR_UNKNOWN_KEYS,
    DataArguments,
    FairTrainingArguments,
    metric_greater_is_better,
    parse_config,
)
from fairtune.config_files import (
    ERR_CONFIG_DUPLICATE,
    ERR_CONFIG_NOT_MAPPING,
    ERR_DATA_FILE_MISSING,
    ConfigError,
)


def _yaml(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_with_flag_overrides(tmp_path):
    cfg = _yaml(
        tmp_path,
        "output_dir: o\ngroup_by: sex\neval_group_by: [sex, race, sex+race]\n"
        "learning_rate: 3e-5\nmax_train_samples: 100\nuse_lora: true\nreport_to: none\n",
    )
    model, data, train = parse_config(
        ["--config", cfg, "--learning_rate", "1e-4", "--max_train_samples", "7"]
    )
    assert isinstance(train, FairTrainingArguments)
    assert train.learning_rate == 1e-4 and data.max_train_samples == 7
    assert train.eval_group_by == ["sex", "race", "sex+race"] and model.use_lora is True
    _, _, train = parse_config(["--config", cfg])
    assert train.learning_rate == 3e-5  # YAML's "3e-5" string converted like the flag would be


def test_unknown_keys_are_named(tmp_path):
    cfg = _yaml(tmp_path, "output_dir: o\ngroup_by: sex\nlearning_rat: 0.1\nbogus: 1\n")
    with pytest.raises(ValueError) as err:
        parse_config(["--config", cfg])
    assert str(err.value) == ERR_UNKNOWN_KEYS.format(source=cfg, keys="bogus, learning_rat")
    ok = _yaml(tmp_path, "output_dir: o\ngroup_by: sex\n")
    with pytest.raises(ValueError) as err:
        parse_config(["--config", ok, "--learnin_rate", "1", "--bogus=2"])
    assert str(err.value) == ERR_UNKNOWN_FLAGS.format(flags="--learnin_rate, --bogus")


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(["--config", str(tmp_path / "missing.yaml")])
    listing = _yaml(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError) as err:
        parse_config(["--config", listing])
    assert str(err.value) == ERR_CONFIG_NOT_MAPPING.format(path=listing, kind="list")
    with pytest.raises(ValueError, match="confidence_level"):
        parse_config(["--output_dir", "o", "--group_by", "sex", "--confidence_level", "1.5"])


def test_cli_reports_config_errors_and_help_lists_every_field(tmp_path):
    cfg = _yaml(tmp_path, "output_dir: o\ngroup_by: sex\nbogus: 1\n")
    run = subprocess.run(
        [sys.executable, "scripts/train.py", "--config", cfg], capture_output=True, text=True
    )
    assert run.returncode != 0 and "Unknown config key(s)" in run.stderr and "bogus" in run.stderr
    assert not (tmp_path / "o").exists()
    helptext = subprocess.run(
        [sys.executable, "scripts/train.py", "--help"], capture_output=True, text=True
    ).stdout
    for key in (
        "--group_by",
        "--eval_group_by",
        "--model_name_or_path",
        "--max_train_samples",
        "--learning_rate",
        "--bootstrap_samples",
        "--config",
        "--use_lora",
    ):
        assert key in helptext
    assert "intersection" in helptext  # fields carry their help text
    # Closed choices are listed; open ones (users register their own methods) list the built-ins.
    for choices in (
        "{max_gap,mean_abs_dev,l2_dev}",
        "{weights,sampler}",
        "{hidden,logits}",
        "{demographic_parity,equal_opportunity,equalized_odds}",
        "{add,replace}",
    ):
        assert choices in helptext
    assert "--gate_max" not in helptext and "--gate_min" not in helptext  # evaluate's --max / --min


def test_config_files_layer_and_every_method_config_parses(tmp_path):
    from pathlib import Path

    base = Path(__file__).resolve().parent.parent / "configs"
    method = tmp_path / "m.yaml"
    method.write_text("penalty: equalized_odds\npenalty_weight: 0.25\noutput_dir: later\n")
    _, _, train = parse_config(["--config", str(base / "quickstart.yaml"), "--config", str(method)])
    assert train.penalty == "equalized_odds" and train.penalty_weight == 0.25
    assert train.output_dir == "later" and train.group_by == "sex"  # the later file wins, the rest stays
    _, _, train = parse_config(
        ["--config", str(base / "quickstart.yaml"), "--config", str(method), "--penalty_weight", "2"]
    )
    assert train.penalty_weight == 2.0  # flags override every file
    bad = tmp_path / "bad.yaml"
    bad.write_text("penalti: mindiff\n")
    with pytest.raises(ValueError, match=f"Unknown config key\\(s\\) in {bad}: penalti"):
        parse_config(["--config", str(base / "quickstart.yaml"), "--config", str(bad)])
    methods = sorted((base / "methods").glob("*.yaml"))
    assert len(methods) >= 13
    chosen = set()
    for path in methods:
        _, _, train = parse_config(["--config", str(base / "quickstart.yaml"), "--config", str(path)])
        assert train.output_dir == f"outputs/methods/{path.stem}"
        chosen.add(train.penalty or train.reweighting or train.adversary or train.post_processing)
    assert {"demographic_parity", "mindiff", "group_dro", "kamiran_calders", "equalized_odds"} <= chosen


def test_broken_yaml_is_one_paragraph_naming_file_line_and_column(tmp_path):
    # Defect 4: a YAML syntax error used to surface as PyYAML's 48-line traceback.
    broken = _yaml(tmp_path, "output_dir: o\ngroup_by: sex\n  eval_group_by: [sex\n")
    with pytest.raises(ConfigError) as err:
        parse_config(["--config", broken])
    message = str(err.value)
    assert message.startswith(f"Config file {broken!r} is not valid YAML: mapping values are not allowed")
    assert "at line 3, column 16" in message and "\n" not in message
    unclosed = _yaml(tmp_path, "output_dir: o\neval_group_by: [sex, race\n")
    with pytest.raises(ConfigError, match="line 3, column 1 \\(while parsing a flow sequence that starts"):
        parse_config(["--config", unclosed])
    # PyYAML keeps the last of two equal keys silently; a config that says two things is refused.
    twice = _yaml(tmp_path, "output_dir: o\nlearning_rate: 1e-4\ngroup_by: sex\nlearning_rate: 1e-5\n")
    with pytest.raises(ConfigError) as err:
        parse_config(["--config", twice])
    assert str(err.value) == ERR_CONFIG_DUPLICATE.format(path=twice, key="learning_rate", first=2, second=4)


def test_empty_yaml_sets_no_keys(tmp_path):
    # An empty layer (or one holding only comments) is valid: it changes nothing.
    for text in ("", "# nothing yet\n"):
        empty = _yaml(tmp_path, text)
        _, _, train = parse_config(["--config", empty, "--output_dir", "o", "--group_by", "sex"])
        assert train.group_by == "sex" and train.penalty_weight == 1.0


def test_abbreviated_flags_are_refused(tmp_path):
    # Defect 5: argparse took --learning_rat for --learning_rate and --conf for --config.
    ok = _yaml(tmp_path, "output_dir: o\ngroup_by: sex\n")
    with pytest.raises(ConfigError) as err:
        parse_config(["--config", ok, "--learning_rat", "3e-5"])
    assert str(err.value) == ERR_UNKNOWN_FLAGS.format(flags="--learning_rat")
    with pytest.raises(ConfigError) as err:
        parse_config(["--conf", ok, "--output_dir", "o"])
    assert str(err.value) == ERR_UNKNOWN_FLAGS.format(flags="--conf")
    _, _, train = parse_config(["--config", ok, "--learning-rate", "3e-5"])  # HF's dashed spelling stays
    assert train.learning_rate == 3e-5


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("penalty_weight", "heavy", "a float (a number such as 0.5 or 3e-5)"),
        ("max_train_samples", "5.5", "an int (a whole number)"),
        ("use_lora", "maybe", "a bool (true or false)"),
        ("penalty_spread", "maxgap", "one of: max_gap, mean_abs_dev, l2_dev"),
        ("reweighting_mode", "sample", "one of: weights, sampler"),
        ("adversary_input", "hiden", "one of: hidden, logits"),
        ("post_processing", "dp", "one of: demographic_parity, equal_opportunity, equalized_odds"),
        ("counterfactual_augmentation", "append", "one of: add, replace"),
    ],
)
def test_wrong_value_names_key_value_source_and_type(tmp_path, key, text, expected):
    # Defect 6: `penalty_weight: heavy` failed with "could not convert string to float: 'heavy'".
    cfg = _yaml(tmp_path, f"output_dir: o\ngroup_by: sex\n{key}: {text}\n")
    with pytest.raises(ConfigError) as err:
        parse_config(["--config", cfg])
    value = yaml.safe_load(text)  # the file's value as YAML types it (5.5 is a float there)
    assert str(err.value) == ERR_BAD_VALUE.format(key=key, source=cfg, value=value, expected=expected)
    ok = _yaml(tmp_path, "output_dir: o\ngroup_by: sex\n")
    with pytest.raises(ConfigError) as err:
        parse_config(["--config", ok, f"--{key}", text])
    assert str(err.value) == ERR_BAD_VALUE.format(
        key=key, source="the command line", value=text, expected=expected
    )


def test_yaml_values_are_typed_like_flags(tmp_path):
    cases = {
        "max_steps: true": ERR_BAD_VALUE.format(
            key="max_steps", source="{cfg}", value=True, expected="an int (a whole number)"
        ),
        "penalty_weight:": ERR_BAD_VALUE.format(
            key="penalty_weight",
            source="{cfg}",
            value=None,
            expected="a float (a number such as 0.5 or 3e-5)",
        ),
        "group_by: [sex, race]": ERR_BAD_VALUE.format(
            key="group_by", source="{cfg}", value=["sex", "race"], expected="a str (one value, not a list)"
        ),
    }
    for line, message in cases.items():
        cfg = _yaml(tmp_path, f"output_dir: o\n{line}\n")
        with pytest.raises(ConfigError) as err:
            parse_config(["--config", cfg])
        assert str(err.value) == message.format(cfg=cfg)
    # A single value for a list key is a one-item list, as the flag gives it (it was the string "sex").
    cfg = _yaml(tmp_path, "output_dir: o\ngroup_by: sex\neval_group_by: sex\nlr_scheduler_kwargs: {a: 1}\n")
    _, _, train = parse_config(["--config", cfg])
    assert train.eval_group_by == ["sex"] and train.lr_scheduler_kwargs == {"a": 1}


def test_choice_sets_match_the_modules_that_use_them():
    import typing

    from fairtune.data import counterfactual
    from fairtune.mitigation import adversary, penalties, postprocess, reweighting

    hints = typing.get_type_hints(FairTrainingArguments) | typing.get_type_hints(DataArguments)

    def choices(key):
        return tuple(a for a in typing.get_args(hints[key]) if a is not type(None))

    def literal(key):
        (options,) = choices(key) if len(choices(key)) == 1 else (hints[key],)
        return typing.get_args(options)

    assert literal("penalty_spread") == penalties.SPREADS
    assert literal("reweighting_mode") == reweighting.MODES
    assert literal("adversary_input") == adversary.INPUTS
    assert literal("post_processing") == postprocess.OBJECTIVES
    assert literal("counterfactual_augmentation") == counterfactual.MODES


def test_arguments_build_no_mitigation_and_have_no_gate_keys(tmp_path):
    # Mitigations are built in one place before the model loads, not as a side effect of the arguments.
    args = FairTrainingArguments(output_dir=str(tmp_path), group_by="sex", penalty="registered_later")
    assert args.penalty == "registered_later"
    assert not hasattr(args, "gate_max") and not hasattr(args, "gate_min")
    with pytest.raises(ConfigError) as err:
        parse_config(["--output_dir", "o", "--gate_max", "demographic_parity_difference=0.1"])
    assert str(err.value) == ERR_UNKNOWN_FLAGS.format(flags="--gate_max")


@pytest.mark.parametrize(
    "metric, greater",
    [
        ("loss", False),
        ("eval_loss", False),
        ("sex/demographic_parity_difference", False),
        ("sex/demographic_parity_difference_ci_high", False),
        ("eval_sex/demographic_parity_difference_ci_low", False),
        ("sex+race/equalized_odds_difference_mean_ci_high", False),
        ("race/tpr_gap_rms_ci_high", False),
        ("sex/overall/ece", False),
        ("sex/Female/fpr", False),
        ("sex/demographic_parity_ratio", True),
        ("sex/demographic_parity_ratio_ci_low", True),
        ("sex/worst_group_accuracy", True),
        ("eval_race/worst_group_accuracy_ci_low", True),
        ("eval_sex/worst_group_accuracy_ci_high", True),
        ("sex/overall/accuracy", True),
    ],
)
def test_metric_direction_ignores_prefix_grouping_and_interval_suffix(tmp_path, metric, greater):
    # Defect 9: a gap's `_ci_high` took greater_is_better=True and kept the worst checkpoint.
    assert metric_greater_is_better(metric) is greater
    args = FairTrainingArguments(output_dir=str(tmp_path), group_by="sex", metric_for_best_model=metric)
    assert args.greater_is_better is greater


def test_dataset_name_has_no_default():
    # Defect 7: local files were labelled 'adult' because dataset_name defaulted to it.
    assert DataArguments().dataset_name is None
    _, data, _ = parse_config(["--output_dir", "o", "--group_by", "sex"])
    assert data.dataset_name is None


def test_missing_data_file_names_key_and_source(tmp_path):
    present = tmp_path / "train.csv"
    present.write_text("text,label\n")
    cfg = _yaml(tmp_path, "output_dir: o\ngroup_by: sex\ntrain_file: nowhere.csv\n")
    with pytest.raises(ConfigError) as err:
        parse_config(["--config", cfg])
    assert str(err.value) == ERR_DATA_FILE_MISSING.format(key="train_file", path="nowhere.csv", source=cfg)
    with pytest.raises(ConfigError) as err:
        parse_config(["--config", cfg, "--train_file", str(present), "--test-file", "gone.csv"])
    assert str(err.value) == ERR_DATA_FILE_MISSING.format(
        key="test_file", path="gone.csv", source="the command line"
    )
    _, data, _ = parse_config(["--config", cfg, f"--train_file={present}"])  # the flag wins over the file
    assert data.train_file == str(present)


def test_choices_are_checked_for_arguments_built_in_python(tmp_path):
    # The parser refuses a wrong choice; a dataclass built in code must not take it silently either.
    with pytest.raises(ValueError) as err:
        FairTrainingArguments(output_dir=str(tmp_path), group_by="sex", penalty_spread="maxgap")
    assert str(err.value) == ERR_CHOICE.format(
        key="penalty_spread", value="maxgap", choices="max_gap, mean_abs_dev, l2_dev"
    )
    with pytest.raises(ValueError) as err:
        DataArguments(counterfactual_augmentation="append")
    assert str(err.value) == ERR_CHOICE.format(
        key="counterfactual_augmentation", value="append", choices="add, replace"
    )
    assert DataArguments(counterfactual_augmentation=None).counterfactual_augmentation is None
