"""Users, refresh tokens, wallets, the ledger and its invariants.

The invariants live here, in the database, so that no code path can break them:
- a ledger transaction's entries sum to zero per currency (deferred constraint triggers,
  checked at COMMIT, so a service may insert the legs one by one);
- ledger rows are append-only (UPDATE and DELETE are refused; TRUNCATE too, unless the session
  sets `wallet.allow_ledger_truncate = on`, which only the test suite does);
- an entry's currency is its wallet's currency (composite foreign key);
- a user wallet never goes below zero (CHECK).

Revision ID: 0001
Revises:
Create Date: 2026-11-28 03:30:02.059973
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('users',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('email', sa.String(length=254), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("role IN ('USER', 'ADMIN')", name=op.f('ck_users_role_known')),
    sa.CheckConstraint('email = lower(email)', name=op.f('ck_users_email_normalised')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email', name=op.f('uq_users_email'))
    )
    op.create_table('idempotency_keys',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('response_code', sa.Integer(), nullable=True),
    sa.Column('response_body', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_idempotency_keys_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_idempotency_keys'))
    )
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.create_index('ix_idempotency_keys_expires_at', ['expires_at'], unique=False)
        batch_op.create_index('uq_idempotency_keys_user_key', ['user_id', 'key'], unique=True)

    op.create_table('ledger_transactions',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('currency', sa.String(length=10), nullable=False),
    sa.Column('amount', sa.Numeric(precision=38, scale=18), nullable=False),
    sa.Column('reference', sa.Text(), nullable=True),
    sa.Column('idempotency_key', sa.String(length=255), nullable=False),
    sa.Column('initiated_by', sa.Uuid(), nullable=True),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('amount > 0', name=op.f('ck_ledger_transactions_amount_positive')),
    sa.ForeignKeyConstraint(['initiated_by'], ['users.id'], name=op.f('fk_ledger_transactions_initiated_by_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_transactions')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_ledger_transactions_idempotency_key'))
    )
    op.create_table('refresh_tokens',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('family_id', sa.Uuid(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_refresh_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refresh_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_refresh_tokens_token_hash'))
    )
    with op.batch_alter_table('refresh_tokens', schema=None) as batch_op:
        batch_op.create_index('ix_refresh_tokens_family_id', ['family_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_refresh_tokens_user_id'), ['user_id'], unique=False)

    op.create_table('wallets',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=True),
    sa.Column('system_account', sa.String(length=32), nullable=True),
    sa.Column('currency', sa.String(length=10), nullable=False),
    sa.Column('balance', sa.Numeric(precision=38, scale=18), server_default=sa.text('0'), nullable=False),
    sa.Column('needs_reconciliation', sa.Boolean(), server_default=sa.text('false'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('(user_id IS NULL) <> (system_account IS NULL)', name=op.f('ck_wallets_owner_xor_system')),
    sa.CheckConstraint('system_account IS NOT NULL OR balance >= 0', name=op.f('ck_wallets_user_balance_non_negative')),
    sa.UniqueConstraint('id', 'currency', name='uq_wallets_id_currency'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_wallets_user_id_users'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_wallets'))
    )
    with op.batch_alter_table('wallets', schema=None) as batch_op:
        batch_op.create_index('uq_wallets_system_currency', ['system_account', 'currency'], unique=True, postgresql_where=sa.text('system_account IS NOT NULL'))
        batch_op.create_index('uq_wallets_user_currency', ['user_id', 'currency'], unique=True, postgresql_where=sa.text('user_id IS NOT NULL'))

    op.create_table('ledger_entries',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('transaction_id', sa.Uuid(), nullable=False),
    sa.Column('wallet_id', sa.Uuid(), nullable=False),
    sa.Column('currency', sa.String(length=10), nullable=False),
    sa.Column('amount', sa.Numeric(precision=38, scale=18), nullable=False),
    sa.Column('balance_after', sa.Numeric(precision=38, scale=18), nullable=True),
    sa.Column('idempotency_key', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('amount <> 0', name=op.f('ck_ledger_entries_amount_non_zero')),
    sa.ForeignKeyConstraint(['transaction_id'], ['ledger_transactions.id'], name=op.f('fk_ledger_entries_transaction_id_ledger_transactions')),
    sa.ForeignKeyConstraint(['wallet_id', 'currency'], ['wallets.id', 'wallets.currency'], name='fk_ledger_entries_wallet_currency'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ledger_entries')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_ledger_entries_idempotency_key'))
    )
    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ledger_entries_transaction_id'), ['transaction_id'], unique=False)
        batch_op.create_index('ix_ledger_entries_wallet_id_id', ['wallet_id', 'id'], unique=False)

    for statement in LEDGER_INVARIANTS:
        op.execute(statement)
    # System wallets for the currencies supported at this revision; later currencies get theirs
    # from a migration or on first use (the ledger service creates missing ones).
    op.execute("""
        INSERT INTO wallets (id, system_account, currency)
        SELECT gen_random_uuid(), account, currency
        FROM unnest(ARRAY['moonpay_clearing', 'platform_adjustments']) AS account,
             unnest(ARRAY['USD', 'EUR', 'GBP', 'USDC', 'BTC', 'SOL', 'ETH']) AS currency
    """)


def downgrade():
    for statement in DROP_LEDGER_INVARIANTS:
        op.execute(statement)
    with op.batch_alter_table('ledger_entries', schema=None) as batch_op:
        batch_op.drop_index('ix_ledger_entries_wallet_id_id')
        batch_op.drop_index(batch_op.f('ix_ledger_entries_transaction_id'))

    op.drop_table('ledger_entries')
    with op.batch_alter_table('wallets', schema=None) as batch_op:
        batch_op.drop_index('uq_wallets_user_currency', postgresql_where=sa.text('user_id IS NOT NULL'))
        batch_op.drop_index('uq_wallets_system_currency', postgresql_where=sa.text('system_account IS NOT NULL'))

    op.drop_table('wallets')
    with op.batch_alter_table('refresh_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_refresh_tokens_user_id'))
        batch_op.drop_index('ix_refresh_tokens_family_id')

    op.drop_table('refresh_tokens')
    op.drop_table('ledger_transactions')
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_index('uq_idempotency_keys_user_key')
        batch_op.drop_index('ix_idempotency_keys_expires_at')

    op.drop_table('idempotency_keys')
    op.drop_table('users')


LEDGER_INVARIANTS = [
    """
    CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        tx uuid := (to_jsonb(NEW) ->> TG_ARGV[0])::uuid;
        legs integer;
        unbalanced record;
    BEGIN
        SELECT count(*) INTO legs FROM ledger_entries WHERE transaction_id = tx;
        IF legs < 2 THEN
            RAISE EXCEPTION 'ledger transaction % has % entries; at least 2 are required', tx, legs
                USING ERRCODE = 'check_violation';
        END IF;
        SELECT currency, sum(amount) AS total INTO unbalanced
        FROM ledger_entries WHERE transaction_id = tx
        GROUP BY currency HAVING sum(amount) <> 0 LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'ledger transaction % is unbalanced: % entries sum to %',
                tx, unbalanced.currency, unbalanced.total USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE CONSTRAINT TRIGGER ledger_entries_balanced AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced('transaction_id')
    """,
    """
    CREATE CONSTRAINT TRIGGER ledger_transactions_balanced AFTER INSERT ON ledger_transactions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced('id')
    """,
    """
    CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'the ledger is append-only: % on % is refused; post a correcting transaction',
            TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
    END $$
    """,
    """
    CREATE FUNCTION ledger_refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF coalesce(current_setting('wallet.allow_ledger_truncate', true), '') <> 'on' THEN
            RAISE EXCEPTION 'the ledger is append-only: TRUNCATE on % is refused', TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        RETURN NULL;
    END $$
    """,
    *[
        sql
        for table in ("ledger_transactions", "ledger_entries")
        for sql in (
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change()",
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_truncate()",
        )
    ],
]

DROP_LEDGER_INVARIANTS = [
    *[f"DROP TRIGGER IF EXISTS {table}_{name} ON {table}"
      for table in ("ledger_transactions", "ledger_entries")
      for name in ("append_only", "no_truncate", "balanced")],
    "DROP FUNCTION IF EXISTS ledger_check_balanced()",
    "DROP FUNCTION IF EXISTS ledger_refuse_change()",
    "DROP FUNCTION IF EXISTS ledger_refuse_truncate()",
]
