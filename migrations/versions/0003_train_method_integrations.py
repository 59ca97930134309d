"""train: a job's fine-tuning method (supervised or dpo) and its integrations (wandb)

Revision ID: 0003_train_method_integrations
Revises: 0002_orchestration
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_train_method_integrations"
down_revision = "0003_serve_quantization"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("method_type", sa.String(length=16), nullable=False, server_default="supervised"))
        batch.add_column(sa.Column("integrations", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_column("integrations")
        batch.drop_column("method_type")
