"""What a legacy fine-tune (`/v1/fine-tunes`) adds to a job's run: the legacy columns of its
results CSV, and the classification metrics it may ask for, computed on its validation file
with the trained adapter.

Classification: every distinct completion in the validation file is a class; the model's
prediction for an example is the class it gives the highest log-likelihood after the prompt
(the completion followed by EOS, as it was trained). For a binary task the positive class's
probability (softmax over the classes' log-likelihoods) gives AUROC and AUPRC."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

# The legacy results columns: (column, key in the training loop's metric rows); written by
# worker/results_file.py.
COLUMNS = [("step", "step"), ("elapsed_tokens", "elapsed_tokens"), ("elapsed_examples", "elapsed_examples"),
           ("training_loss", "train_loss"), ("training_sequence_accuracy", "train_mean_sequence_accuracy"),
           ("training_token_accuracy", "train_mean_token_accuracy"), ("validation_loss", "valid_loss"),
           ("validation_sequence_accuracy", "valid_mean_sequence_accuracy"),
           ("validation_token_accuracy", "valid_mean_token_accuracy")]


def binary_metrics(truth: list[bool], scores: list[float], betas: list[float]) -> dict[str, float]:
    predicted = [s >= 0.5 for s in scores]
    tp = sum(t and p for t, p in zip(truth, predicted))
    fp = sum(p and not t for t, p in zip(truth, predicted))
    fn = sum(t and not p for t, p in zip(truth, predicted))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    out = {"classification/accuracy": sum(t == p for t, p in zip(truth, predicted)) / len(truth),
           "classification/precision": precision, "classification/recall": recall,
           "classification/auroc": auroc(truth, scores), "classification/auprc": average_precision(truth, scores)}
    for beta in betas:
        b2 = beta * beta
        denominator = b2 * precision + recall
        # OpenAI named these columns f1.0, f0.5, ...
        out[f"classification/f{float(beta)}"] = (1 + b2) * precision * recall / denominator if denominator else 0.0
    return out


def auroc(truth: list[bool], scores: list[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    positives = [s for s, t in zip(scores, truth) if t]
    negatives = [s for s, t in zip(scores, truth) if not t]
    if not positives or not negatives:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def average_precision(truth: list[bool], scores: list[float]) -> float:
    """Area under the precision-recall curve as the mean precision at each positive's rank."""
    ranked = sorted(zip(scores, truth), key=lambda x: -x[0])
    n_pos = sum(truth)
    if not n_pos:
        return float("nan")
    hits, total = 0, 0.0
    for rank, (_, is_pos) in enumerate(ranked, start=1):
        if is_pos:
            hits += 1
            total += hits / rank
    return total / n_pos


def multiclass_metrics(truth: list[str], predicted: list[str]) -> dict[str, float]:
    classes = sorted(set(truth))
    f1_sum = 0.0
    for c in classes:
        tp = sum(t == c and p == c for t, p in zip(truth, predicted))
        fp = sum(t != c and p == c for t, p in zip(truth, predicted))
        fn = sum(t == c and p != c for t, p in zip(truth, predicted))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        f1_sum += f1 * sum(t == c for t in truth)
    return {"classification/accuracy": sum(t == p for t, p in zip(truth, predicted)) / len(truth),
            "classification/weighted_f1_score": f1_sum / len(truth)}


def classification_metrics(base_model_dir: Path, adapter_dir: Path, validation_file: Path,
                           options: dict[str, Any], max_seq_len: int = 1024) -> dict[str, float]:
    import torch
    from app.core.safe_loading import load_adapter

    from worker.training.data import read_jsonl, tokenize_example
    from worker.training.model_loading import load_base_model

    examples = read_jsonl(validation_file)
    if not examples or any("prompt" not in e for e in examples):
        raise ValueError("classification metrics need a validation file of prompt/completion examples")
    classes = sorted({e["completion"] for e in examples})
    model, tokenizer = load_base_model(base_model_dir, "cpu")
    model = load_adapter(model, adapter_dir).eval()

    @torch.no_grad()
    def log_likelihood(prompt: str, completion: str) -> float:
        tokens = tokenize_example(tokenizer, {"prompt": prompt, "completion": completion}, max_seq_len)
        logits = model(input_ids=torch.tensor([tokens.input_ids])).logits[0, :-1].float()
        targets = torch.tensor(tokens.labels[1:])
        mask = targets != -100
        logp = torch.log_softmax(logits[mask], dim=-1).gather(1, targets[mask].unsqueeze(1))
        return float(logp.sum())

    truth, predicted, positive_scores = [], [], []
    positive = options.get("classification_positive_class")
    for example in examples:
        scores = {c: log_likelihood(example["prompt"], c) for c in classes}
        truth.append(example["completion"])
        predicted.append(max(scores, key=scores.get))
        if positive is not None:
            top = max(scores.values())
            norm = sum(math.exp(s - top) for s in scores.values())
            positive_scores.append(math.exp(scores[positive] - top) / norm if positive in scores else 0.0)
    if options.get("classification_n_classes", 2) == 2 and positive is not None:
        return binary_metrics([t == positive for t in truth], positive_scores,
                              options.get("classification_betas") or [1.0])
    return multiclass_metrics(truth, predicted)
