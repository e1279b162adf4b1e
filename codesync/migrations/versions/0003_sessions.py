"""sessions: auth_sessions (one row per sign-in), users.sessions_revoked_at

Revision ID: 0003
Revises: 0001

Another branch adds '0002' at the same time; on merge this one is re-chained after it
(down_revision = '0002'). It touches only its own table and column.
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'auth_sessions',
        sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('user_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('revoked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_auth_sessions_user_id', 'auth_sessions', ['user_id'], unique=False)
    # A plain ADD COLUMN (no batch "move and copy"): on SQLite, recreating ``users`` with
    # foreign keys on would cascade-delete everything that references it.
    op.add_column('users', sa.Column('sessions_revoked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    # Every existing sign-in (refresh-token family) becomes a session; one whose tokens are
    # all revoked is a revoked session.
    op.execute(
        "INSERT INTO auth_sessions (id, user_id, created_at, revoked_at) "
        "SELECT family_id, MIN(user_id), MIN(created_at), "
        "CASE WHEN SUM(CASE WHEN revoked_at IS NULL THEN 1 ELSE 0 END) = 0 THEN MAX(revoked_at) END "
        "FROM refresh_tokens GROUP BY family_id"
    )


def downgrade() -> None:
    op.drop_column('users', 'sessions_revoked_at')  # SQLite >= 3.35
    op.drop_index('ix_auth_sessions_user_id', table_name='auth_sessions')
    op.drop_table('auth_sessions')
