"""Two fine-tunes trained (real PEFT training of the tiny model) to answer differently, one always
with "zebra", the other always with "violin", asked at the same time as their base through the API:
each answers as it was trained, the base as the base, in shared batches (no cross-talk)."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx

from app.main import create_app
from tests.app.serving_helpers import register_fine_tune
from tests.conftest import TINY, new_key
from tests.training.test_loop import Recorder
from worker.training import Hyperparameters, train
from worker.training.config import TrainingConfig

WORDS = ("zebra", "violin")


def trained_adapter(tmp_path, base_dir, word: str):
    data = tmp_path / f"{word}.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Question number {i}?"},
        {"role": "assistant", "content": f"{word} {word} {word}"}]}) + "\n" for i in range(12)))
    config = TrainingConfig(base_model_dir=base_dir, training_file=data, output_dir=tmp_path / word,
                            hyperparameters=Hyperparameters(n_epochs=8, batch_size=4, learning_rate_multiplier=10.0),
                            log_every=100)
    return train(config, Recorder()).adapter_dir


def test_two_trained_fine_tunes_answer_as_trained_concurrently(settings, tiny_model_dir, tmp_path):
    project = f"p{uuid.uuid4().hex[:10]}"
    key = new_key(settings, project)
    models = {word: register_fine_tune(settings, project, 0, tiny_model_dir,
                                       adapter=trained_adapter(tmp_path, tiny_model_dir, word))[0] for word in WORDS}
    asked = [models["zebra"], models["violin"], TINY, models["violin"], models["zebra"]]
    app = create_app(settings)

    async def ask(client: httpx.AsyncClient, model: str) -> str:
        response = await client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json={
            "model": model, "messages": [{"role": "user", "content": "Question number 99?"}],
            "max_tokens": 8, "temperature": 0})
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]

    async def run() -> list[str]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await asyncio.gather(*(ask(client, m) for m in asked))

    answers = dict(zip(range(len(asked)), asyncio.run(run())))
    for i, model in enumerate(asked):
        said = {word for word in WORDS if word in answers[i]}
        expected = {word for word, m in models.items() if m == model}  # the base: neither word
        assert said == expected, (model, answers[i])
    scheduler = app.state.engine.loaded()[0]
    assert scheduler.mixed_steps > 0  # the adapters and the base shared forwards
    app.state.engine.close()
