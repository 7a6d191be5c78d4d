"""webhook streams: a webhook's events are sent from its cursor, rows only for what failed

Revision ID: 0012_webhook_streams
Revises: 0011_events_out
Create Date: 2026-12-03 13:40:00

``webhooks.fanned_out_to`` (events up to it were queued as deliveries) becomes
``sent_to`` (events up to it were sent, or queued as deliveries after a
failure): the same position, so nothing is sent twice or skipped. The stream's
lease and pause start empty; ``delivered_count`` starts at the deliveries
stored as delivered.

Downgrading keeps every pending delivery and the cursor; events the stream
delivered have no delivery rows, which 0011 reads as events it queued and
delivered long ago (their log stays).
"""

import sqlalchemy as sa
from alembic import op

import leadcrm.models


# revision identifiers, used by Alembic.
revision = "0012_webhook_streams"
down_revision = "0011_events_out"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.alter_column("fanned_out_to", new_column_name="sent_to", existing_type=sa.BigInteger(),
                              existing_nullable=False)  # fmt: skip
        batch_op.add_column(sa.Column("stream_leased_by", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("stream_leased_until", leadcrm.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("stream_due_at", leadcrm.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("stream_failures", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("delivered_count", sa.BigInteger(), server_default="0", nullable=False))
    op.execute(
        "UPDATE webhooks SET delivered_count = (SELECT count(*) FROM webhook_deliveries d "
        "WHERE d.webhook_id = webhooks.id AND d.state = 'delivered')"
    )


def downgrade():
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.drop_column("delivered_count")
        batch_op.drop_column("stream_failures")
        batch_op.drop_column("stream_due_at")
        batch_op.drop_column("stream_leased_until")
        batch_op.drop_column("stream_leased_by")
        batch_op.alter_column("sent_to", new_column_name="fanned_out_to", existing_type=sa.BigInteger(),
                              existing_nullable=False)  # fmt: skip
