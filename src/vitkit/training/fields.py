"""Typed, checked fields of a frozen config dataclass: each carries its help text and, for
numbers, the range it must lie in; `field_problem` checks one value, `describe` lists them all
(`vitkit train --help`), `parse_value` reads one from the command line."""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from vitkit.errors import ConfigError
from vitkit.models.checks import shown


@dataclass(frozen=True)
class Range:
    """The values a number field admits: from `low` to `high` (None: unbounded), each end
    included unless marked open. Every float field must also be finite."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        return f"{'<' if self.high_open else '<='} {_number(self.high)}"


def _number(value: float) -> str:
    """A range's end as written: whole numbers in full (4294967295), others as %g."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e18 else f"{value:g}"


NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, high_open=True)  # rates and decays: 1 would mean "everything"


def described(text: str, default: Any, allowed: Range | None = None) -> Any:
    return field(default=default, metadata={"help": text, "range": allowed})


def field_problem(config: Any, item: dataclasses.Field, kind: Any) -> str | None:
    """What is wrong with one field's value (type, choice, range), or None. An int given for
    a float field is stored as a float, so that the saved config compares equal."""
    value = getattr(config, item.name)
    if typing.get_origin(kind) is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            return f"{item.name} must be one of {', '.join(choices)}, got {shown(value)}"
        return None
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is float and is_number:
        object.__setattr__(config, item.name, value := float(value))
        if not math.isfinite(value):
            return f"{item.name} must be a finite number, got {value}"
    elif kind is int and not (is_number and isinstance(value, int)):
        return f"{item.name} must be an integer, got {shown(value)}"
    elif kind is float:
        return f"{item.name} must be a number, got {shown(value)}"
    elif kind is not int and not isinstance(value, kind):
        return f"{item.name} must be a {kind.__name__}, got {shown(value)}"
    allowed: Range | None = item.metadata["range"]
    if allowed is not None and not allowed.admits(value):
        return f"{item.name} must be {allowed}, got {shown(value)}"
    return None


_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def parse_value(text: str, kind: Any) -> Any:
    """The value `text` stands for under a field's type. Text that is no such value is passed on
    as it is, so that `TrainConfig` refuses it with the message the Python API gives too."""
    if kind is bool:
        return _BOOLEANS.get(text.lower(), text)
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            return text
    return text


def describe(config_class: type, types: dict[str, Any]) -> str:
    """One line per field with its type, default, range and help."""
    lines = []
    for item in dataclasses.fields(config_class):
        kind = types[item.name]
        type_name = (
            "|".join(typing.get_args(kind)) if typing.get_origin(kind) is Literal else kind.__name__
        )
        allowed = f", {item.metadata['range']}" if item.metadata["range"] else ""
        lines.append(
            f"  {item.name}={item.default!r} ({type_name}{allowed}): {item.metadata['help']}"
        )
    return "\n".join(lines)


def parse_assignments(assignments: list[str], types: dict[str, Any]) -> dict[str, Any]:
    """{field: value} from "field=value" assignments, each value parsed by the field's declared
    type (`types`); ConfigError for an assignment without "=" or an unknown field."""
    values: dict[str, Any] = {}
    for assignment in assignments:
        name, separator, text = assignment.partition("=")
        if not separator:
            raise ConfigError(f"expected field=value, got {shown(assignment)}")
        if name not in types:
            raise ConfigError(f"unknown field {shown(name)}; fields: {', '.join(sorted(types))}")
        values[name] = parse_value(text, types[name])
    return values
