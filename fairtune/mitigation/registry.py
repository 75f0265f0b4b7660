"""One registry of mitigation methods by name, because YAML chooses them by name.

Research code needs none of this: it constructs the objects and passes them to
``FairTrainer(mitigations=...)``. A method written outside the library becomes selectable from a config
by decorating it with ``register``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

KINDS = ("penalty", "reweighting", "adversary", "post_processing")
ERR_UNKNOWN_KIND = "Unknown kind of mitigation {kind!r}; valid kinds: {valid}."
ERR_UNKNOWN_METHOD = "Unknown {kind} {name!r}. Valid choices: {valid}."
ERR_DUPLICATE = "A {kind} named {name!r} is already registered ({existing})."

_REGISTRY: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str) -> Callable[[Any], Any]:
    """Class decorator: make a mitigation selectable as ``<kind>: <name>`` in a config."""
    if kind not in _REGISTRY:
        raise ValueError(ERR_UNKNOWN_KIND.format(kind=kind, valid=", ".join(KINDS)))

    def decorate(obj: Any) -> Any:
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing is not obj:
            raise ValueError(ERR_DUPLICATE.format(kind=kind, name=name, existing=existing.__qualname__))
        _REGISTRY[kind][name] = obj
        return obj

    return decorate


def names(kind: str) -> list[str]:
    """Registered names of one kind, sorted."""
    _load_builtins()
    return sorted(_REGISTRY[kind])


def lookup(kind: str, name: str) -> Any:
    """The class registered as ``name``; an unknown name is an error that lists the valid ones."""
    _load_builtins()
    if name not in _REGISTRY[kind]:
        raise ValueError(ERR_UNKNOWN_METHOD.format(kind=kind, name=name, valid=", ".join(names(kind))))
    return _REGISTRY[kind][name]


def _load_builtins() -> None:
    # The built-in methods register themselves on import; importing here avoids an import cycle.
    from fairtune.mitigation import adversary, penalties, postprocess, reweighting  # noqa: F401

    for objective in postprocess.OBJECTIVES:
        _REGISTRY["post_processing"].setdefault(objective, partial(postprocess.GroupThresholds, objective))
