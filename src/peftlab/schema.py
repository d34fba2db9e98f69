"""Reading a config: YAML that refuses duplicate keys, exponent-notation numbers, and the JSON schema with its defaults.

The schema (config.schema.yaml beside this file) is the one home of every key: its type, allowed
values, default and description, written once. `schema()` adds what a per-run override refers to:
each definition without its defaults (`overrides:`). `validate` fills the defaults in, and the
typed run spec (peftlab.spec) takes its fields from `keys_of`.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


class ConfigError(ValueError):
    """A config problem, found before any job starts."""


def _with_defaults(validator_class):
    """jsonschema validator that also fills in `default:` values (jsonschema's FAQ recipe). Not
    snakemake.utils.validate's copy of it: that one takes a schema file, not this derived schema, stops at the first
    error, puts the schema's own default objects into the config, and importing snakemake costs 0.2 s."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def json_copy(value):
    """A deep copy of JSON-like data (dicts, lists, scalars): what copy.deepcopy gives, ten times faster
    (planning a 10,000-run matrix copies every run's spec a few times)."""
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_copy(v) for v in value]
    return value


def key_path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    where = key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return f"{where}: unknown key(s) {', '.join(map(repr, extra))}; allowed: {', '.join(allowed)}"
    if error.validator == "oneOf":
        choices = [" + ".join(s.get("required", [])) for s in error.validator_value]
        if all(choices):
            return f"{where}: set exactly one of: {'; '.join(choices)}"
    if error.validator in ("oneOf", "anyOf") and error.context:
        # the branch the value was meant for: not the one whose type it does not have
        meant = [e for e in error.context if e.validator != "type"] or error.context
        return _describe(jsonschema.exceptions.best_match(meant))
    if error.validator == "pattern":
        return (
            f"{where}: {error.instance!r} is not path-safe; use letters, digits, '.', '_', '+', '-' (no '/', no "
            "leading '.')"
        )
    return f"{where}: {error.message}"


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""


def _mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"{Path(node.start_mark.name).name} line {key_node.start_mark.line + 1}: key {key!r} appears "
                "twice in one section "
                f"(first on line {seen[key] + 1}); YAML would silently keep only the last"
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_yaml(path: str | Path) -> dict:
    """A config file, with every mapping's keys checked for duplicates."""
    with open(path) as f:
        return yaml.load(f, Loader=_StrictLoader) or {}


# YAML 1.1 (PyYAML's, and so Snakemake's) reads 1e-5 as a string: a float there needs a dot in
# its mantissa (1.0e-5). Users write 1e-5 (the PeRL seed writes 1e-05); it is a number.
_EXP_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def _numbers(obj):
    """obj with every string that spells a number in exponent notation read as that number."""
    if isinstance(obj, str) and _EXP_NUMBER.match(obj):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


def _without_defaults(node):
    if isinstance(node, dict):
        return {k: _without_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_without_defaults(v) for v in node]
    return node


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    """The config schema: config.schema.yaml, plus `overrides:`, its definitions without their defaults. A sweep block's
    or an experiment's peft, training, ... refer to those: a key an override leaves out comes from the level above."""
    root = load_yaml(SCHEMA_PATH)
    root["overrides"] = _without_defaults(root["definitions"])
    return root


def keys_of(section: str) -> dict:
    """A top-level section's keys, {key: its schema}, in the file's order (tasks: and models: of each entry)."""
    root = schema()
    node = root["definitions"].get(section) or root["properties"][section]
    return node["additionalProperties"]["properties"] if section in ("tasks", "models") else node["properties"]


def schema_default(section: str, key: str):
    """The schema's default of `key` in a top-level section."""
    return keys_of(section)[key]["default"]


def validate(raw: dict, against: dict | None = None) -> dict:
    """A copy of a raw config with exponent-notation numbers read and every schema default filled in; ConfigError
    lists every schema problem. `against`: the schema with the registries' names filled in
    (peftlab.validate.config_schema)."""
    cfg = _numbers(copy.deepcopy(raw))
    errors = sorted(_Validator(against or schema()).iter_errors(cfg), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(dict.fromkeys(map(_describe, errors))))
    return cfg
