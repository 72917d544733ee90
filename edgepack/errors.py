"""Errors that speak to the user: what was wrong, where, and what to do; and the checks that raise them."""

import enum
from typing import Any, TypeVar

E = TypeVar("E", bound=enum.StrEnum)


class EdgepackError(Exception):
    """Base class for every error the build reports as a message rather than a traceback."""


class RecipeError(EdgepackError, ValueError):
    """A recipe key or value is invalid."""


class ModelSourceError(EdgepackError):
    """A model could not be found or loaded."""


class StageError(EdgepackError):
    """A pipeline stage found a result it must not ship (parity, fusion, accuracy...)."""


def check(condition: bool, section: str, key: str, value: object, expected: str) -> None:
    """Refuse a recipe value: `[section] key = value is invalid: expected ...`."""
    if not condition:
        shown = value.value if isinstance(value, enum.Enum) else value
        raise RecipeError(f"[{section}] {key} = {shown!r} is invalid: expected {expected}.")


def check_range(section: str, key: str, bounds: list[float], low: float, high: float) -> None:
    ok = len(bounds) == 2 and low <= bounds[0] <= bounds[1] <= high
    check(ok, section, key, bounds, f"[min, max] with {low} <= min <= max <= {high}")


def as_enum(cls: type[E], value: Any, section: str, key: str) -> E:
    """`value` as a member of `cls` (strings accepted), or a RecipeError listing the choices."""
    try:
        return cls(value)
    except ValueError:
        raise RecipeError(
            f"[{section}] {key} = {value!r} is invalid: expected one of {[m.value for m in cls]}."
        ) from None
