"""operators at work: presence, idle setting, last seen, operator users, operator history

Revision ID: 0009_operators_at_work
Revises: 0008_email_key
Create Date: 2026-12-02 02:40:00

Every operator gets a presence; those stored before start ``available``, so
routing goes on exactly as before. The idle setting starts off (NULL) and
nobody has been seen yet. Users may have the role ``operator`` and be linked
to one operator (and an operator to one user at most). Operator events (the
history of presence, activity, limit and idle changes) start empty. An
operator's closed contacts get a partial index by time (the inbox shows
today's).
"""
import sqlalchemy as sa
from alembic import op

import leadcrm.models

revision = '0009_operators_at_work'
down_revision = '0008_email_key'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('operators', schema=None) as batch_op:
        batch_op.add_column(sa.Column('presence', sa.String(length=20), server_default='available', nullable=False))
        batch_op.add_column(sa.Column('idle_away_minutes', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('last_seen_at', leadcrm.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_check_constraint(batch_op.f('ck_operators_presence_known'), "presence IN ('available', 'away')")
        batch_op.create_check_constraint(batch_op.f('ck_operators_idle_away_minutes_positive'), 'idle_away_minutes > 0')

    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.create_index(
            'ix_contacts_closed_by_operator', ['operator_id', 'closed_at'], unique=False,
            sqlite_where=sa.text("status = 'closed'"), postgresql_where=sa.text("status = 'closed'"),
        )

    op.create_table(
        'operator_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('operator_id', sa.Integer(), nullable=False),
        sa.Column('field', sa.String(length=20), nullable=False),
        sa.Column('value', sa.String(length=20), nullable=True),
        sa.Column('actor', sa.String(length=200), nullable=True),
        sa.Column('created_at', leadcrm.models.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "field IN ('presence', 'is_active', 'max_active_leads', 'idle_away_minutes')",
            name=op.f('ck_operator_events_field_known'),
        ),
        sa.ForeignKeyConstraint(
            ['operator_id'], ['operators.id'], name=op.f('fk_operator_events_operator_id_operators'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_operator_events')),
    )
    with op.batch_alter_table('operator_events', schema=None) as batch_op:
        batch_op.create_index('ix_operator_events_operator_id_id', ['operator_id', 'id'], unique=False)

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('operator_id', sa.Integer(), nullable=True))
        batch_op.create_unique_constraint(batch_op.f('uq_users_operator_id'), ['operator_id'])
        batch_op.create_foreign_key(
            batch_op.f('fk_users_operator_id_operators'), 'operators', ['operator_id'], ['id'], ondelete='SET NULL'
        )
        batch_op.drop_constraint(batch_op.f('ck_users_role_known'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_users_role_known'), "role IN ('supervisor', 'intake', 'operator')")
        batch_op.create_check_constraint(batch_op.f('ck_users_operator_only_for_operators'), "operator_id IS NULL OR role = 'operator'")


def downgrade():
    # Operator users cannot be kept by a schema without the role: they are deactivated intake users
    # afterwards (unlinked, their sessions ended), never silently given more rights.
    op.execute("DELETE FROM login_sessions WHERE user_id IN (SELECT id FROM users WHERE role = 'operator')")
    op.execute("UPDATE users SET role = 'intake', is_active = false, operator_id = NULL WHERE role = 'operator'")
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_users_operator_only_for_operators'), type_='check')
        batch_op.drop_constraint(batch_op.f('ck_users_role_known'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_users_role_known'), "role IN ('supervisor', 'intake')")
        batch_op.drop_constraint(batch_op.f('fk_users_operator_id_operators'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('uq_users_operator_id'), type_='unique')
        batch_op.drop_column('operator_id')
    with op.batch_alter_table('operator_events', schema=None) as batch_op:
        batch_op.drop_index('ix_operator_events_operator_id_id')
    op.drop_table('operator_events')
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_index('ix_contacts_closed_by_operator')
    with op.batch_alter_table('operators', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_operators_idle_away_minutes_positive'), type_='check')
        batch_op.drop_constraint(batch_op.f('ck_operators_presence_known'), type_='check')
        batch_op.drop_column('last_seen_at')
        batch_op.drop_column('idle_away_minutes')
        batch_op.drop_column('presence')
