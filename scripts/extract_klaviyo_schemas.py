"""Regenerate klaviyo_sandbox/klaviyo_schemas.json from Klaviyo's published OpenAPI spec.

The sandbox validates request bodies against Klaviyo's own schemas, but it must run
from a wheel or a container, so the parts it needs are committed as data; the spec
itself is vendored beside them (klaviyo_sandbox/reference/). This script is the only
way that file is produced; a test re-runs it and fails when the committed copy drifts
from the spec.

    python scripts/extract_klaviyo_schemas.py            # rewrite the committed file
    python scripts/extract_klaviyo_schemas.py --check    # exit 1 if it is stale
    python scripts/extract_klaviyo_schemas.py --out F    # write elsewhere
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# Vendored, gzipped (klaviyo_sandbox/reference/README.md says where it comes from).
DEFAULT_OAS = REPO / "klaviyo_sandbox" / "reference" / "klaviyo-openapi-2026-07-15.json.gz"
DEFAULT_OUT = REPO / "klaviyo_sandbox" / "klaviyo_schemas.json"

# The operations returnsync calls. Body-less GETs are listed for their rate limits.
OPERATIONS = (
    "create_or_update_profile",
    "create_event",
    "get_profiles",
    "bulk_import_profiles",
    "get_bulk_import_profiles_job",
    "get_errors_for_bulk_import_profiles_job",
    "bulk_create_events",
    "get_data_sources",
    "create_data_source",
    "get_data_source",
    "delete_data_source",
    "bulk_create_data_source_records",
    "create_data_source_record",
    "get_object_types",
    "get_records_for_object_type",
)

# Only keywords the sandbox validator acts on survive; descriptions and examples would
# triple the file without changing a single verdict.
VALIDATION_KEYWORDS = frozenset(
    {
        "type", "required", "enum", "nullable", "format", "default",
        "maxLength", "minLength", "maxItems", "minItems", "minimum", "maximum",
    }
)
SUBSCHEMA_LISTS = ("oneOf", "anyOf", "allOf")

JSON = Any


class ExtractError(RuntimeError):
    """The spec no longer has something the sandbox relies on."""


def resolve(node: JSON, schemas: dict[str, JSON], seen: tuple[str, ...] = ()) -> JSON:
    """Inline every local $ref; a cycle would make the committed file infinite, so refuse it."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            if name in seen:
                raise ExtractError(f"recursive schema {' -> '.join((*seen, name))}")
            if name not in schemas:
                raise ExtractError(f"dangling $ref {ref}")
            return resolve(schemas[name], schemas, (*seen, name))
        return {key: resolve(value, schemas, seen) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, schemas, seen) for item in node]
    return node


def clean(schema: JSON) -> JSON:
    """Keep validation keywords only; property *names* are data and always kept."""
    out: dict[str, JSON] = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: clean(sub) for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = clean(value)
        elif key == "additionalProperties":
            out[key] = value
        elif key in SUBSCHEMA_LISTS:
            out[key] = [clean(sub) for sub in value]
        elif key in VALIDATION_KEYWORDS:
            out[key] = value
    return out


def per_second(text: str, unit: str) -> int:
    count, _, suffix = text.partition("/")
    if suffix != unit:
        raise ExtractError(f"unexpected rate limit {text!r}, wanted /{unit}")
    return int(count)


def find_operation(oas: JSON, operation_id: str) -> tuple[str, str, JSON]:
    for path, item in oas["paths"].items():
        for method, operation in item.items():
            if isinstance(operation, dict) and operation.get("operationId") == operation_id:
                return method.upper(), path, operation
    raise ExtractError(f"operation {operation_id} not in the spec")


def build(oas: JSON, source_name: str, source_sha256: str) -> dict[str, JSON]:
    schemas = oas["components"]["schemas"]
    operations: dict[str, JSON] = {}
    for operation_id in OPERATIONS:
        method, path, operation = find_operation(oas, operation_id)
        limit = operation.get("x-klaviyo-ratelimit")
        if not limit:
            raise ExtractError(f"{operation_id} has no x-klaviyo-ratelimit")
        entry: dict[str, JSON] = {
            "method": method,
            "path": path,
            "scopes": sorted(operation.get("x-klaviyo-scopes", [])),
            "rate_limit": {
                "burst_per_second": per_second(limit["burst"], "s"),
                "steady_per_minute": per_second(limit["steady"], "m"),
            },
        }
        content = operation.get("requestBody", {}).get("content", {})
        if content:
            entry["content_types"] = sorted(content)
            media = content.get("application/vnd.api+json") or next(iter(content.values()))
            entry["request_schema"] = clean(resolve(media["schema"], schemas))
        operations[operation_id] = entry
    return {
        "generated_by": "scripts/extract_klaviyo_schemas.py",
        "source": {
            "file": source_name,
            "openapi_revision": oas["info"]["version"],
            "sha256": source_sha256,
        },
        "operations": operations,
    }


def render(data: dict[str, JSON]) -> str:
    return json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def extract(oas_path: Path) -> str:
    """The extract of the spec at `oas_path` (plain or gzipped: named and hashed as the plain file)."""
    raw = oas_path.read_bytes()
    name = oas_path.name
    if name.endswith(".gz"):
        raw, name = gzip.decompress(raw), name.removesuffix(".gz")
    return render(build(json.loads(raw), name, hashlib.sha256(raw).hexdigest()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--oas", type=Path, default=DEFAULT_OAS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    text = extract(args.oas)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale; rerun scripts/extract_klaviyo_schemas.py", file=sys.stderr)
            return 1
        print(f"{args.out} matches {args.oas.name}")
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text)} bytes) from {args.oas.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
