"""login sessions kept server-side

Revision ID: 0007_login_sessions
Revises: 0006_waiting_index_key_caller
Create Date: 2026-12-01 20:20:00

A login cookie names a row of login_sessions (by the SHA-256 of its random
secret); logging out deletes the row, so a copied cookie is worthless
afterwards. Sessions from before this revision carried no such secret: their
users log in once more.
"""
from alembic import op
import sqlalchemy as sa


revision = '0007_login_sessions'
down_revision = '0006_waiting_index_key_caller'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('login_sessions',
    sa.Column('id_hash', sa.String(length=64), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_login_sessions_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id_hash', name=op.f('pk_login_sessions'))
    )
    with op.batch_alter_table('login_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_login_sessions_user_id'), ['user_id'], unique=False)


def downgrade():
    with op.batch_alter_table('login_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_login_sessions_user_id'))

    op.drop_table('login_sessions')
