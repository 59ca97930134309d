"""Metrics, the report's verdicts and the best checkpoint, on known inputs (no model)."""

from __future__ import annotations

import math

import pytest

from worker.evaluation import best_by_validation_loss, build_report, report_table
from worker.evaluation.metrics import generation_metrics


def test_identical_outputs_score_perfectly_and_unrelated_ones_do_not():
    refs = ["The cat sat on the mat.", "It is Paris."]
    perfect = generation_metrics([" The cat sat on the mat.\n", "It is Paris."], refs)
    assert perfect == {"exact_match": 1.0, "bleu": pytest.approx(100.0), "rouge_l": pytest.approx(1.0)}
    poor = generation_metrics(["Dogs bark loudly.", "It is Rome."], refs)
    assert poor["exact_match"] == 0.0 and poor["bleu"] < 20 and 0 < poor["rouge_l"] < 0.7


def test_report_says_where_fine_tuning_helped_and_by_how_much():
    result = {"n_examples": 4,
              "base": {"exact_match": 0.0, "bleu": 10.0, "rouge_l": 0.5, "perplexity": 40.0},
              "fine_tuned": {"exact_match": 0.75, "bleu": 10.0, "rouge_l": 0.4, "perplexity": 4.0}}
    report = build_report(result)
    verdicts = {r["metric"]: r["verdict"] for r in report["metrics"]}
    assert verdicts == {"exact_match": "better", "bleu": "same", "rouge_l": "worse", "perplexity": "better"}
    assert report["summary"] == "Mixed: better on exact_match, perplexity; worse on rouge_l."
    assert report["helped"] is False and report["exact_matches"] == 3
    ppl = next(r for r in report["metrics"] if r["metric"] == "perplexity")
    assert ppl["change"] == -36.0 and ppl["relative_change"] == pytest.approx(-0.9)
    table = report_table(report)
    assert "| perplexity (lower is better) | 40 | 4 | -36 (-90.0%) | better |" in table
    assert table.endswith("Mixed: better on exact_match, perplexity; worse on rouge_l. (4 held-out examples)")


def test_report_without_perplexity_stores_no_nan():
    result = {"n_examples": 1, "base": {"exact_match": 0.0, "bleu": 0.0, "rouge_l": 0.0, "perplexity": math.nan},
              "fine_tuned": {"exact_match": 1.0, "bleu": 100.0, "rouge_l": 1.0, "perplexity": math.nan}}
    report = build_report(result)
    assert report["helped"] and report["summary"] == "Fine-tuning helped: better on exact_match, bleu, rouge_l; no change on perplexity."
    assert next(r for r in report["metrics"] if r["metric"] == "perplexity")["base"] is None


def test_best_checkpoint_is_the_lowest_validation_loss():
    metrics = [{"step": 5, "valid_loss": None}, {"step": 10, "valid_loss": 2.0, "valid_mean_token_accuracy": 0.4},
               {"step": 20, "valid_loss": 1.0, "valid_mean_token_accuracy": 0.6}, {"step": 30, "valid_loss": 1.5}]
    best = best_by_validation_loss(metrics)
    assert best == {"step": 20, "valid_loss": 1.0, "valid_perplexity": math.e, "valid_mean_token_accuracy": 0.6}
    assert best_by_validation_loss([{"step": 5, "valid_loss": None}]) is None
