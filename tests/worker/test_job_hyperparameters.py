"""Extra hyper-parameters given on job create reach the trainer (observed in the adapter it writes)."""

from __future__ import annotations

import json

from tests.worker.test_job_lifecycle import create
from worker.tasks import run_job


def test_lora_knobs_from_the_job_shape_the_adapter(api, settings):
    job = create(api, hyperparameters={"n_epochs": 1, "lora_r": 4, "lora_alpha": 8, "use_dora": True,
                                       "train_top_k_layers": 1, "lr_scheduler": "constant", "warmup_ratio": 0.0})
    run_job(settings, job["id"])
    done = api.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert done["status"] == "succeeded", done["error"]
    assert done["hyperparameters"]["lora_r"] == 4 and done["hyperparameters"]["batch_size"] == 1
    config = json.loads((settings.jobs_dir / job["id"] / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["use_dora"], config["layers_to_transform"]) == (4, 8, True, [1])
    [result_id] = done["result_files"]
    rates = {line.split(",")[5] for line in api.get(f"/v1/files/{result_id}/content").text.splitlines()[1:]}
    assert len(rates) == 1  # constant schedule, no warm-up: one learning rate throughout
