"""docs/config.md, generated from the one config model (``ExperimentConfig``): every field's
type, default, bounds and meaning (its docstring). ``normlab config-reference --out
docs/config.md`` writes it; a test fails when the file is stale."""

from __future__ import annotations

import json
from typing import Any

from worker.training.config import ExperimentConfig

HEADER = """# Experiment config reference

Generated from `worker/training/config.py` by `normlab config-reference --out docs/config.md`
(a test fails when this file is stale). Every field has a default; unknown fields are errors;
types are strict (`"5"` is not a number) and NaN or Infinity is never accepted. A submission may
also name a `preset` (applied underneath its fields) and `tags`; `normlab train` takes the same
keys from a YAML or JSON file, or `--set dotted.key=value`. See [examples/](../examples).
"""


def reference() -> str:
    schema = ExperimentConfig.model_json_schema()
    defaults = ExperimentConfig().model_dump(mode="json")
    return "\n".join([HEADER, *_section_lines("", schema, schema.get("$defs", {}), defaults)])


def _section_lines(prefix: str, model: dict[str, Any], defs: dict[str, Any],
                   defaults: dict[str, Any]) -> list[str]:
    """A section's table, then its sub-sections (depth first: each follows its parent)."""
    out = [f"## `{prefix}`" if prefix else "## Top level", ""]
    if prefix and model.get("description"):
        out += [_one_line(model["description"]), ""]
    out += ["| Field | Type | Default | Bounds | Meaning |", "| --- | --- | --- | --- | --- |"]
    later: list[str] = []
    for name, prop in model.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        meaning = _one_line(prop.get("description", ""))
        nested = _section(prop, defs)
        if nested is not None:
            out.append(f"| `{path}` | object | | | {meaning} See [`{path}`](#{_anchor(path)}). |")
            inner = defaults.get(name) if isinstance(defaults.get(name), dict) else {}
            later += ["", *_section_lines(path, nested, defs, inner or {})]
            continue
        default = defaults[name] if name in defaults else prop.get("default", _NONE)
        shown = "" if default is _NONE else f"`{json.dumps(default)}`"
        out.append(f"| `{path}` | {_type(prop)} | {shown} | {_bounds(prop)} | {meaning} |")
    return out + later


_NONE = object()


def _anchor(path: str) -> str:
    return path.replace(".", "").lower()  # GitHub drops the dots of a heading


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _ref(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    ref = prop.get("$ref")
    return defs[ref.rsplit("/", 1)[1]] if isinstance(ref, str) else None


def _section(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    """The sub-model a property holds (possibly optional), or None for a plain value."""
    for option in [prop, *prop.get("anyOf", [])]:
        found = _ref(option, defs)
        if found is not None:
            return found
    return None


def _type(prop: dict[str, Any]) -> str:
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"])
    if "anyOf" in prop:
        parts = [_type(p) for p in prop["anyOf"]]
        return " or ".join(dict.fromkeys(parts))
    kind = prop.get("type", "any")
    if kind == "array":
        return f"list of {_type(prop.get('items', {}))}"
    if "pattern" in prop:
        return f"{kind} matching `{prop['pattern']}`".replace("|", "\\|")
    return str(kind)


_BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
           ("exclusiveMaximum", "<"), ("minLength", "length ≥"), ("maxLength", "length ≤"),
           ("minItems", "items ≥"), ("maxItems", "items ≤"))


def _bounds(prop: dict[str, Any]) -> str:
    found = [f"{sign} {prop[key]}" for key, sign in _BOUNDS if key in prop]
    for option in prop.get("anyOf", []):
        inner = _bounds(option)
        if inner:
            found.append(f"{option.get('type', '')}: {inner}")
    items = prop.get("items")
    if isinstance(items, dict) and _bounds(items):
        found.append(f"each {_bounds(items)}")
    return ", ".join(found)


def _default(prop: dict[str, Any]) -> str:
    if "default" not in prop:
        return ""
    return f"`{json.dumps(prop['default'])}`"
