"""Evaluations API wire models: a fine-tuned model against its base on a held-out file.

In the spirit of OpenAI's eval runs (`object`, `status` queued/in_progress/completed/failed,
`data_source`, `result_counts`, `per_testing_criteria_results`, `error`), with the comparison
this server is for: `report` holds every metric for the base and the fine-tuned model, the change,
a verdict per metric and a one-line answer; `report_table` is the same as a Markdown table.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class CreateEvaluationRequest(BaseModel):
    model: str = Field(description="A fine-tuned model id (or one of its checkpoints).")
    file_id: str = Field(description="A held-out file (purpose fine-tune) to evaluate on.")
    max_tokens: int | None = Field(None, ge=1, le=2048, description="Tokens to generate per example "
                                   "(default: the longest reference + 8).")


class DataSource(BaseModel):
    type: Literal["jsonl"] = "jsonl"
    source: dict[str, str]


class ResultCounts(BaseModel):
    total: int
    errored: int = 0
    passed: int  # fine-tuned outputs equal to the reference (exact match)
    failed: int


class CriterionResult(BaseModel):
    testing_criteria: str
    passed: int
    failed: int


class EvaluationError(BaseModel):
    code: str
    message: str


class Evaluation(BaseModel):
    object: Literal["evaluation"] = "evaluation"
    id: str
    created_at: int
    finished_at: int | None = None
    status: Literal["queued", "in_progress", "completed", "failed"]
    model: str
    base_model: str
    data_source: DataSource
    result_counts: ResultCounts | None = None
    per_testing_criteria_results: list[CriterionResult] | None = None
    report: dict[str, Any] | None = None
    report_table: str | None = None
    result_file: str | None = None  # per-example prompts, references and both models' outputs (JSONL)
    error: EvaluationError | None = None
