"""Least privilege: the admin access log, and the application role's grants.

- `admin_access_log` records every request to an admin route, allowed or refused; like the ledger
  it is append-only (a trigger refuses UPDATE and DELETE, whoever asks).
- The application's role (the user of DATABASE_URL) gets exactly the privileges of
  `wallet_api.db_roles.APP_PRIVILEGES`: SELECT and INSERT on the ledger and the audit tables,
  UPDATE where rows have a life cycle, never TRUNCATE, never ownership. Skipped when the
  migrations run as that same role (a single-role setup, which /ready reports as unsafe).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 09:00:00
"""
from alembic import op
import sqlalchemy as sa
from flask import current_app
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url

from wallet_api.db_roles import grant_app_privileges

# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('admin_access_log',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('actor_id', sa.Uuid(), nullable=True),
    sa.Column('actor_role', sa.String(length=16), nullable=True),
    sa.Column('action', sa.String(length=128), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('target_id', sa.String(length=255), nullable=True),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('user_agent', sa.String(length=255), nullable=True),
    sa.Column('request_id', sa.String(length=128), nullable=True),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_admin_access_log'))
    )
    with op.batch_alter_table('admin_access_log', schema=None) as batch_op:
        batch_op.create_index('ix_admin_access_log_action_created', ['action', 'created_at'], unique=False)
        batch_op.create_index('ix_admin_access_log_actor_created', ['actor_id', 'created_at'], unique=False)
        batch_op.create_index('ix_admin_access_log_created', ['created_at', 'id'], unique=False)
        batch_op.create_index('ix_admin_access_log_target', ['target_id'], unique=False)
    op.execute("CREATE TRIGGER admin_access_log_append_only BEFORE UPDATE OR DELETE ON admin_access_log "
               "FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()")
    grant_to_app_role()


def downgrade():
    op.execute("DROP TRIGGER IF EXISTS admin_access_log_append_only ON admin_access_log")
    with op.batch_alter_table('admin_access_log', schema=None) as batch_op:
        batch_op.drop_index('ix_admin_access_log_target')
        batch_op.drop_index('ix_admin_access_log_created')
        batch_op.drop_index('ix_admin_access_log_actor_created')
        batch_op.drop_index('ix_admin_access_log_action_created')
    op.drop_table('admin_access_log')


def grant_to_app_role():
    """Grant the application's role its privileges (later migrations that add tables call this too)."""
    bind = op.get_bind()
    app_role = make_url(current_app.config["SETTINGS"].sqlalchemy_url).username
    if not app_role or app_role == bind.execute(sa.text("SELECT current_user")).scalar_one():
        return
    grant_app_privileges(bind, app_role)
