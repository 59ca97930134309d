"""The bad-input corpus: one row per case, each with the precise answer expected.

`upload` cases POST a file to /v1/files; `job` cases POST a body to /v1/fine_tuning/jobs (the
string "{training_file}" stands for a valid file uploaded beforehand); `get`/`delete` cases ask
for an id. Every case must answer `status` with error.code `code` and error.param `param`,
and change nothing in the database or in storage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

CHAT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
PROMPT = {"prompt": "2+2=", "completion": " 4"}


def jsonl(*objects: object) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objects)


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # upload | job | get | delete | raw_job
    payload: object
    status: int
    code: str | None
    param: str | None
    extra: dict = field(default_factory=dict)


TINY = "tiny-llama"


def job(**fields: object) -> dict:
    return {"model": TINY, "training_file": "{training_file}", **fields}


CASES = [
    # --- training files ---
    Case("truncated_json", "upload", b'{"messages": [{"role": "user", "content": "Hi"}, {"role": "assist',
         400, "invalid_file_format", "file"),
    Case("wrong_types_in_file", "upload", jsonl({"messages": "Hi there"}), 400, "invalid_file_format", "file"),
    Case("wrong_types_content_number", "upload",
         jsonl({"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "x"}]}),
         400, "invalid_file_format", "file"),
    Case("empty_file", "upload", b"", 400, "invalid_file_format", "file"),
    Case("blank_lines_only", "upload", b"\n\n  \n", 400, "invalid_file_format", "file"),
    Case("ten_megabyte_single_line", "upload",
         b'{"prompt": "' + b"a" * (10 << 20) + b'", "completion": "b"}', 400, "line_too_long", "file"),
    Case("invalid_utf8", "upload", b'{"prompt": "caf\xe9", "completion": " ok"}\n', 400, "invalid_file_format",
         "file"),
    Case("nul_bytes", "upload", b'{"prompt": "a\x00b", "completion": " c"}\n', 400, "invalid_file_format", "file"),
    Case("nul_bytes_outside_strings", "upload", b'\x00{"prompt": "a", "completion": " c"}\n', 400,
         "invalid_file_format", "file"),
    Case("role_typo", "upload",
         jsonl({"messages": [{"role": "usr", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}),
         400, "invalid_file_format", "file"),
    Case("missing_assistant_turn", "upload", jsonl({"messages": [{"role": "user", "content": "Hi"}]}),
         400, "invalid_file_format", "file"),
    Case("prompt_completion_mixed_with_chat", "upload", jsonl(CHAT, PROMPT), 400, "invalid_file_format", "file"),
    Case("prompt_and_messages_in_one_line", "upload", jsonl({**CHAT, **PROMPT}), 400, "invalid_file_format",
         "file"),
    Case("json_array_not_object", "upload", b'[1, 2, 3]\n', 400, "invalid_file_format", "file"),
    Case("unsupported_purpose", "upload", jsonl(CHAT), 400, "invalid_purpose", "purpose",
         {"purpose": "assistants"}),
    # --- job bodies ---
    Case("huge_n_epochs", "job", job(hyperparameters={"n_epochs": 10**12}), 400, "invalid_value",
         "hyperparameters.n_epochs"),
    Case("negative_batch_size", "job", job(hyperparameters={"batch_size": -8}), 400, "invalid_value",
         "hyperparameters.batch_size"),
    Case("unknown_hyperparameter", "job", job(hyperparameters={"n_epoch": 2}), 400, "invalid_value",
         "hyperparameters.n_epoch"),
    Case("unknown_top_level_field", "job", job(learning_rate=0.1), 400, "invalid_value", "learning_rate"),
    Case("wrong_type_model", "job", {"model": 5, "training_file": "{training_file}"}, 400, "invalid_value", "model"),
    Case("wrong_type_hyperparameters", "job", job(hyperparameters=[1, 2]), 400, "invalid_value", "hyperparameters"),
    Case("string_n_epochs", "job", job(hyperparameters={"n_epochs": "three"}), 400, "invalid_value",
         "hyperparameters.n_epochs"),
    Case("suffix_with_path_characters", "job", job(suffix="../../etc/passwd"), 400, "invalid_value", "suffix"),
    Case("suffix_with_slash", "job", job(suffix="a/b"), 400, "invalid_value", "suffix"),
    Case("suffix_with_nul", "job", job(suffix="a\x00b"), 400, "invalid_value", "suffix"),
    Case("training_file_traversal", "job", job(training_file="../../etc/passwd"), 400, "invalid_training_file",
         "training_file"),
    Case("validation_file_traversal", "job", job(validation_file="file-../x"), 400, "invalid_validation_file",
         "validation_file"),
    Case("missing_training_file", "job", {"model": TINY}, 400, "invalid_value", "training_file"),
    Case("truncated_json_body", "raw_job", b'{"model": "tiny-llama", "training_file": "fi', 400, "invalid_json",
         None),
    Case("json_body_not_object", "raw_job", b'[1, 2]', 400, "invalid_value", None),
    Case("invalid_utf8_body", "raw_job", b'{"model": "tiny-\xff"}', 400, "invalid_body", None),
    # --- ids with ../ ---
    Case("file_id_dotdot", "get", "/v1/files/..%2F..%2Fetc%2Fpasswd", 404, None, None),
    Case("file_id_dotdot_plain", "get", "/v1/files/..", 404, None, None),
    Case("file_content_dotdot", "get", "/v1/files/file-..%2F..%2Fx/content", 404, None, None),
    Case("file_id_with_dots", "get", "/v1/files/file-....", 404, "file_not_found", None),
    Case("delete_file_dotdot", "delete", "/v1/files/..%2Ffile-x", 404, None, None),
    Case("job_id_dotdot", "get", "/v1/fine_tuning/jobs/ftjob-..", 404, "fine_tuning_job_not_found", None),
    Case("job_events_dotdot", "get", "/v1/fine_tuning/jobs/..%2F..%2Fx/events", 404, None, None),
    Case("model_id_dotdot", "delete", "/v1/models/..%2F..%2Fbase_models", 404, "model_not_found", "model"),
]
