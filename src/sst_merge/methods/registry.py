"""The registry of merge methods: explicit, refusing duplicate names, naming the known ones."""

from __future__ import annotations

from sst_merge.errors import InputError
from sst_merge.methods.base import MergeMethod

_METHODS: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    """Add `method` to the registry; a second method of the same name is a programming error."""
    if method.name in _METHODS:
        raise ValueError(f"merge method {method.name!r} is registered twice")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> MergeMethod:
    """The method called `name`, or an InputError listing the known ones."""
    try:
        return _METHODS[name]
    except KeyError:
        raise InputError(f"unknown merge method {name!r}; known: {', '.join(sorted(_METHODS))}") from None


def method_names() -> list[str]:
    """Names of all registered methods, sorted."""
    return sorted(_METHODS)
