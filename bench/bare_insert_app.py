"""The baseline of bench/create_job.py: a bare FastAPI app whose one endpoint does the database
insert a job create does (the job row and its first event, one transaction), nothing else: no
auth, no validation, no idempotency, no broker. Run by the bench with uvicorn, like the API.

    BARE_DATABASE_URL=postgresql+psycopg://... BARE_PROJECT_PK=1 uvicorn bench.bare_insert_app:app
"""

from __future__ import annotations

import os
import random

from fastapi import FastAPI

from app.core.db import session_scope
from app.core.ids import new_id
from app.models import FineTuningJob, JobEvent

URL = os.environ["BARE_DATABASE_URL"]
PROJECT_PK = int(os.environ["BARE_PROJECT_PK"])
app = FastAPI()


@app.post("/jobs")
def create_job(body: dict) -> dict:
    with session_scope(URL) as session:
        job = FineTuningJob(id=new_id("ftjob"), project_pk=PROJECT_PK, model=body["model"],
                            training_file=body["training_file"], seed=random.randrange(2**31), hyperparameters={},
                            status="validating_files", result_files=[])
        session.add(job)
        session.flush()
        session.add(JobEvent(id=new_id("ftevent"), job_pk=job.pk, message=f"Created fine-tuning job: {job.id}"))
    return {"id": job.id, "object": "fine_tuning.job", "status": job.status}
