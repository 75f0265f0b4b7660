"""The README's research example runs as written, and its set-up commands are the ones CI runs."""

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_research_examples_run(tmp_path, monkeypatch, capsys):
    """The focal-loss example, then the custom-penalty example that continues it (same namespace)."""
    focal, custom = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "FairTrainer" in b]
    assert len(focal.strip().splitlines()) <= 45
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    exec(compile(focal, "README.md", "exec"), namespace)
    gap = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= gap <= 1.0
    assert os.path.isdir(tmp_path / "outputs" / "focal")
    exec(compile(custom, "README.md", "exec"), namespace)
    penalty = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert penalty > 0  # the custom penalty ran and was logged
    assert [type(m).__name__ for m in namespace["trainer"].mitigations] == [
        "KamiranCalders",
        "WorstGroupExcess",
    ]


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"```bash\n(.*?)```", README, re.S)
    test_command = next(c.strip() for c in commands if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()
