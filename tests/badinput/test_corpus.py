"""Every case of the bad-input corpus (corpus.py) gets its precise 4xx and changes nothing:
the database's rows and the data dir's files are the same before and after."""

from __future__ import annotations

import json

import pytest

from tests.badinput.corpus import CASES, CHAT, Case, jsonl
from tests.badinput.snapshot import snapshot


@pytest.fixture
def training_file(api) -> str:
    response = api.upload(jsonl(CHAT, CHAT))
    assert response.status_code == 200, response.text
    return response.json()["id"]


def _fill(value: object, training_file: str) -> object:
    return json.loads(json.dumps(value).replace("{training_file}", training_file))


def send(api, case: Case, training_file: str):
    if case.kind == "upload":
        return api.post("/v1/files", files={"file": ("train.jsonl", case.payload)},
                        data={"purpose": case.extra.get("purpose", "fine-tune")})
    if case.kind == "job":
        return api.post("/v1/fine_tuning/jobs", json=_fill(case.payload, training_file))
    if case.kind == "raw_job":
        return api.client.post("/v1/fine_tuning/jobs", content=case.payload,
                               headers={**api.headers, "content-type": "application/json"})
    if case.kind == "get":
        return api.get(case.payload)
    return api.delete(case.payload)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_a_precise_error_and_changes_nothing(api, settings, training_file, case):
    before = snapshot(settings)
    response = send(api, case, training_file)
    assert response.status_code == case.status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert (error["code"], error["param"]) == (case.code, case.param), error
    assert snapshot(settings) == before
