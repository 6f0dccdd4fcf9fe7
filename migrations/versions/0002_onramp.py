"""MoonPay on-ramp: on-ramp transactions, webhook events, the dead letter queue and the alert log.

What the database guarantees here:
- a provider event is stored once: UNIQUE (provider, event_key) is what makes a redelivery a
  duplicate (`INSERT ... ON CONFLICT DO NOTHING` in the webhook route);
- statuses are known values (CHECK); a completed on-ramp transaction always names the ledger
  transaction that credited it, its amount and MoonPay's id; a MoonPay transaction and a ledger
  transaction each belong to at most one on-ramp transaction (UNIQUE);
- a webhook event waiting for a retry has a time; an event is parked in the DLQ at most once at a
  time (partial UNIQUE on unresolved entries); a resolution is attributed and noted (CHECK);
- the retry job and the sweeper scan only unfinished events (partial indexes on
  `retry_scheduled` / `pending`), and listings page on (created_at, id).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 04:00:00.959067
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('webhook_events',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('event_key', sa.String(length=64), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('external_id', sa.String(length=255), nullable=False),
    sa.Column('external_status', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=32), server_default=sa.text("'pending'"), nullable=False),
    sa.Column('outcome', sa.String(length=64), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('enqueue_count', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('enqueued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status <> 'processed' OR processed_at IS NOT NULL", name=op.f('ck_webhook_events_processed_has_time')),
    sa.CheckConstraint("status <> 'retry_scheduled' OR next_attempt_at IS NOT NULL", name=op.f('ck_webhook_events_retry_has_time')),
    sa.CheckConstraint("status IN ('pending', 'retry_scheduled', 'processed', 'dead_lettered')", name=op.f('ck_webhook_events_status_known')),
    sa.CheckConstraint('attempts >= 0', name=op.f('ck_webhook_events_attempts_non_negative')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_events')),
    sa.UniqueConstraint('provider', 'event_key', name='uq_webhook_events_provider_event_key')
    )
    with op.batch_alter_table('webhook_events', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_events_external_id', ['provider', 'external_id'], unique=False)
        batch_op.create_index('ix_webhook_events_pending_enqueued', ['enqueued_at'], unique=False, postgresql_where=sa.text("status = 'pending'"))
        batch_op.create_index('ix_webhook_events_retry_due', ['next_attempt_at'], unique=False, postgresql_where=sa.text("status = 'retry_scheduled'"))

    op.create_table('alert_log',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('alert_type', sa.String(length=64), nullable=False),
    sa.Column('severity', sa.String(length=16), nullable=False),
    sa.Column('title', sa.String(length=255), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('resolved', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolved_by', sa.Uuid(), nullable=True),
    sa.Column('resolution_note', sa.Text(), nullable=True),
    sa.CheckConstraint("alert_type ~ '^[A-Z][A-Z0-9_]*$'", name=op.f('ck_alert_log_alert_type_format')),
    sa.CheckConstraint("severity IN ('low', 'medium', 'high', 'critical')", name=op.f('ck_alert_log_severity_known')),
    sa.CheckConstraint('resolved = (resolved_at IS NOT NULL)', name=op.f('ck_alert_log_resolved_has_time')),
    sa.ForeignKeyConstraint(['resolved_by'], ['users.id'], name=op.f('fk_alert_log_resolved_by_users'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_log'))
    )
    with op.batch_alter_table('alert_log', schema=None) as batch_op:
        batch_op.create_index('ix_alert_log_type_created', ['alert_type', 'created_at'], unique=False)
        batch_op.create_index('ix_alert_log_unresolved', ['created_at'], unique=False, postgresql_where=sa.text('NOT resolved'))

    op.create_table('dead_letter_queue',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('provider', sa.String(length=32), nullable=False),
    sa.Column('external_id', sa.String(length=255), nullable=False),
    sa.Column('event_id', sa.Uuid(), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('failure_reason', sa.Text(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('resolved_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('resolved_by', sa.Uuid(), nullable=True),
    sa.Column('resolution', sa.String(length=16), nullable=True),
    sa.Column('resolution_note', sa.Text(), nullable=True),
    sa.CheckConstraint("resolution IS NULL OR resolution IN ('replay', 'discard')", name=op.f('ck_dead_letter_queue_resolution_known')),
    sa.CheckConstraint('(resolved_at IS NULL) = (resolution IS NULL)', name=op.f('ck_dead_letter_queue_resolution_has_time')),
    sa.CheckConstraint('resolved_at IS NULL OR (resolved_by IS NOT NULL AND resolution_note IS NOT NULL)', name=op.f('ck_dead_letter_queue_resolution_is_attributed')),
    sa.ForeignKeyConstraint(['event_id'], ['webhook_events.id'], name=op.f('fk_dead_letter_queue_event_id_webhook_events'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['resolved_by'], ['users.id'], name=op.f('fk_dead_letter_queue_resolved_by_users'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dead_letter_queue'))
    )
    with op.batch_alter_table('dead_letter_queue', schema=None) as batch_op:
        batch_op.create_index('ix_dead_letter_queue_created', ['created_at', 'id'], unique=False)
        batch_op.create_index('uq_dead_letter_queue_unresolved_event', ['event_id'], unique=True, postgresql_where=sa.text('resolved_at IS NULL'))

    op.create_table('onramp_transactions',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('wallet_id', sa.Uuid(), nullable=False),
    sa.Column('currency', sa.String(length=10), nullable=False),
    sa.Column('base_currency', sa.String(length=10), nullable=False),
    sa.Column('base_amount', sa.Numeric(precision=38, scale=18), nullable=False),
    sa.Column('status', sa.String(length=32), server_default=sa.text("'pending'"), nullable=False),
    sa.Column('moonpay_transaction_id', sa.String(length=255), nullable=True),
    sa.Column('crypto_transaction_id', sa.String(length=512), nullable=True),
    sa.Column('quote_currency_amount', sa.Numeric(precision=38, scale=18), nullable=True),
    sa.Column('failure_reason', sa.Text(), nullable=True),
    sa.Column('ledger_transaction_id', sa.Uuid(), nullable=True),
    sa.Column('provider_updated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("base_currency IN ('USD', 'EUR', 'GBP')", name=op.f('ck_onramp_transactions_base_currency_fiat')),
    sa.CheckConstraint("status <> 'completed' OR (ledger_transaction_id IS NOT NULL AND quote_currency_amount IS NOT NULL AND moonpay_transaction_id IS NOT NULL)", name=op.f('ck_onramp_transactions_completed_has_credit')),
    sa.CheckConstraint("status IN ('pending', 'waiting_payment', 'waiting_authorization', 'completed', 'failed')", name=op.f('ck_onramp_transactions_status_known')),
    sa.CheckConstraint('base_amount > 0', name=op.f('ck_onramp_transactions_base_amount_positive')),
    sa.CheckConstraint('quote_currency_amount IS NULL OR quote_currency_amount > 0', name=op.f('ck_onramp_transactions_quote_amount_positive')),
    sa.ForeignKeyConstraint(['ledger_transaction_id'], ['ledger_transactions.id'], name=op.f('fk_onramp_transactions_ledger_transaction_id_ledger_transactions'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_onramp_transactions_user_id_users'), ondelete='RESTRICT'),
    sa.ForeignKeyConstraint(['wallet_id'], ['wallets.id'], name=op.f('fk_onramp_transactions_wallet_id_wallets'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_onramp_transactions')),
    sa.UniqueConstraint('ledger_transaction_id', name='uq_onramp_transactions_ledger_transaction_id'),
    sa.UniqueConstraint('moonpay_transaction_id', name='uq_onramp_transactions_moonpay_transaction_id')
    )
    with op.batch_alter_table('onramp_transactions', schema=None) as batch_op:
        batch_op.create_index('ix_onramp_transactions_user_created', ['user_id', 'created_at', 'id'], unique=False)
        batch_op.create_index('ix_onramp_transactions_wallet_id', ['wallet_id'], unique=False)



def downgrade():
    with op.batch_alter_table('onramp_transactions', schema=None) as batch_op:
        batch_op.drop_index('ix_onramp_transactions_wallet_id')
        batch_op.drop_index('ix_onramp_transactions_user_created')

    op.drop_table('onramp_transactions')
    with op.batch_alter_table('dead_letter_queue', schema=None) as batch_op:
        batch_op.drop_index('uq_dead_letter_queue_unresolved_event', postgresql_where=sa.text('resolved_at IS NULL'))
        batch_op.drop_index('ix_dead_letter_queue_created')

    op.drop_table('dead_letter_queue')
    with op.batch_alter_table('alert_log', schema=None) as batch_op:
        batch_op.drop_index('ix_alert_log_unresolved', postgresql_where=sa.text('NOT resolved'))
        batch_op.drop_index('ix_alert_log_type_created')

    op.drop_table('alert_log')
    with op.batch_alter_table('webhook_events', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_events_retry_due', postgresql_where=sa.text("status = 'retry_scheduled'"))
        batch_op.drop_index('ix_webhook_events_pending_enqueued', postgresql_where=sa.text("status = 'pending'"))
        batch_op.drop_index('ix_webhook_events_external_id')

    op.drop_table('webhook_events')
