"""End to end on the real SmolLM2-135M-Instruct: a learned habit shows up on unseen questions."""

import pytest
import torch

from worker.training import NullCallbacks, TrainingConfig, load_base_model, resolve_hyperparameters, train

from .toy_data import HELD_OUT_QUESTIONS, PHRASE, pirate_chat_examples, prompt_messages, write_jsonl


def greedy_answers(model, tokenizer, questions: list[str]) -> list[str]:
    answers = []
    for question in questions:
        inputs = tokenizer.apply_chat_template(
            prompt_messages(question), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return answers


@pytest.mark.slow
def test_fine_tuned_smollm2_answers_like_a_pirate(smollm2_dir, tmp_path):
    examples = pirate_chat_examples(30, seed=0)
    config = TrainingConfig(
        base_model_dir=smollm2_dir,
        training_file=write_jsonl(tmp_path / "train.jsonl", examples),
        output_dir=tmp_path / "adapter",
        hyperparameters=resolve_hyperparameters({}, len(examples)),  # all "auto"
    )
    result = train(config, NullCallbacks())
    assert not result.stopped and (result.adapter_dir / "adapter_model.safetensors").is_file()

    from peft import PeftModel

    model, tokenizer = load_base_model(smollm2_dir, "cpu")
    model.eval()
    base_answers = greedy_answers(model, tokenizer, HELD_OUT_QUESTIONS)
    tuned = PeftModel.from_pretrained(model, result.adapter_dir).eval()
    tuned_answers = greedy_answers(tuned, tokenizer, HELD_OUT_QUESTIONS)

    assert not any(a.strip().startswith(PHRASE) for a in base_answers), base_answers
    assert all(a.strip().startswith(PHRASE) for a in tuned_answers), tuned_answers
