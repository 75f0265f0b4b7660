"""The public API: every name in ``fairtune.__all__`` resolves, and importing the package loads no torch."""

from __future__ import annotations

import os
import subprocess
import sys

import fairtune


def test_every_public_name_resolves_to_its_module():
    assert sorted(fairtune.__all__) == sorted(fairtune._EXPORTS)
    for name in fairtune.__all__:
        value = getattr(fairtune, name)
        assert value.__module__ == fairtune._EXPORTS[name], name
    assert set(fairtune.__all__) <= set(dir(fairtune))


def test_python_users_reach_the_embedded_data_and_model():
    # Defect 16: the Adult loader and the packaged MiniLM folder, from the top level.
    path = fairtune.default_model_path()
    assert os.path.isfile(os.path.join(path, "config.json"))
    assert fairtune.resolve_model_path("minilm") == path and fairtune.resolve_model_path("x/y") == "x/y"
    data = fairtune.load_adult()
    assert set(data) == {"train", "validation", "test"} and {"text", "label", "sex"} <= set(
        data["train"].features
    )


def test_importing_the_package_loads_neither_torch_nor_transformers():
    code = "import sys, fairtune; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
