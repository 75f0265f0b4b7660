"""One registry of mitigation methods by name, because YAML chooses them by name.

Research code needs none of this: it constructs the objects and passes them to
``FairTrainer(mitigations=...)``. A config names a method (``penalty: demographic_parity``); the registry
finds the class and the class builds itself from the arguments with its ``from_args(args)`` classmethod, so
a method's options are read by the method, not mapped here. A method written outside the library becomes
selectable from a config by decorating it with ``register``.

This module imports no method module: the methods import it and register themselves, and importing the
``fairtune.mitigation`` package loads the built-in ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

KINDS = ("penalty", "reweighting", "adversary", "post_processing")
ERR_UNKNOWN_KIND = "Unknown kind of mitigation {kind!r}; valid kinds: {valid}."
ERR_UNKNOWN_METHOD = "Unknown {kind} {name!r}. Valid choices: {valid}."
ERR_DUPLICATE = "A {kind} named {name!r} is already registered ({existing})."
ERR_OPTIONS = "{kind}_options {options} are not options of {cls}; it accepts: {valid}."
ERR_NO_FROM_ARGS = "{cls} is registered as a {kind} but has no from_args(args) classmethod to build itself."

_REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str) -> Callable[[type], type]:
    """Class decorator: make a mitigation selectable as ``<kind>: <name>`` in a config.

    The class must have a ``from_args(args)`` classmethod (the base classes provide one that reads the
    standard arguments of its kind).
    """
    if kind not in _REGISTRY:
        raise ValueError(ERR_UNKNOWN_KIND.format(kind=kind, valid=", ".join(KINDS)))

    def decorate(cls: type) -> type:
        if not callable(getattr(cls, "from_args", None)):
            raise TypeError(ERR_NO_FROM_ARGS.format(cls=cls.__qualname__, kind=kind))
        existing = _REGISTRY[kind].get(name)
        if existing is not None and existing is not cls:
            raise ValueError(ERR_DUPLICATE.format(kind=kind, name=name, existing=existing.__qualname__))
        _REGISTRY[kind][name] = cls
        return cls

    return decorate


def names(kind: str) -> list[str]:
    """Registered names of one kind, sorted."""
    if kind not in _REGISTRY:
        raise ValueError(ERR_UNKNOWN_KIND.format(kind=kind, valid=", ".join(KINDS)))
    return sorted(_REGISTRY[kind])


def lookup(kind: str, name: str) -> type:
    """The class registered as ``name``; an unknown name is an error that lists the valid ones."""
    if name not in _REGISTRY.get(kind, {}):
        raise ValueError(ERR_UNKNOWN_METHOD.format(kind=kind, name=name, valid=", ".join(names(kind))))
    return _REGISTRY[kind][name]


def build(kind: str, name: str, args: Any) -> Any:
    """Look ``name`` up and let its class build itself from ``args`` (``FairTrainingArguments``)."""
    return lookup(kind, name).from_args(args)


def construct(cls: type, standard: dict[str, Any], options: dict[str, Any], kind: str) -> Any:
    """Build ``cls`` from the standard arguments of its kind and the user's ``<kind>_options`` mapping.

    A standard argument the class does not take is skipped (a custom penalty need not take ``spread``); an
    option from ``<kind>_options`` it does not take is an error, since the user asked for it by name.
    """
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(k for k in options if k not in params and not takes_any)
    if unknown:
        valid = ", ".join(k for k, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD) or "none"
        raise ValueError(ERR_OPTIONS.format(kind=kind, options=unknown, cls=cls.__name__, valid=valid))
    kwargs = {k: v for k, v in standard.items() if k in params or takes_any}
    return cls(**(kwargs | dict(options)))
