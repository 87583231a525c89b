"""Checks of single values read from files written by strangers (config.json, a checkpoint's
shapes, a preprocessor config), shared by `ViTConfig` and `Preprocessing`.

Each check returns the value normalised (ints as int, pairs and lists as tuples) or raises
`FieldProblem` saying what is wrong; `check_each` prefixes the field's name, so that a bad value is
an error naming it, never a ZeroDivisionError or a torch traceback later.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping

# No real ViT comes near this size in any field; the bound keeps the shapes computed from a config
# within what torch represents (a JSON number may be 10**400).
MAX_SIZE = 1 << 24


class FieldProblem(Exception):
    """What is wrong with one field's value; `check_each` prefixes the field's name."""


def shown(value: object) -> str:
    """A value for an error message: its repr, cut short so the message stays one line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def integer(value: object, *, minimum: int = 1, maximum: int = MAX_SIZE) -> int:
    # bool is an int subclass, but `"depth": true` in a file is a mistake, not depth 1.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FieldProblem(f"must be an integer, got {shown(value)}")
    if not minimum <= value <= maximum:
        raise FieldProblem(f"must be between {minimum} and {maximum}, got {shown(value)}")
    return int(value)


def optional_integer(value: object) -> int | None:
    return None if value is None else integer(value)


def image_size(value: object) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise FieldProblem(f"must be an integer or a [height, width], got {shown(value)}")
        return (integer(value[0]), integer(value[1]))
    size = integer(value)
    return (size, size)


def real(value: object, *, low: float, high: float, low_included: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FieldProblem(f"must be a number, got {shown(value)}")
    number = float(value)
    above_low = number >= low if low_included else number > low
    if not (above_low and number < high):  # also refuses NaN, for which every comparison fails
        bracket = "[" if low_included else "("
        raise FieldProblem(f"must be in {bracket}{low:g}, {high:g}), got {shown(value)}")
    return number


def optional_real(value: object, *, low: float, high: float) -> float | None:
    """None, or a number in (low, high)."""
    return None if value is None else real(value, low=low, high=high, low_included=False)


def reals(value: object, *, low: float, low_included: bool) -> tuple[float, ...]:
    """A non-empty list of numbers above `low` (and finite)."""
    if not isinstance(value, (list, tuple)) or not value:
        raise FieldProblem(f"must be a list of numbers, got {shown(value)}")
    try:
        return tuple(
            real(item, low=low, high=math.inf, low_included=low_included) for item in value
        )
    except FieldProblem as problem:
        raise FieldProblem(f"{problem} (in {shown(value)})") from None


def boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise FieldProblem(f"must be true or false, got {shown(value)}")
    return value


def choice(value: object, *, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise FieldProblem(f"must be one of {', '.join(map(repr, choices))}, got {shown(value)}")
    return value


def rate(value: object) -> float:
    return real(value, low=0.0, high=1.0, low_included=True)


def check_each(
    checks: Mapping[str, Callable[[object], object]],
    values: Mapping[str, object],
    names: Mapping[str, str],
) -> tuple[dict[str, object], list[str]]:
    """(each field of `checks` whose value in `values` passes, normalised; the problems of the
    others, each naming its field as `names` does (field -> the name in the file the values came
    from), or by its own name)."""
    checked, problems = {}, []
    for field, check in checks.items():
        try:
            checked[field] = check(values[field])
        except FieldProblem as problem:
            problems.append(f"{names.get(field, field)} {problem}")
    return checked, problems
