"""The report: did fine-tuning help, on which metrics, by how much. And the best checkpoint."""

from __future__ import annotations

import math

from .metrics import METRICS

# Differences smaller than this (relative to the base value, or absolute near zero) count as "no change".
TOLERANCE = 1e-6


def _finite(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None  # JSON (and Postgres) have no NaN


def _verdict(base: float | None, tuned: float | None, higher_is_better: bool) -> str:
    if base is None or tuned is None or abs(tuned - base) <= TOLERANCE * max(1.0, abs(base)):
        return "same"
    return "better" if (tuned > base) == higher_is_better else "worse"


def build_report(result: dict) -> dict:
    """Per metric: base, fine-tuned, change (absolute and relative) and verdict; and a one-line answer."""
    rows = []
    for name, (higher, description) in METRICS.items():
        base, tuned = _finite(result["base"][name]), _finite(result["fine_tuned"][name])
        change = tuned - base if base is not None and tuned is not None else None
        relative = change / abs(base) if change is not None and base else None
        rows.append({"metric": name, "base": base, "fine_tuned": tuned, "change": change,
                     "relative_change": relative, "higher_is_better": higher,
                     "verdict": _verdict(base, tuned, higher), "description": description})
    better = [r["metric"] for r in rows if r["verdict"] == "better"]
    worse = [r["metric"] for r in rows if r["verdict"] == "worse"]
    same = [r["metric"] for r in rows if r["verdict"] == "same"]
    if better and not worse:
        answer = f"Fine-tuning helped: better on {', '.join(better)}" + (
            f"; no change on {', '.join(same)}." if same else ".")
    elif better:
        answer = f"Mixed: better on {', '.join(better)}; worse on {', '.join(worse)}."
    elif worse:
        answer = f"Fine-tuning did not help: worse on {', '.join(worse)}."
    else:
        answer = "No measurable difference between the fine-tuned and the base model."
    return {"n_examples": result["n_examples"],
            "exact_matches": round(result["fine_tuned"]["exact_match"] * result["n_examples"]),
            "helped": bool(better) and not worse, "summary": answer,
            "metrics": rows}


def _number(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def report_table(report: dict) -> str:
    """A Markdown table (readable as plain text too), then the answer."""
    lines = ["| metric | base | fine-tuned | change | verdict |", "| --- | ---: | ---: | ---: | --- |"]
    for row in report["metrics"]:
        change = _number(row["change"])
        if row["relative_change"] is not None:
            change += f" ({row['relative_change']:+.1%})"
        arrow = "higher is better" if row["higher_is_better"] else "lower is better"
        lines.append(f"| {row['metric']} ({arrow}) | {_number(row['base'])} | {_number(row['fine_tuned'])} | "
                     f"{change} | {row['verdict']} |")
    return "\n".join(lines) + f"\n\n{report['summary']} ({report['n_examples']} held-out examples)"


def best_by_validation_loss(metrics: list[dict]) -> dict | None:
    """The logged step with the lowest validation loss (validation runs, and checkpoints are written,
    at each epoch end), with its perplexity; None without a validation file."""
    rows = [m for m in metrics if m.get("valid_loss") is not None]
    if not rows:
        return None
    best = min(rows, key=lambda m: m["valid_loss"])
    return {"step": best["step"], "valid_loss": best["valid_loss"], "valid_perplexity": math.exp(best["valid_loss"]),
            "valid_mean_token_accuracy": best.get("valid_mean_token_accuracy")}
