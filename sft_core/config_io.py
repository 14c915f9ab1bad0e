"""Reading configs: YAML that reads ``1e-4`` as a float, ``--set`` arguments, validation errors that
name the dotted field, and the dict merging behind ``evolve``."""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sft_core.errors import ConfigError


class _YamlLoader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads `1e-4` (no dot) as a string; read it as the float everyone means."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+"
               r"(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF))$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def load_yaml_text(text: str) -> Any:
    return yaml.load(text, Loader=_YamlLoader)  # noqa: S506 - a SafeLoader subclass


def parse_set_args(items: list[str]) -> dict[str, Any]:
    """``["train.batch_size=4", "method.gen_kwargs={max_new_tokens: 8}"]`` -> typed dict (YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(item, "expected --set SECTION.FIELD=VALUE")
        try:
            out[key.strip()] = load_yaml_text(value) if value.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = value
    return out


def as_config_error(err: ValidationError) -> ConfigError:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "<config>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        section = ".".join(str(p) for p in first["loc"][:-1]) or "top level"
        msg = f"unknown key {first['loc'][-1]!r} in section {section!r}"
    elif "input" in first and first["type"] not in ("missing",):
        msg = f"{msg} (got {first['input']!r})"
    more = len(err.errors()) - 1
    if more:
        others = ", ".join(".".join(str(p) for p in e["loc"]) for e in err.errors()[1:4])
        msg += f"; {more} more error(s) at {others}"
    return ConfigError(field, msg)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))  # an empty dict adds nothing
        else:
            out[name] = value
    return out
