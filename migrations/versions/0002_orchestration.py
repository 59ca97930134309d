"""orchestration: job leases, lost attempts, enqueue time, estimated finish; idempotency keys

Revision ID: 0002_orchestration
Revises: 0002_legacy
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_orchestration"
down_revision = "0002_legacy"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("lost_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("enqueued_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("estimated_finish", sa.BigInteger(), nullable=True))
        batch.create_index("ix_jobs_status", ["status"])
    op.create_table(
        "idempotency_keys",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("project_pk", PK, nullable=False),
        sa.Column("scope", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("object_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["project_pk"], ["projects.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("project_pk", "scope", "key", name="uq_idempotency_keys_project_scope_key"),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_index("ix_jobs_status")
        for column in ("estimated_finish", "enqueued_at", "lost_attempts", "lease_expires_at", "lease_owner"):
            batch.drop_column(column)
