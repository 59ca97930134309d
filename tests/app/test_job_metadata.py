"""`metadata` on fine-tuning jobs: OpenAI's limits with clear 400s, and the list filter
`GET /v1/fine_tuning/jobs?metadata[key]=value`, through the official SDK where it has a knob."""

from __future__ import annotations

import pytest
from openai import BadRequestError, OpenAI

from tests.conftest import TINY
from tests.data import chat_jsonl


@pytest.fixture
def sdk(api):
    return OpenAI(api_key=api.headers["Authorization"].removeprefix("Bearer "), base_url="http://testserver/v1",
                  http_client=api.client, max_retries=0)


def test_metadata_is_stored_and_filters_the_list(sdk, api, other_api):
    training = sdk.files.create(file=("t.jsonl", chat_jsonl()), purpose="fine-tune").id
    a = sdk.fine_tuning.jobs.create(model=TINY, training_file=training, metadata={"team": "red", "run": "1"})
    b = sdk.fine_tuning.jobs.create(model=TINY, training_file=training, metadata={"team": "red", "run": "2"})
    c = sdk.fine_tuning.jobs.create(model=TINY, training_file=training, metadata={"team": "blue"})
    d = sdk.fine_tuning.jobs.create(model=TINY, training_file=training)
    assert a.metadata == {"team": "red", "run": "1"} and d.metadata is None
    assert sdk.fine_tuning.jobs.retrieve(c.id).metadata == {"team": "blue"}

    def listed(**metadata) -> list[str]:
        return [j.id for j in sdk.fine_tuning.jobs.list(metadata=metadata, limit=100)]

    assert listed(team="red") == [b.id, a.id]
    assert listed(team="red", run="1") == [a.id]
    assert listed(team="green") == []
    assert listed() == [d.id, c.id, b.id, a.id]
    first_page = sdk.fine_tuning.jobs.list(metadata={"team": "red"}, limit=1)
    assert [j.id for j in first_page.data] == [b.id] and first_page.has_more
    assert [j.id for j in first_page] == [b.id, a.id]  # the SDK's next page keeps the filter
    # Another project's jobs never match.
    other = other_api.get("/v1/fine_tuning/jobs", params={"metadata[team]": "red"}).json()
    assert other["data"] == []
    for job in (a, b, c, d):
        sdk.fine_tuning.jobs.cancel(job.id)


@pytest.mark.parametrize("metadata, fragment", [
    ({f"k{i}": "v" for i in range(17)}, "at most 16 key-value pairs"),
    ({"k" * 65: "v"}, "keys must be 1 to 64 characters"),
    ({"key": "v" * 513}, "values must be at most 512 characters"),
    ({"key": 5}, "valid string"),
])
def test_metadata_limits_are_clear_400s_and_create_nothing(api, metadata, fragment):
    training = api.upload(chat_jsonl()).json()["id"]
    response = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": training, "metadata": metadata})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith("metadata") and fragment in error["message"], error
    assert api.get("/v1/fine_tuning/jobs").json()["data"] == []


def test_at_the_limits_is_accepted(api):
    training = api.upload(chat_jsonl()).json()["id"]
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    response = api.post("/v1/fine_tuning/jobs", json={"model": TINY, "training_file": training, "metadata": metadata})
    assert response.status_code == 200 and response.json()["metadata"] == metadata
    api.post(f"/v1/fine_tuning/jobs/{response.json()['id']}/cancel")


def test_bad_metadata_filter(sdk, api):
    response = api.get("/v1/fine_tuning/jobs", params={"metadata[" + "k" * 65 + "]": "x"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "metadata"
    response = api.get("/v1/fine_tuning/jobs", params={"metadata": "team=red"})
    assert response.status_code == 400 and "metadata[key]=value" in response.json()["error"]["message"]
