"""The README's research example runs as written, and its set-up commands are the ones CI runs."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_research_example_runs(tmp_path, monkeypatch, capsys):
    (code,) = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "FairTrainer" in b]
    assert len(code.strip().splitlines()) <= 35
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    gap = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= gap <= 1.0
    assert os.path.isdir(tmp_path / "outputs" / "focal")


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)```", README, re.S)
    test_command = next(c.strip() for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()
