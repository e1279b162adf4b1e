"""accounts: email links, signup invites, administrators, disabled accounts, profile colour

Revision ID: 0005
Revises: 0004

Another branch adds '0004' at the same time; on merge this one is re-chained after it
(down_revision = '0004'). It touches only its own tables and new ``users`` columns.

Plain ADD COLUMNs (no batch "move and copy"): on SQLite, recreating ``users`` with foreign
keys on would cascade-delete everything that references it. Existing accounts keep
``email_verified`` as it was: nobody's address is declared verified by an upgrade.
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('users', sa.Column('is_admin', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.add_column('users', sa.Column('disabled_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
    op.add_column('users', sa.Column('color', sqlmodel.sql.sqltypes.AutoString(length=7), nullable=True))
    op.create_table(
        'account_tokens',
        sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('user_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('purpose', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('email', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=False),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('used_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_account_tokens_user_id', 'account_tokens', ['user_id'], unique=False)
    op.create_table(
        'signup_invites',
        sa.Column('id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('email', sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
        sa.Column('created_by', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column('created_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('expires_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column('used_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column('used_by', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column('revoked_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(['created_by'], ['users.id'], ondelete='SET NULL'),
        sa.ForeignKeyConstraint(['used_by'], ['users.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'deleted_accounts',
        sa.Column('user_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column('deleted_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('user_id'),
    )


def downgrade() -> None:
    op.drop_table('deleted_accounts')
    op.drop_table('signup_invites')
    op.drop_index('ix_account_tokens_user_id', table_name='account_tokens')
    op.drop_table('account_tokens')
    op.drop_column('users', 'color')  # SQLite >= 3.35
    op.drop_column('users', 'disabled_at')
    op.drop_column('users', 'is_admin')
