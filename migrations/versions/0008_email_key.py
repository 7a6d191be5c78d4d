"""e-mail addresses matched whatever their case (leads.email_key)

Revision ID: 0008_email_key
Revises: 0007_login_sessions
Create Date: 2026-12-01 23:40:00

A lead is found by ``email_key``, its address in lower case, unique; the
address as typed stays in ``email``, for display, no longer unique by
itself. Nothing is merged: where leads' addresses differ only in case, the
oldest (lowest id) gets the key and the others keep their rows, contacts and
address unchanged, with no key; `flask leadcrm email-duplicates` lists them
for a supervisor to decide. A new registration with such an address finds
the oldest.
"""
from alembic import op
import sqlalchemy as sa


revision = '0008_email_key'
down_revision = '0007_login_sessions'
branch_labels = None
depends_on = None

leads = sa.table('leads', sa.column('id', sa.Integer), sa.column('email', sa.String), sa.column('email_key', sa.String))


def upgrade():
    with op.batch_alter_table('leads', schema=None) as batch_op:
        batch_op.add_column(sa.Column('email_key', sa.String(length=320), nullable=True))
        batch_op.drop_constraint('uq_leads_email', type_='unique')
        batch_op.create_unique_constraint(batch_op.f('uq_leads_email_key'), ['email_key'])

    # The keys are computed in Python, as leadcrm.identity.email_key does
    # (str.lower): SQLite's lower() folds ASCII letters only.
    connection = op.get_bind()
    owners = {}  # key -> the oldest lead with that address
    stored = sa.select(leads.c.id, leads.c.email).where(leads.c.email.is_not(None)).order_by(leads.c.id)
    for lead_id, email in connection.execute(stored):
        owners.setdefault(email.lower(), lead_id)
    if owners:
        connection.execute(
            leads.update().where(leads.c.id == sa.bindparam('lead_id')).values(email_key=sa.bindparam('key')),
            [{'lead_id': lead_id, 'key': key} for key, lead_id in owners.items()],
        )


def downgrade():
    # Addresses stay unique as typed after the upgrade (a new one that differs
    # from a stored one only in case is refused by email_key), so the old
    # constraint holds again.
    with op.batch_alter_table('leads', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_leads_email_key'), type_='unique')
        batch_op.drop_column('email_key')
        batch_op.create_unique_constraint(batch_op.f('uq_leads_email'), ['email'])
