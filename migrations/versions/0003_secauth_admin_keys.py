"""admin keys: api_keys.role ("project" or "admin"); an admin key belongs to no project

Revision ID: 0003_secauth_admin_keys
Revises: 0002_orchestration
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_secauth_admin_keys"
down_revision = "0002_orchestration"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("role", sa.String(length=16), nullable=False, server_default="project"))
        batch.alter_column("project_pk", existing_type=PK, nullable=True)
        batch.create_check_constraint(
            "ck_api_keys_role_project",
            "(role = 'project' AND project_pk IS NOT NULL) OR (role = 'admin' AND project_pk IS NULL)")


def downgrade() -> None:
    op.execute("DELETE FROM api_keys WHERE role = 'admin'")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_constraint("ck_api_keys_role_project", type_="check")
        batch.alter_column("project_pk", existing_type=PK, nullable=False)
        batch.drop_column("role")
