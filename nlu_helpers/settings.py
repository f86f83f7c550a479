"""Checks and (de)serialisation shared by the settings dataclasses (``ppo.PPOConfig``, ...).

Every bad value gets one line naming the field, the value and what is allowed; a renamed
field names its new name; an unknown one lists the known ones.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping


def require(settings: Any, ok: bool, name: str, allowed: str) -> None:
    """Raise ``ValueError("name=value is not allowed; allowed: ...")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name}={getattr(settings, name)!r} is not allowed; allowed: {allowed}")


def positive_ints(settings: Any, *names: str) -> None:
    for name in names:
        value = getattr(settings, name)
        require(settings, isinstance(value, int) and not isinstance(value, bool) and value >= 1, name, "a positive integer")


def check_names(cls: type, values: Mapping[str, Any], renamed: Mapping[str, str] = {}) -> None:  # noqa: B006 - read only
    """Refuse field names ``cls`` does not have, naming the new name of a renamed field or the closest known ones."""
    known = [f.name for f in dataclasses.fields(cls)]
    for name in values:
        if name in renamed:
            raise ValueError(f"{cls.__name__} field {name!r} is now called {renamed[name]!r}")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(f"unknown {cls.__name__} field {name!r}; {hint}allowed: {', '.join(known)}")


def to_dict(settings: Any) -> dict[str, Any]:
    """The settings as JSON-ready values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()}


def from_dict(cls: type, record: Mapping[str, Any], renamed: Mapping[str, str] = {}, nested: Mapping[str, type] = {}) -> Any:  # noqa: B006
    """Settings from :func:`to_dict`'s output (lists back to tuples, ``nested`` fields rebuilt from mappings)."""
    check_names(cls, record, renamed)
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items()}
    for name, kind in nested.items():
        if isinstance(values.get(name), Mapping):
            values[name] = kind(**values[name])
    return cls(**values)
