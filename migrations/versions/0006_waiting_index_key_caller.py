"""waiting-queue index; Idempotency-Keys scoped to their caller

Revision ID: 0006_waiting_index_key_caller
Revises: 0005_accounts
Create Date: 2026-12-01 20:10:00

The oldest waiting contact of a source becomes one lookup in a partial index
(open contacts without an operator, by source and age) instead of a scan and
sort of the source's contacts. Idempotency keys get the caller that used
them as part of their primary key; keys stored before this revision belong
to no caller (they expire within 24 hours).
"""
from alembic import op
import sqlalchemy as sa


revision = '0006_waiting_index_key_caller'
down_revision = '0005_accounts'
branch_labels = None
depends_on = None

WAITING = "operator_id IS NULL AND status = 'open'"


def upgrade():
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.create_index(
            'ix_contacts_waiting', ['source_id', 'created_at', 'id'], unique=False,
            sqlite_where=sa.text(WAITING), postgresql_where=sa.text(WAITING),
        )
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('caller', sa.String(length=40), server_default='', nullable=False))
        batch_op.drop_constraint('pk_idempotency_keys', type_='primary')
        batch_op.create_primary_key('pk_idempotency_keys', ['caller', 'key'])


def downgrade():
    op.execute("DELETE FROM idempotency_keys WHERE caller <> ''")
    with op.batch_alter_table('idempotency_keys', schema=None) as batch_op:
        batch_op.drop_constraint('pk_idempotency_keys', type_='primary')
        batch_op.create_primary_key('pk_idempotency_keys', ['key'])
        batch_op.drop_column('caller')
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_index('ix_contacts_waiting')
