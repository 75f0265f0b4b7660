"""The ``fairtune`` command: user errors as one line with exit status 2, options a command does not use
refused, no empty output folder left by a refused run, no torch / transformers import on the fast paths."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fairtune import cli
from fairtune.config_files import (
    ERR_CONFIG_MISSING,
    ERR_CONFIG_NOT_MAPPING,
    ERR_DATA_FILE_MISSING,
)

ROOT = Path(__file__).resolve().parent.parent

# Runs cli.main on each argv in turn (one process, so the check covers all of them together) and prints, per
# case, the exit status and which heavy modules are imported by then. With STUB, the fairtune package's
# __init__ is skipped, so the test covers cli.py and what it imports whatever __init__ does.
RUNNER = """
import json, sys, types
if {stub}:
    pkg = types.ModuleType("fairtune")
    pkg.__path__ = [{package!r}]
    sys.modules["fairtune"] = pkg
from fairtune.cli import main
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
        code = 0
    except SystemExit as exit:
        code = exit.code or 0
    heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
    print(json.dumps({{"argv": argv, "code": code, "heavy": heavy}}))
"""


def _fast_cases(tmp_path):
    ok = tmp_path / "ok.yaml"
    ok.write_text("output_dir: out\ngroup_by: sex\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("output_dir: out\n  group_by: sex\n")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n")
    missing = str(tmp_path / "missing.yaml")
    return {
        "help": (["--help"], 0, None),
        "audit help": (["audit-data", "--help"], 0, None),
        "missing config": (["train", "--config", missing], 2, ERR_CONFIG_MISSING.format(path=missing)),
        "broken config": (["train", "--config", str(broken)], 2, "is not valid YAML"),
        "not a mapping": (
            ["train", "--config", str(listing)],
            2,
            ERR_CONFIG_NOT_MAPPING.format(path=str(listing), kind="list"),
        ),
        "missing data file": (
            ["train", "--config", str(ok), "--train_file", "gone.csv"],
            2,
            ERR_DATA_FILE_MISSING.format(key="train_file", path="gone.csv", source="the command line"),
        ),
        "audit data file": (
            ["audit-data", "--config", str(ok), "--validation_file", "gone.csv"],
            2,
            ERR_DATA_FILE_MISSING.format(key="validation_file", path="gone.csv", source="the command line"),
        ),
        "other command's option": (["train", "--config", str(ok), "--audit_dir", "a"], 2, "--audit_dir"),
        "unused by audit": (
            ["audit-data", "--config", str(ok), "--learning_rate", "1"],
            2,
            "--learning_rate",
        ),
        "unknown command": (["trian"], 2, "unknown command 'trian'"),
    }


def _run_fast_paths(tmp_path, stub):
    cases = _fast_cases(tmp_path)
    code = RUNNER.format(stub=stub, package=str(ROOT / "fairtune"))
    argvs = [argv for argv, _, _ in cases.values()]
    run = subprocess.run(
        [sys.executable, "-c", code, json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith('{"argv"')]
    assert len(results) == len(cases), run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("fairtune: error: ")]
    assert "Traceback" not in run.stderr
    for (name, (_, status, message)), result in zip(cases.items(), results, strict=True):
        assert result["code"] == status, name
        assert result["heavy"] == [], f"{name} imported {result['heavy']}"
        if message is not None:
            assert any(message in line for line in errors), name


def test_fast_paths_of_the_cli_module_import_neither_torch_nor_transformers(tmp_path):
    # Defect 18: --help and config or file errors waited ~7 s for torch and transformers.
    _run_fast_paths(tmp_path, stub=True)


def test_fast_paths_of_the_installed_command_import_neither_torch_nor_transformers(tmp_path):
    _run_fast_paths(tmp_path, stub=False)


def test_user_error_is_one_line_with_status_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("output_dir: out\ngroup_by: sex\npenalty_weight: heavy\n")
    run = subprocess.run(
        [sys.executable, "-m", "fairtune.cli", "train", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    expected = f"penalty_weight from {cfg}: 'heavy' is not a float (a number such as 0.5 or 3e-5)."
    assert run.returncode == cli.EXIT_USER_ERROR == 2
    assert run.stderr.strip().splitlines()[-1] == f"fairtune: error: {expected}"
    assert "Traceback" not in run.stderr and not (tmp_path / "out").exists()


def _exit(capsys, argv):
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    return exit.value.code, capsys.readouterr()


def test_commands_refuse_other_commands_options(tmp_path, capsys):
    # Defect 17: `fairtune train --audit_dir D` was taken as an unknown config key, after a 7 s import.
    cfg = tmp_path / "c.yaml"
    cfg.write_text("output_dir: out\ngroup_by: sex\n")
    for flag, owners in (
        ("--audit_dir", "`fairtune audit-data`"),
        ("--split", "`fairtune audit-data` and `fairtune evaluate` and `fairtune explain`"),
        ("--max", "`fairtune evaluate` and `fairtune evaluate-lm` and `fairtune monitor`"),
        (
            "--model",
            "`fairtune evaluate` and `fairtune evaluate-lm` and `fairtune explain` and `fairtune monitor`",
        ),
    ):
        code, out = _exit(capsys, ["train", "--config", str(cfg), flag, "x"])
        message = cli.ERR_OTHER_COMMAND_OPTION.format(flag=flag, owners=owners, command="train")
        assert code == 2 and out.err == f"fairtune: error: {message}\n"
    code, out = _exit(capsys, ["audit-data", "--config", str(cfg), "--compare", "m"])
    message = cli.ERR_OTHER_COMMAND_OPTION.format(
        flag="--compare", owners="`fairtune evaluate`", command="audit-data"
    )
    assert code == 2 and out.err == f"fairtune: error: {message}\n"
    code, out = _exit(capsys, ["evaluate", "--model", "m", "--reference", "r.json"])
    assert code == 2 and "--reference is an option of `fairtune audit-data`" in out.err


def test_audit_data_refuses_flags_it_does_not_read(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("output_dir: out\ngroup_by: sex\nlearning_rate: 1e-4\n")  # a file may hold any key
    code, out = _exit(
        capsys, ["audit-data", "--config", str(cfg), "--penalty", "mindiff", "--max-seq-length=8"]
    )
    message = cli.ERR_UNUSED_OPTIONS.format(
        command="audit-data", flags="--penalty, --max_seq_length", keys=", ".join(cli.AUDIT_DATA_KEYS)
    )
    assert code == 2 and out.err == f"fairtune: error: {message}\n"
    code, out = _exit(capsys, ["audit-data", "--config", str(cfg), "--reference", "nowhere.json"])
    assert out.err == f"fairtune: error: {cli.ERR_REFERENCE_MISSING.format(path='nowhere.json')}\n"
    bad = tmp_path / "ref.json"
    bad.write_text("{'sex': 1}")
    code, out = _exit(capsys, ["audit-data", "--config", str(cfg), "--reference", str(bad)])
    assert code == 2 and out.err.startswith(
        f"fairtune: error: --reference file {str(bad)!r} is not valid JSON"
    )


def test_audit_data_keys_are_config_fields():
    from dataclasses import fields

    from fairtune.config import CONFIG_CLASSES

    names = {f.name for cls in CONFIG_CLASSES for f in fields(cls)}
    assert set(cli.AUDIT_DATA_KEYS) <= names


def test_train_help_is_prefixed_with_the_command(capsys):
    code, out = _exit(capsys, ["train", "--help"])
    assert code == 0 and out.out.startswith("usage: fairtune train ")
    assert "{max_gap,mean_abs_dev,l2_dev}" in out.out


def test_refused_run_leaves_no_folder_it_created(tmp_path):
    target = tmp_path / "new" / "run"
    with pytest.raises(ValueError), cli.removed_if_refused(str(target)):
        target.mkdir(parents=True)
        raise ValueError("refused")
    assert not (tmp_path / "new").exists()
    # A folder that existed is kept, and so is one that is no longer empty.
    kept = tmp_path / "kept"
    kept.mkdir()
    with pytest.raises(ValueError), cli.removed_if_refused(str(kept / "run")):
        (kept / "run").mkdir()
        (kept / "run" / "note.txt").write_text("written by someone")
        raise ValueError("refused")
    assert (kept / "run" / "note.txt").is_file()
    with cli.removed_if_refused(str(tmp_path / "ok")):  # success keeps what it made
        (tmp_path / "ok").mkdir()
    assert (tmp_path / "ok").is_dir()


def test_train_refused_after_the_trainer_made_output_dir_removes_it(tmp_path, monkeypatch, capsys):
    # Defect 8: Trainer.__init__ creates output_dir, and checks that run after it refused the run, leaving
    # an empty folder behind.
    import fairtune.pipeline

    def build(model_args, data_args, args):
        Path(args.output_dir).mkdir(parents=True)  # as transformers.Trainer.__init__ does
        raise ValueError("no column 'gender' in the test split")

    monkeypatch.setattr(fairtune.pipeline, "build", build)
    out = tmp_path / "runs" / "one"
    code, streams = _exit(capsys, ["train", "--output_dir", str(out), "--group_by", "gender"])
    assert code == 2 and streams.err == "fairtune: error: no column 'gender' in the test split\n"
    assert not (tmp_path / "runs").exists()
