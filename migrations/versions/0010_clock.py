"""routing that knows the clock: schedules, absences, offers, the worker's tables

Revision ID: 0010_clock
Revises: 0009_operators_at_work
Create Date: 2026-12-02 06:00:00

Operators get a schedule time zone (NULL: the organisation's) and the
stretch on shift the claims check (both ends NULL: always on shift, as every
operator stored before is). Working hours and absences start empty. Sources
get offers, off (NULL) for every source stored before, so routing goes on
exactly as before. The worker's heartbeat, drain requests and the
organisation's settings are new tables. The history knows two new words:
contact events ``timeout`` and operator events ``schedule``.
"""
import sqlalchemy as sa
from alembic import op

import leadcrm.models

revision = '0010_clock'
down_revision = '0009_operators_at_work'
branch_labels = None
depends_on = None

REASONS_BEFORE = "reason IN ('registered', 'queue', 'sticky', 'manual', 'override', 'closed', 'reopened')"
REASONS = "reason IN ('registered', 'queue', 'sticky', 'manual', 'override', 'closed', 'reopened', 'timeout')"
FIELDS_BEFORE = "field IN ('presence', 'is_active', 'max_active_leads', 'idle_away_minutes')"
FIELDS = "field IN ('presence', 'is_active', 'max_active_leads', 'idle_away_minutes', 'schedule')"


def upgrade():
    op.create_table(
        'settings',
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('value', sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_settings')),
    )
    op.create_table(
        'worker_beats',
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('started_at', leadcrm.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('beat_at', leadcrm.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_worker_beats')),
    )
    op.create_table(
        'drain_requests',
        sa.Column('source_id', sa.Integer(), nullable=False),
        sa.Column('requested_at', leadcrm.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ['source_id'], ['sources.id'], name=op.f('fk_drain_requests_source_id_sources'), ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('source_id', name=op.f('pk_drain_requests')),
    )
    op.create_table(
        'operator_absences',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('operator_id', sa.Integer(), nullable=False),
        sa.Column('starts_on', sa.Date(), nullable=False),
        sa.Column('ends_on', sa.Date(), nullable=False),
        sa.Column('note', sa.String(length=200), nullable=True),
        sa.CheckConstraint('ends_on >= starts_on', name=op.f('ck_operator_absences_ends_after_start')),
        sa.ForeignKeyConstraint(
            ['operator_id'], ['operators.id'], name=op.f('fk_operator_absences_operator_id_operators'),
            ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_operator_absences')),
    )
    with op.batch_alter_table('operator_absences', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_operator_absences_operator_id'), ['operator_id'], unique=False)
    op.create_table(
        'operator_hours',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('operator_id', sa.Integer(), nullable=False),
        sa.Column('weekday', sa.Integer(), nullable=False),
        sa.Column('starts', sa.Integer(), nullable=False),
        sa.Column('ends', sa.Integer(), nullable=False),
        sa.CheckConstraint('starts <> ends', name=op.f('ck_operator_hours_not_empty')),
        sa.CheckConstraint(
            'starts BETWEEN 0 AND 1439 AND ends BETWEEN 1 AND 1440', name=op.f('ck_operator_hours_minutes_of_day')
        ),
        sa.CheckConstraint('weekday BETWEEN 1 AND 7', name=op.f('ck_operator_hours_weekday_iso')),
        sa.ForeignKeyConstraint(
            ['operator_id'], ['operators.id'], name=op.f('fk_operator_hours_operator_id_operators'), ondelete='CASCADE'
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_operator_hours')),
    )
    with op.batch_alter_table('operator_hours', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_operator_hours_operator_id'), ['operator_id'], unique=False)

    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('offered_until', leadcrm.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('accepted_at', leadcrm.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(
            'ix_contacts_offered_until', ['offered_until'], unique=False,
            sqlite_where=sa.text('offered_until IS NOT NULL'), postgresql_where=sa.text('offered_until IS NOT NULL'),
        )
    with op.batch_alter_table('contact_events', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_contact_events_reason_known'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_contact_events_reason_known'), REASONS)
    with op.batch_alter_table('operator_events', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_operator_events_field_known'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_operator_events_field_known'), FIELDS)

    with op.batch_alter_table('operators', schema=None) as batch_op:
        batch_op.add_column(sa.Column('away_reason', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('timezone', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('shift_from', leadcrm.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('shift_until', leadcrm.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('schedule_due_at', leadcrm.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_check_constraint(batch_op.f('ck_operators_away_reason_known'), "away_reason IN ('missed_offers')")
        batch_op.create_index(
            'ix_operators_schedule_due_at', ['schedule_due_at'], unique=False,
            sqlite_where=sa.text('schedule_due_at IS NOT NULL'),
            postgresql_where=sa.text('schedule_due_at IS NOT NULL'),
        )
    with op.batch_alter_table('source_operators', schema=None) as batch_op:
        batch_op.add_column(sa.Column('missed_offers', sa.Integer(), server_default='0', nullable=False))
    with op.batch_alter_table('sources', schema=None) as batch_op:
        batch_op.add_column(sa.Column('offer_timeout_seconds', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('offer_misses_away', sa.Integer(), server_default='3', nullable=False))
        batch_op.create_check_constraint(batch_op.f('ck_sources_offer_timeout_positive'), 'offer_timeout_seconds > 0')
        batch_op.create_check_constraint(batch_op.f('ck_sources_offer_misses_away_positive'), 'offer_misses_away > 0')


def downgrade():
    # Offers end as they are (their contacts stay with their operators, as if taken); the
    # history's timeouts read as manual moves, schedule changes are forgotten.
    op.execute("DELETE FROM operator_events WHERE field = 'schedule'")
    op.execute("UPDATE contact_events SET reason = 'manual' WHERE reason = 'timeout'")
    with op.batch_alter_table('sources', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_sources_offer_misses_away_positive'), type_='check')
        batch_op.drop_constraint(batch_op.f('ck_sources_offer_timeout_positive'), type_='check')
        batch_op.drop_column('offer_misses_away')
        batch_op.drop_column('offer_timeout_seconds')
    with op.batch_alter_table('source_operators', schema=None) as batch_op:
        batch_op.drop_column('missed_offers')
    with op.batch_alter_table('operators', schema=None) as batch_op:
        batch_op.drop_index('ix_operators_schedule_due_at')
        batch_op.drop_constraint(batch_op.f('ck_operators_away_reason_known'), type_='check')
        batch_op.drop_column('schedule_due_at')
        batch_op.drop_column('shift_until')
        batch_op.drop_column('shift_from')
        batch_op.drop_column('timezone')
        batch_op.drop_column('away_reason')
    with op.batch_alter_table('operator_events', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_operator_events_field_known'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_operator_events_field_known'), FIELDS_BEFORE)
    with op.batch_alter_table('contact_events', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_contact_events_reason_known'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_contact_events_reason_known'), REASONS_BEFORE)
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_index('ix_contacts_offered_until')
        batch_op.drop_column('accepted_at')
        batch_op.drop_column('offered_until')
    with op.batch_alter_table('operator_hours', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_operator_hours_operator_id'))
    op.drop_table('operator_hours')
    with op.batch_alter_table('operator_absences', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_operator_absences_operator_id'))
    op.drop_table('operator_absences')
    op.drop_table('drain_requests')
    op.drop_table('worker_beats')
    op.drop_table('settings')
