"""serve: the training quantization of fine-tuned models and checkpoints (QLoRA adapters are
served on a base loaded the same way)

Existing rows take it from their job's hyperparameters (`quantization`, absent = "none").

Revision ID: 0003_serve_quantization
Revises: 0002_orchestration
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_serve_quantization"
down_revision = "0003_secauth_admin_keys"
branch_labels = None
depends_on = None

TABLES = ("fine_tuned_models", "checkpoints")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("quantization", sa.String(length=8), nullable=False, server_default="none"))
    # Backfill in Python: JSON access differs between Postgres and SQLite.
    conn = op.get_bind()
    jobs = sa.table("fine_tuning_jobs", sa.column("pk"), sa.column("hyperparameters", sa.JSON))
    quantized = {pk: (hyper or {}).get("quantization") for pk, hyper in conn.execute(sa.select(jobs.c.pk, jobs.c.hyperparameters))}
    for table in TABLES:
        rows = sa.table(table, sa.column("job_pk"), sa.column("quantization"))
        for job_pk, value in quantized.items():
            if value in ("nf4", "int8"):
                conn.execute(sa.update(rows).where(rows.c.job_pk == job_pk).values(quantization=value))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("quantization")
