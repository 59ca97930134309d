"""Evaluation: a fine-tuned model against its base model on a held-out file, and the report.

Pure model code (no database, no Celery), like `worker.training`; `worker.eval_tasks` runs it as a
Celery task for the API.
"""

from .report import best_by_validation_loss, build_report, report_table
from .run import evaluate

__all__ = ["best_by_validation_loss", "build_report", "evaluate", "report_table"]
