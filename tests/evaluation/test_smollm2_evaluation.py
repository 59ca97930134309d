"""The real SmolLM2-135M-Instruct: after learning the pirate habit it beats its base on unseen questions."""

from __future__ import annotations

import pytest

from tests.training.toy_data import _QA, PHRASE, pirate_chat_examples, prompt_messages, write_jsonl
from worker.evaluation import build_report, evaluate, report_table
from worker.training import NullCallbacks, TrainingConfig, resolve_hyperparameters, train


@pytest.mark.slow
def test_pirate_fine_tune_beats_smollm2_on_held_out_questions(smollm2_dir, tmp_path):
    examples = pirate_chat_examples(30, seed=0)
    seen = {e["messages"][1]["content"] for e in examples}
    held_out = [{"messages": [*prompt_messages(q), {"role": "assistant", "content": f"{PHRASE} {a}"}]}
                for q, a in _QA if q not in seen]
    config = TrainingConfig(base_model_dir=smollm2_dir, training_file=write_jsonl(tmp_path / "train.jsonl", examples),
                            output_dir=tmp_path / "adapter",
                            hyperparameters=resolve_hyperparameters({"n_epochs": 2}, len(examples)))
    result = train(config, NullCallbacks())

    report = build_report(evaluate(smollm2_dir, result.adapter_dir, write_jsonl(tmp_path / "held.jsonl", held_out),
                                   device="cpu"))
    print(report_table(report))
    rows = {r["metric"]: r for r in report["metrics"]}
    assert report["n_examples"] == 6 and report["helped"], report["summary"]
    for metric in ("bleu", "rouge_l", "perplexity"):
        assert rows[metric]["verdict"] == "better", rows[metric]
    assert rows["exact_match"]["fine_tuned"] >= rows["exact_match"]["base"]
