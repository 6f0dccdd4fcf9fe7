"""Detect first: job runs, balance corrections, alert deduplication and notification state.

What the database guarantees here:
- at most one open alert per (type, subject): a partial UNIQUE index that `raise_alerts`
  upserts on, so concurrent raisers of the same alert bump one row; alert types and
  severities are known values, and a resolution is attributed and noted (CHECK);
- every run of a background job is a row whose end time is set exactly when it has finished;
- balance corrections (`flask reconcile-balance --fix`) are append-only, like the ledger;
- the credit-spike checks and the flagged-wallet listing read small partial indexes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 07:21:27.183828
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('job_runs',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('job_name', sa.String(length=64), nullable=False),
    sa.Column('trigger', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('requested_by', sa.Uuid(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('counts', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.CheckConstraint("(finished_at IS NOT NULL) = (status IN ('succeeded', 'failed', 'skipped'))", name=op.f('ck_job_runs_finished_has_time')),
    sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'skipped')", name=op.f('ck_job_runs_status_known')),
    sa.CheckConstraint("trigger IN ('scheduled', 'manual', 'cli')", name=op.f('ck_job_runs_trigger_known')),
    sa.ForeignKeyConstraint(['requested_by'], ['users.id'], name=op.f('fk_job_runs_requested_by_users'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_job_runs'))
    )
    with op.batch_alter_table('job_runs', schema=None) as batch_op:
        batch_op.create_index('ix_job_runs_created', ['created_at', 'id'], unique=False)
        batch_op.create_index('ix_job_runs_job_created', ['job_name', 'created_at', 'id'], unique=False)
        batch_op.create_index('ix_job_runs_last_success', ['job_name', 'finished_at'], unique=False, postgresql_where=sa.text("status = 'succeeded'"))

    op.create_table('balance_corrections',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('wallet_id', sa.Uuid(), nullable=False),
    sa.Column('currency', sa.String(length=10), nullable=False),
    sa.Column('balance_before', sa.Numeric(precision=38, scale=18), nullable=False),
    sa.Column('balance_after', sa.Numeric(precision=38, scale=18), nullable=False),
    sa.Column('last_entry_id', sa.BigInteger(), nullable=True),
    sa.Column('corrected_by', sa.String(length=255), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('job_run_id', sa.Uuid(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['job_run_id'], ['job_runs.id'], name=op.f('fk_balance_corrections_job_run_id_job_runs'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['wallet_id'], ['wallets.id'], name=op.f('fk_balance_corrections_wallet_id_wallets'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_balance_corrections'))
    )
    with op.batch_alter_table('balance_corrections', schema=None) as batch_op:
        batch_op.create_index('ix_balance_corrections_wallet_created', ['wallet_id', 'created_at'], unique=False)
    op.execute(AUDIT_REFUSE_CHANGE)
    op.execute("CREATE TRIGGER balance_corrections_append_only BEFORE UPDATE OR DELETE ON balance_corrections "
               "FOR EACH ROW EXECUTE FUNCTION audit_refuse_change()")

    # Alerts raised before subjects existed each become their own subject.
    op.add_column('alert_log', sa.Column('subject', sa.String(length=255), server_default='legacy', nullable=False))
    op.execute("UPDATE alert_log SET subject = 'legacy:' || id")
    op.alter_column('alert_log', 'subject', server_default=None)
    op.drop_constraint(op.f('ck_alert_log_alert_type_format'), 'alert_log', type_='check')
    op.create_check_constraint(op.f('ck_alert_log_alert_type_known'), 'alert_log', ALERT_TYPES_KNOWN)
    op.create_check_constraint(op.f('ck_alert_log_resolution_is_attributed'), 'alert_log',
                               'NOT resolved OR (resolved_by IS NOT NULL AND resolution_note IS NOT NULL)')
    with op.batch_alter_table('alert_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('occurrences', sa.Integer(), server_default=sa.text('1'), nullable=False))
        batch_op.add_column(sa.Column('last_seen_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False))
        batch_op.add_column(sa.Column('notified_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('notify_attempts', sa.Integer(), server_default=sa.text('0'), nullable=False))
        batch_op.create_check_constraint(batch_op.f('ck_alert_log_occurrences_positive'), 'occurrences >= 1')
        batch_op.drop_index(batch_op.f('ix_alert_log_unresolved'), postgresql_where='(NOT resolved)')
        batch_op.create_index('ix_alert_log_unresolved', ['created_at', 'id'], unique=False, postgresql_where=sa.text('NOT resolved'))
        batch_op.create_index('ix_alert_log_unnotified', ['created_at'], unique=False, postgresql_where=sa.text('notified_at IS NULL AND NOT resolved'))
        batch_op.create_index('uq_alert_log_open_subject', ['alert_type', 'subject'], unique=True, postgresql_where=sa.text('NOT resolved'))

    with op.batch_alter_table('onramp_transactions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('provider_base_amount', sa.Numeric(precision=38, scale=18), nullable=True))
        batch_op.create_index('ix_onramp_transactions_completed_at', ['completed_at'], unique=False, postgresql_where=sa.text("status = 'completed'"))
        batch_op.create_index('ix_onramp_transactions_user_completed_at', ['user_id', 'completed_at'], unique=False, postgresql_where=sa.text("status = 'completed'"))

    with op.batch_alter_table('wallets', schema=None) as batch_op:
        batch_op.create_index('ix_wallets_needs_reconciliation', ['created_at', 'id'], unique=False, postgresql_where=sa.text('needs_reconciliation'))
    with op.batch_alter_table('ledger_transactions', schema=None) as batch_op:
        batch_op.create_index('ix_ledger_transactions_onramp_reference', ['reference'], unique=False, postgresql_where=sa.text("kind = 'onramp_credit'"))
        batch_op.create_index('ix_ledger_transactions_onramp_created', ['created_at'], unique=False, postgresql_where=sa.text("kind = 'onramp_credit'"))



def downgrade():
    with op.batch_alter_table('ledger_transactions', schema=None) as batch_op:
        batch_op.drop_index('ix_ledger_transactions_onramp_created', postgresql_where=sa.text("kind = 'onramp_credit'"))
        batch_op.drop_index('ix_ledger_transactions_onramp_reference', postgresql_where=sa.text("kind = 'onramp_credit'"))
    with op.batch_alter_table('wallets', schema=None) as batch_op:
        batch_op.drop_index('ix_wallets_needs_reconciliation', postgresql_where=sa.text('needs_reconciliation'))

    with op.batch_alter_table('onramp_transactions', schema=None) as batch_op:
        batch_op.drop_index('ix_onramp_transactions_user_completed_at', postgresql_where=sa.text("status = 'completed'"))
        batch_op.drop_index('ix_onramp_transactions_completed_at', postgresql_where=sa.text("status = 'completed'"))
        batch_op.drop_column('provider_base_amount')

    with op.batch_alter_table('alert_log', schema=None) as batch_op:
        batch_op.drop_index('uq_alert_log_open_subject', postgresql_where=sa.text('NOT resolved'))
        batch_op.drop_index('ix_alert_log_unnotified', postgresql_where=sa.text('notified_at IS NULL AND NOT resolved'))
        batch_op.drop_index('ix_alert_log_unresolved', postgresql_where=sa.text('NOT resolved'))
        batch_op.create_index(batch_op.f('ix_alert_log_unresolved'), ['created_at'], unique=False, postgresql_where='(NOT resolved)')
        batch_op.drop_constraint(batch_op.f('ck_alert_log_occurrences_positive'), type_='check')
        batch_op.drop_column('notify_attempts')
        batch_op.drop_column('notified_at')
        batch_op.drop_column('last_seen_at')
        batch_op.drop_column('occurrences')
        batch_op.drop_column('subject')
    op.drop_constraint(op.f('ck_alert_log_resolution_is_attributed'), 'alert_log', type_='check')
    op.drop_constraint(op.f('ck_alert_log_alert_type_known'), 'alert_log', type_='check')
    op.create_check_constraint(op.f('ck_alert_log_alert_type_format'), 'alert_log', "alert_type ~ '^[A-Z][A-Z0-9_]*$'")

    with op.batch_alter_table('balance_corrections', schema=None) as batch_op:
        batch_op.drop_index('ix_balance_corrections_wallet_created')

    op.execute("DROP TRIGGER IF EXISTS balance_corrections_append_only ON balance_corrections")
    op.drop_table('balance_corrections')
    op.execute("DROP FUNCTION IF EXISTS audit_refuse_change()")
    with op.batch_alter_table('job_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_job_runs_last_success', postgresql_where=sa.text("status = 'succeeded'"))
        batch_op.drop_index('ix_job_runs_job_created')
        batch_op.drop_index('ix_job_runs_created')

    op.drop_table('job_runs')


ALERT_TYPES_KNOWN = ("alert_type IN ('BALANCE_MISMATCH', 'WEBHOOK_FAILURE', 'JOB_CRASH', 'CREDIT_SPIKE', "
                     "'PROVIDER_MISMATCH')")

AUDIT_REFUSE_CHANGE = """
    CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% is an append-only audit table: % is refused', TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END $$
"""
