"""The legacy results file and its classification metrics, on cases worked out by hand."""

from __future__ import annotations

import csv
import io

import pytest

from worker.legacy_results import COLUMNS, auroc, average_precision, binary_metrics, multiclass_metrics
from worker.results_file import results_csv


def test_binary_metrics_by_hand():
    truth, scores = [True, False, True, False], [0.9, 0.8, 0.7, 0.1]
    # Pairs (positive, negative): 0.9>0.8, 0.9>0.1, 0.7<0.8, 0.7>0.1 -> 3 of 4.
    assert auroc(truth, scores) == 0.75
    # Ranked T F T F: precision 1/1 at the first positive, 2/3 at the second.
    assert average_precision(truth, scores) == pytest.approx((1 + 2 / 3) / 2)
    m = binary_metrics(truth, scores, [1.0, 2.0])
    # Predicted (>= 0.5) T T T F: tp 2, fp 1, fn 0.
    assert m["classification/accuracy"] == 0.75
    assert m["classification/precision"] == pytest.approx(2 / 3) and m["classification/recall"] == 1.0
    assert m["classification/f1.0"] == pytest.approx(0.8)
    assert m["classification/f2.0"] == pytest.approx(5 * (2 / 3) / (4 * (2 / 3) + 1))
    assert auroc([True, False], [0.5, 0.5]) == 0.5  # ties count half


def test_multiclass_metrics_by_hand():
    m = multiclass_metrics(["a", "a", "b", "c"], ["a", "b", "b", "c"])
    assert m["classification/accuracy"] == 0.75
    # F1: a 2/3 (weight 2), b 2/3 (weight 1), c 1 (weight 1).
    assert m["classification/weighted_f1_score"] == pytest.approx((2 * 2 / 3 + 2 / 3 + 1) / 4)


def test_results_csv_has_the_legacy_columns_and_metrics_on_the_last_row():
    rows = [{"step": 1, "elapsed_tokens": 30, "elapsed_examples": 2, "train_loss": 2.5,
             "train_mean_sequence_accuracy": 0.0, "train_mean_token_accuracy": 0.25},
            {"step": 2, "elapsed_tokens": 61, "elapsed_examples": 4, "train_loss": 2.0,
             "train_mean_sequence_accuracy": 0.5, "train_mean_token_accuracy": 0.5, "valid_loss": 1.9,
             "valid_mean_sequence_accuracy": 0.5, "valid_mean_token_accuracy": 0.6}]
    parsed = list(csv.DictReader(io.StringIO(results_csv(rows, COLUMNS, {"classification/accuracy": 0.5}).decode())))
    assert list(parsed[0]) == ["step", "elapsed_tokens", "elapsed_examples", "training_loss",
                               "training_sequence_accuracy", "training_token_accuracy", "validation_loss",
                               "validation_sequence_accuracy", "validation_token_accuracy", "classification/accuracy"]
    assert parsed[0]["validation_loss"] == "" and parsed[0]["classification/accuracy"] == ""
    assert parsed[1] == {"step": "2", "elapsed_tokens": "61", "elapsed_examples": "4", "training_loss": "2.0",
                         "training_sequence_accuracy": "0.5", "training_token_accuracy": "0.5",
                         "validation_loss": "1.9", "validation_sequence_accuracy": "0.5",
                         "validation_token_accuracy": "0.6", "classification/accuracy": "0.5"}
