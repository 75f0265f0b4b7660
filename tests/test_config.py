import subprocess
import sys

import pytest

from fairtune.config import ERR_UNKNOWN_KEYS, FairTrainingArguments, parse_config


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
        parse_config(["--config", ok, "--learnin_rate", "1"])
    assert str(err.value) == ERR_UNKNOWN_KEYS.format(source="the command line", keys="--learnin_rate 1")


def test_bad_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        parse_config(["--config", str(tmp_path / "missing.yaml")])
    with pytest.raises(ValueError, match="mapping"):
        parse_config(["--config", _yaml(tmp_path, "- a\n- b\n")])
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
