"""schemathesis against the served OpenAPI schema (issue 16), a bounded number of examples per
operation: no 5xx, and every response (errors included) matches what the schema documents.

(The operations are walked here with hypothesis directly: schemathesis' lazy pytest fixtures do
not run under pytest 9.)"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,
                                              status_code_conformance)

from tests.conftest import new_key

EXAMPLES = 8
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_every_operation_answers_within_its_schema(own_settings):
    from app.main import create_app

    app = create_app(own_settings.model_copy(update={"rate_limit_requests_per_minute": 0}))
    auth = {"Authorization": f"Bearer {new_key(own_settings)}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures, operations = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        def check(case) -> None:  # noqa: ANN001
            case.call_and_validate(headers=auth, checks=CHECKS)

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - gather every operation's failure, then report them all
            failures.append(f"{operation.label}: {str(exc)[:1500]}")
    assert operations > 20
    assert not failures, "\n\n".join(failures)
