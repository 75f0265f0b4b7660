"""Config files and the checks that need neither a model nor transformers.

Importing this module costs PyYAML only (a tenth of a second), whereas ``fairtune.config`` imports
transformers and torch (about 5 s). The ``fairtune`` command reads the YAML layers and checks the data files
they name through this module first, so a broken file or a mistyped path is refused at once.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any, NoReturn

import yaml

ERR_CONFIG_MISSING = "Config file {path!r} does not exist."
ERR_CONFIG_NOT_MAPPING = "Config file {path!r} must hold a mapping of key: value pairs; got {kind}."
ERR_CONFIG_SYNTAX = (
    "Config file {path!r} is not valid YAML: {problem} at line {line}, column {column}{context}. "
    "Each line reads `key: value`; a list is written [a, b]."
)
ERR_CONFIG_UNREADABLE = "Config file {path!r} cannot be read as YAML: {problem}."
ERR_CONFIG_DUPLICATE = "Config file {path!r} sets {key!r} twice (lines {first} and {second}); keep one."
ERR_DATA_FILE_MISSING = "{key} {path!r} (from {source}) does not exist."
ERR_FLAG = "{message} (on the command line)."
SOURCE_FLAGS = "the command line"
# Local data files a run names; checked before anything heavy is imported.
DATA_FILE_KEYS = ("train_file", "validation_file", "test_file", "stream_counts")


class ConfigError(ValueError):
    """A mistake in a config file or on the command line; the message names the key and where it came from."""


class StrictArgumentParser(argparse.ArgumentParser):
    """``argparse`` without prefix matching, raising ``ConfigError`` instead of printing usage and exiting.

    argparse's default takes ``--learning_rat`` for ``--learning_rate``; a flag must be spelled out, just as a
    YAML key must. Raising (not exiting) lets Python callers catch the error and the CLI report it one way.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        raise ConfigError(ERR_FLAG.format(message=message))


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key set twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first: int, second: int) -> None:
        self.key, self.first, self.second = key, first, second


def _syntax_message(path: str, err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    if mark is None:  # a ReaderError (bytes that are not text) carries no line
        return ERR_CONFIG_UNREADABLE.format(path=path, problem=" ".join(str(err).split()))
    context = ""
    context_mark = getattr(err, "context_mark", None)
    if err.context and context_mark is not None and context_mark.line != mark.line:
        context = f" ({err.context} that starts at line {context_mark.line + 1})"
    return ERR_CONFIG_SYNTAX.format(
        path=path, problem=err.problem, line=mark.line + 1, column=mark.column + 1, context=context
    )


def load_yaml_config(path: str) -> dict[str, Any]:
    """One config file as a dict. An empty file (or one holding only comments) sets no keys."""
    if not os.path.isfile(path):
        raise ConfigError(ERR_CONFIG_MISSING.format(path=path))
    with open(path, "rb") as f:  # bytes: PyYAML detects the encoding and reports bad bytes with a position
        text = f.read()
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except _DuplicateKey as dup:
        raise ConfigError(
            ERR_CONFIG_DUPLICATE.format(path=path, key=dup.key, first=dup.first, second=dup.second)
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(_syntax_message(path, err)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(ERR_CONFIG_NOT_MAPPING.format(path=path, kind=type(data).__name__))
    return data


def config_paths(argv: Sequence[str]) -> list[str]:
    """The ``--config`` files named in ``argv``, in order."""
    pre = StrictArgumentParser(add_help=False)
    pre.add_argument("--config", action="append", default=[])
    known, _ = pre.parse_known_args(list(argv))
    return known.config


def read_config_layers(argv: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """``(path, keys)`` of every ``--config`` file in ``argv`` in order (a later file overrides an earlier
    one), after checking that each local data file the run names exists."""
    layers = [(path, load_yaml_config(path)) for path in config_paths(argv)]
    check_data_files(argv, layers)
    return layers


def check_data_files(argv: Sequence[str], layers: list[tuple[str, dict[str, Any]]]) -> None:
    """Refuse a ``train_file`` / ``validation_file`` / ``test_file`` that does not exist, naming its source.

    The value that wins is checked: a flag over every file, a later file over an earlier one.
    """
    pre = StrictArgumentParser(add_help=False)
    for key in DATA_FILE_KEYS:
        pre.add_argument(f"--{key}", f"--{key.replace('_', '-')}", dest=key, default=None)
    flags, _ = pre.parse_known_args(list(argv))
    for key in DATA_FILE_KEYS:
        path, source = getattr(flags, key), SOURCE_FLAGS
        if path is None:
            for file, layer in layers:
                if layer.get(key) is not None:
                    path, source = layer[key], file
        if isinstance(path, str) and path and not os.path.exists(path):
            raise ConfigError(ERR_DATA_FILE_MISSING.format(key=key, path=path, source=source))
