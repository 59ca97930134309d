"""Generation metrics with well-kept libraries: sacrebleu (BLEU) and rouge-score (ROUGE-L)."""

from __future__ import annotations

import sacrebleu
from rouge_score import rouge_scorer

# name: (higher is better, what it measures)
METRICS = {
    "exact_match": (True, "share of outputs equal to the reference (whitespace-trimmed)"),
    "bleu": (True, "corpus BLEU, 0-100 (sacrebleu, 13a tokenisation)"),
    "rouge_l": (True, "mean ROUGE-L F1, 0-1 (rouge-score)"),
    "perplexity": (False, "exp of the mean loss on the reference tokens"),
}


def generation_metrics(predictions: list[str], references: list[str]) -> dict[str, float]:
    if len(predictions) != len(references) or not references:
        raise ValueError("need as many predictions as references, and at least one")
    pairs = [(p.strip(), r.strip()) for p, r in zip(predictions, references)]
    exact = sum(p == r for p, r in pairs) / len(pairs)
    bleu = sacrebleu.corpus_bleu([p for p, _ in pairs], [[r for _, r in pairs]]).score
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs) / len(pairs)
    return {"exact_match": exact, "bleu": bleu, "rouge_l": rouge}
