"""A validator for the slice of OpenAPI 3.0 schema that Klaviyo's request bodies use.

A hand-written walker rather than jsonschema: OAS 3.0 `nullable` is not JSON Schema, the
subset is small, and it lets errors carry Klaviyo-style JSON pointers and wording.

One deliberate deviation from plain JSON Schema: Klaviyo's OAS never states
`additionalProperties`, yet the live API rejects unknown fields ("'x' is not a valid field
for the resource 'profile'"). So an object schema that lists `properties` is closed unless
it says otherwise; free-form objects (custom `properties`, `append`) declare none and stay open.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

SCHEMAS_RESOURCE = "klaviyo_schemas.json"
# RFC 3339 needs a zone; fromisoformat alone would also take a naive time or a bare date.
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})$")
_TYPE_NAMES = {"object": "an object", "array": "a list", "string": "a string", "number": "a number",
               "integer": "an integer", "boolean": "a boolean"}


@dataclass(frozen=True)
class Violation:
    pointer: str
    detail: str


@dataclass(frozen=True)
class OperationSpec:
    operation_id: str
    method: str
    path: str
    burst_per_second: int
    steady_per_minute: int
    request_schema: Mapping[str, Any] | None


@cache
def catalog() -> Mapping[str, OperationSpec]:
    """The committed extract of Klaviyo's OAS (scripts/extract_klaviyo_schemas.py); read once."""
    text = resources.files("klaviyo_sandbox").joinpath(SCHEMAS_RESOURCE).read_text(encoding="utf-8")
    raw = json.loads(text)["operations"]
    return {
        op_id: OperationSpec(
            operation_id=op_id,
            method=entry["method"],
            path=entry["path"],
            burst_per_second=entry["rate_limit"]["burst_per_second"],
            steady_per_minute=entry["rate_limit"]["steady_per_minute"],
            request_schema=entry.get("request_schema"),
        )
        for op_id, entry in raw.items()
    }


def parse_date_time(value: str) -> datetime | None:
    if not _DATE_TIME.match(value):
        return None
    try:
        return datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return None


def escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def validate(value: Any, schema: Mapping[str, Any], pointer: str = "") -> list[Violation]:
    out: list[Violation] = []
    _walk(value, schema, pointer, "", out)
    return out


def _is_type(value: Any, expected: str) -> bool:
    if expected == "object":
        return isinstance(value, dict)
    if expected == "array":
        return isinstance(value, list)
    if expected == "string":
        return isinstance(value, str)
    if expected == "boolean":
        return isinstance(value, bool)
    # bool is an int subclass in Python; JSON keeps them apart.
    if isinstance(value, bool):
        return False
    if expected == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if expected == "number":
        return isinstance(value, int | float)
    return True


def _field(pointer: str) -> str:
    return pointer.rsplit("/", 1)[-1] or "data"


def _walk(value: Any, schema: Mapping[str, Any], pointer: str, resource: str, out: list[Violation]) -> None:
    if value is None:
        if not schema.get("nullable") and schema:
            out.append(Violation(pointer, f"'{_field(pointer)}' may not be null."))
        return
    if not _combinators(value, schema, pointer, resource, out):
        return
    expected = schema.get("type")
    if isinstance(expected, str) and not _is_type(value, expected):
        out.append(Violation(pointer, f"'{_field(pointer)}' must be {_TYPE_NAMES.get(expected, expected)}."))
        return
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(item) for item in schema["enum"])
        detail = f"'{value}' is not a valid choice for '{_field(pointer)}' ({allowed})."
        out.append(Violation(pointer, detail))
    if isinstance(value, str):
        _string(value, schema, pointer, out)
    elif isinstance(value, list):
        _array(value, schema, pointer, resource, out)
    elif isinstance(value, dict):
        _object(value, schema, pointer, resource, out)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(Violation(pointer, f"'{_field(pointer)}' must be at least {schema['minimum']}."))
        if "maximum" in schema and value > schema["maximum"]:
            out.append(Violation(pointer, f"'{_field(pointer)}' must be at most {schema['maximum']}."))


def _combinators(
    value: Any, schema: Mapping[str, Any], pointer: str, resource: str, out: list[Violation]
) -> bool:
    """oneOf/anyOf/allOf; False when the value already failed and needs no further checks."""
    for sub in schema.get("allOf", ()):
        _walk(value, sub, pointer, resource, out)
    for keyword, wanted in (("oneOf", "exactly one"), ("anyOf", "at least one")):
        branches = schema.get(keyword)
        if not branches:
            continue
        matches = sum(1 for sub in branches if not validate_in(value, sub, pointer, resource))
        if (keyword == "oneOf" and matches != 1) or matches == 0:
            kinds = " or ".join(_TYPE_NAMES.get(str(sub.get("type")), "a value") for sub in branches)
            out.append(Violation(pointer, f"'{_field(pointer)}' must be {kinds} ({wanted} must match)."))
            return False
    return True


def validate_in(value: Any, schema: Mapping[str, Any], pointer: str, resource: str) -> list[Violation]:
    out: list[Violation] = []
    _walk(value, schema, pointer, resource, out)
    return out


def _string(value: str, schema: Mapping[str, Any], pointer: str, out: list[Violation]) -> None:
    name = _field(pointer)
    if "minLength" in schema and len(value) < schema["minLength"]:
        out.append(Violation(pointer, f"'{name}' must be at least {schema['minLength']} characters."))
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        out.append(Violation(pointer, f"'{name}' must be at most {schema['maxLength']} characters."))
    if schema.get("format") == "date-time" and parse_date_time(value) is None:
        out.append(Violation(pointer, f"'{name}' must be an ISO 8601 date-time with a UTC offset."))


def _array(
    value: list[Any], schema: Mapping[str, Any], pointer: str, resource: str, out: list[Violation]
) -> None:
    name = _field(pointer)
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        out.append(Violation(pointer, f"'{name}' must have at most {schema['maxItems']} items."))
    if "minItems" in schema and len(value) < schema["minItems"]:
        out.append(Violation(pointer, f"'{name}' must have at least {schema['minItems']} items."))
    items = schema.get("items")
    if isinstance(items, Mapping):
        for index, item in enumerate(value):
            _walk(item, items, f"{pointer}/{index}", resource, out)


def _object(
    value: dict[str, Any], schema: Mapping[str, Any], pointer: str, resource: str, out: list[Violation]
) -> None:
    if isinstance(value.get("type"), str) and "attributes" in value:
        resource = value["type"]  # the JSON:API resource whose fields are checked below
    for key in schema.get("required", ()):
        if key not in value:
            out.append(Violation(f"{pointer}/{escape(key)}", f"'{key}' is a required field."))
    declared: Mapping[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties", not declared)
    for key, item in value.items():
        child = f"{pointer}/{escape(key)}"
        if key in declared:
            _walk(item, declared[key], child, resource, out)
        elif isinstance(extra, Mapping):
            _walk(item, extra, child, resource, out)
        elif extra is False:
            where = f"the resource '{resource}'" if resource else f"'{pointer or '/'}'"
            out.append(Violation(child, f"'{key}' is not a valid field for {where}."))
