"""The result file of a job (purpose ``fine-tune-results``): one CSV row per logged step.

OpenAI's columns first: step, train_loss, train_accuracy, valid_loss, valid_mean_token_accuracy;
then learning_rate and tokens_per_second. DPO jobs learn no token, so their accuracy columns hold
the reward accuracy (the share of pairs whose preferred reply gets the higher reward) and four
columns follow: train_reward_margin, valid_reward_margin (mean chosen minus rejected reward),
train_chosen_reward, train_rejected_reward.
"""

from __future__ import annotations

import csv
import io

COLUMNS = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy", "learning_rate",
           "tokens_per_second"]
DPO_COLUMNS = ["train_reward_margin", "valid_reward_margin", "train_chosen_reward", "train_rejected_reward"]


def results_csv(metrics: list[dict], method: str = "supervised") -> bytes:
    dpo = method == "dpo"
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(COLUMNS + (DPO_COLUMNS if dpo else []))
    for row in metrics:
        if dpo:
            accuracies = [row.get("train_reward_accuracy"), row.get("valid_reward_accuracy")]
        else:
            accuracies = [row.get("train_mean_token_accuracy"), row.get("valid_mean_token_accuracy")]
        values = [row.get("step"), row.get("train_loss"), accuracies[0], row.get("valid_loss"), accuracies[1],
                  row.get("learning_rate"), row.get("tokens_per_second")]
        values += [row.get(column) for column in DPO_COLUMNS] if dpo else []
        writer.writerow(["" if v is None else v for v in values])
    return out.getvalue().encode()
