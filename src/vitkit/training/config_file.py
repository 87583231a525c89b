"""Config files for `vitkit train --config FILE`: YAML, TOML, or a run's own train_config.json.

A file holds what the command line takes: `preset`, `data`, `out` and any field, as one flat
mapping (`lr: 1e-3`, not nested sections). A run's train_config.json holds its complete config
under "requested", so handing it back trains that run again. Values are parsed by the field's
type as the command line parses its text, so YAML's `lr: 1e-3` (a string to YAML 1.1) is the
number a user meant; a value that is no such number, an unknown key or a nested value is refused
in one line naming the file and the key.

Files come from strangers too: they are read with safe loaders only (no object construction, no
code), and one larger than `MAX_BYTES` is refused before it is parsed.
"""

from __future__ import annotations

import json
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vitkit.errors import ConfigError
from vitkit.models.checks import shown
from vitkit.training.config import FIELD_NAMES, TrainConfig, parse_overrides
from vitkit.training.presets import get_preset

# A config is a few dozen short lines; a megabyte is no config file.
MAX_BYTES = 1 << 20
# Keys of the command line's own options, beside the config's fields.
OPTION_KEYS = ("preset", "data", "out")
_SCALARS = (str, int, float, bool)


@dataclass(frozen=True)
class ConfigFile:
    """What one file asks for: the command's options and the fields, as "field=value" text
    (the command line's form, so both are read by the one parser)."""

    path: Path
    preset: str | None = None
    data: str | None = None
    out: str | None = None
    assignments: list[str] = field(default_factory=list)


def read_config_file(path: Path | str) -> ConfigFile:
    """The options and field assignments in `path`; ConfigError naming the file (and the key)
    for a file that is unreadable, too large, not a flat mapping, or has unknown keys."""
    path = Path(path)
    mapping = _mapping_in(path)
    options: dict[str, str] = {}
    assignments = []
    for key, value in mapping.items():
        if not isinstance(key, str) or (key not in FIELD_NAMES and key not in OPTION_KEYS):
            raise ConfigError(
                f"{path}: unknown key {shown(key)}; a config file holds "
                f"{', '.join(OPTION_KEYS)} and the fields of `vitkit train --help`"
            )
        if not isinstance(value, _SCALARS):
            raise ConfigError(
                f"{path}: key {key!r} must be a single value (text, number or true/false), "
                f"got a {type(value).__name__}"
            )
        text = _as_text(value)
        if key in OPTION_KEYS:
            options[key] = text
        else:
            assignments.append(f"{key}={text}")
    return ConfigFile(path, assignments=assignments, **options)


def config_from_file(
    file: ConfigFile, *, preset: str | None = None, data: str | None = None
) -> TrainConfig:
    """The config `file` asks for: its preset (or, without one, the field defaults) with its data
    and fields; `preset` and `data` (the command line's) replace the file's. ConfigError naming
    the file."""
    try:
        base = get_preset(preset or file.preset) if preset or file.preset else None
        data_assignment = [f"data={data or file.data}"] if data or file.data else []
        return parse_overrides(base, [*data_assignment, *file.assignments])
    except ConfigError as error:
        raise ConfigError(f"{file.path}: {error}") from None


def _mapping_in(path: Path) -> dict[Any, Any]:
    """The file's top-level mapping: a run's train_config.json gives its "requested" config."""
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        if (size := status.st_size) > MAX_BYTES:
            raise ConfigError(f"{path}: {size} bytes is too large for a config file")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read it as a config file ({error})") from None
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            mapping = yaml.safe_load(text)
        elif suffix == ".toml":
            mapping = tomllib.loads(text)
        elif suffix == ".json":
            mapping = json.loads(text)
            if isinstance(mapping, dict) and isinstance(mapping.get("requested"), dict):
                mapping = mapping["requested"]
        else:
            raise ConfigError(
                f"{path}: a config file ends in .yaml, .yml, .toml or .json (a run's "
                f"train_config.json), got {suffix or 'no suffix'}"
            )
    except (yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise ConfigError(f"{path}: not valid {suffix[1:].upper()}: {first_line}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply for a config file") from None
    if not isinstance(mapping, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys to values (preset, data, fields), got "
            f"{type(mapping).__name__}"
        )
    return mapping


def _as_text(value: str | int | float | bool) -> str:
    """A file's value as command-line text: true/false for booleans, repr for floats (exact)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)
