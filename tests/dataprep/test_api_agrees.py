"""The CLI and the API judge a file the same way: same verdict, same reason."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from app.cli import main
from tests.data import chat_jsonl, completion_jsonl, preference_jsonl

PREFIX = "Invalid file format for fine-tuning: "

REJECTED = {
    "truncated-json": chat_jsonl(3) + b'{"messages": [{"role": "user", "content": "hi"}\n',
    "bad-role": chat_jsonl(11) + b'{"messages": [{"role": "robot", "content": "x"}]}\n',
    "no-assistant": b'{"messages": [{"role": "user", "content": "only a question"}]}\n' + chat_jsonl(11),
    "empty-completion": completion_jsonl(11) + b'{"prompt": "a", "completion": " "}\n',
    "mixed-formats": chat_jsonl(2) + completion_jsonl(1),
    "latin1": completion_jsonl(11) + b'{"prompt": "caf\xe9", "completion": "x"}\n',
    "empty": b"\n\n",
    # json.loads refuses them with ValueError / RecursionError, not JSONDecodeError
    "huge-integer": chat_jsonl(11) + b'{"id": ' + b"7" * 5000 + b', "messages": [{"role": "assistant", "content": "a"}]}\n',
    "deep-nesting": chat_jsonl(11) + b'{"x": ' + b"[" * 5000 + b"]" * 5000
                    + b', "messages": [{"role": "assistant", "content": "a"}]}\n',
    "preference-one-sided": preference_jsonl(11) + b'{"input": {"messages": [{"role": "user", "content": "hi"}]}, '
                            b'"preferred_output": [{"role": "assistant", "content": "a"}]}\n',
}


def cli(tmp_path, content: bytes):
    source = tmp_path / "data.jsonl"
    source.write_bytes(content)
    result = CliRunner().invoke(main, ["prepare-data", str(source), "--model", "none"], input="n\n" * 20)
    return result, tmp_path / "data_prepared.jsonl"


@pytest.mark.parametrize("content", REJECTED.values(), ids=REJECTED.keys())
def test_a_file_the_api_rejects_the_cli_calls_invalid_for_the_same_reason(api, tmp_path, content):
    response = api.upload(content)
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith(PREFIX)
    result, out = cli(tmp_path, content)
    assert result.exit_code == 1 and not out.exists()
    assert f"[error] {message.removeprefix(PREFIX)}" in result.output, result.output


@pytest.mark.parametrize("content", [chat_jsonl(12), completion_jsonl(12), chat_jsonl(3), preference_jsonl(12)],
                         ids=["chat", "completion", "small", "preference"])
def test_a_file_the_api_accepts_the_cli_finds_no_error_in(api, tmp_path, content):
    assert api.upload(content).status_code == 200
    result, out = cli(tmp_path, content)
    assert result.exit_code == 0 and "[error]" not in result.output, result.output
    assert api.upload(out.read_bytes()).status_code == 200


def test_the_cli_warns_of_a_small_file_with_the_message_a_job_on_it_fails_with(api, settings, tmp_path):
    from worker.tasks import run_job

    file_id = api.upload(chat_jsonl(5)).json()["id"]
    job = api.post("/v1/fine_tuning/jobs", json={"model": "tiny-llama", "training_file": file_id}).json()
    run_job(settings, job["id"])
    error = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["error"]["message"]
    result, _ = cli(tmp_path, chat_jsonl(5))
    assert f"[warning] {error}" in result.output


def test_validate_endpoint_reports_the_cli_findings(api, tmp_path, tiny_model_dir):
    from tests.conftest import TINY

    content = completion_jsonl(12) + completion_jsonl(1) + b'{"prompt": " ", "completion": " 5"}\n'
    file_id = api.upload(content).json()["id"]
    response = api.post(f"/v1/files/{file_id}/validate", json={"model": TINY, "max_tokens": 8})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "file.validation" and body["valid"] is True and body["n_examples"] == 14
    api_findings = {(f["check"], f["message"]) for f in body["findings"]}
    assert {c for c, _ in api_findings} >= {"duplicates", "empty_fields", "too_long", "too_few"}

    source = tmp_path / "data.jsonl"
    source.write_bytes(content)
    result = CliRunner().invoke(main, ["prepare-data", str(source), "--model", str(tiny_model_dir), "--max-tokens", "8"],
                                input="n\n" * 20)
    for _, message in api_findings:
        assert message in result.output, (message, result.output)

    assert api.post(f"/v1/files/{file_id}/validate", json={"model": "nope"}).json()["error"]["param"] == "model"
    assert api.post("/v1/files/file-nope/validate").status_code == 404
    assert api.post(f"/v1/files/{file_id}/validate").json()["findings"]  # no body: no length check, still the rest
