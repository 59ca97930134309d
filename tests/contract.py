"""Check raw response bodies against OpenAI's published OpenAPI schemas (a copy of the subset
we mirror lives in tests/contract/), and parse them with the official SDK's types."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).parent / "contract" / "openai-openapi-subset.yaml"
URI = "urn:openai-openapi"


def _openapi30_bounds_to_2020(node: object) -> None:
    """The spec keeps a few OpenAPI 3.0 forms (`minimum: 0, exclusiveMinimum: true`) that JSON Schema
    2020-12 reads differently (`exclusiveMinimum: true` == 1); translate them as OpenAPI 3.1 does."""
    if isinstance(node, dict):
        for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if node.get(exclusive) is True:
                node[exclusive] = node.pop(bound)
            elif node.get(exclusive) is False:
                del node[exclusive]
        for value in node.values():
            _openapi30_bounds_to_2020(value)
    elif isinstance(node, list):
        for value in node:
            _openapi30_bounds_to_2020(value)


@lru_cache
def _registry() -> Registry:
    spec = yaml.safe_load(SPEC.read_text())
    _openapi30_bounds_to_2020(spec)
    return Registry().with_resource(URI, Resource(contents=spec, specification=DRAFT202012))


def assert_matches(body: object, schema: str) -> None:
    """Raise with every violation if `body` does not match components/schemas/<schema>."""
    validator = Draft202012Validator({"$ref": f"{URI}#/components/schemas/{schema}"}, registry=_registry())
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{schema} violations:\n" + "\n".join(f"- {list(e.path)}: {e.message}" for e in errors)
