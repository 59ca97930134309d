"""`GET /v1/fine_tuning/jobs?metadata[key]=value`: the query's metadata pairs, checked."""

from __future__ import annotations

import re

from app.core.errors import invalid
from app.protocol.fine_tuning import check_metadata

_PARAM = re.compile(r"metadata\[(.*)\]")


def metadata_filter(query: list[tuple[str, str]]) -> dict[str, str] | None:
    pairs: dict[str, str] = {}
    for name, value in query:
        if name == "metadata" or name.startswith("metadata["):
            match = _PARAM.fullmatch(name)
            if match is None:
                raise invalid("Filter by metadata as metadata[key]=value.", param="metadata",
                              code="invalid_metadata_filter")
            if match.group(1) in pairs and pairs[match.group(1)] != value:
                raise invalid(f"metadata[{match.group(1)}] is given twice with different values.",
                              param="metadata", code="invalid_metadata_filter")
            pairs[match.group(1)] = value
    try:
        check_metadata(pairs)
    except ValueError as exc:
        raise invalid(f"Invalid metadata filter: {exc}", param="metadata", code="invalid_metadata_filter") from None
    return pairs or None
