"""evaluations (issue 9)

Revision ID: 0002_dataeval
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002_dataeval"
down_revision = "0001"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("pk", PK, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("project_pk", PK, nullable=False),
        sa.Column("model", sa.String(length=300), nullable=False),
        sa.Column("base_model", sa.String(length=256), nullable=False),
        sa.Column("file_id", sa.String(length=64), nullable=False),
        sa.Column("max_tokens", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("result_file", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["project_pk"], ["projects.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("id"),
    )
    op.create_index("ix_evaluations_project_pk_pk", "evaluations", ["project_pk", "pk"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_evaluations_project_pk_pk", table_name="evaluations")
    op.drop_table("evaluations")
