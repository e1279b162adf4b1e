"""named documents: a ``doc`` column in document_updates and document_snapshots

A room now has more than one document (docs/protocol.md, "The room documents"): the main
document (``doc = ''``, every row written before this migration) and named documents such
as ``runs``, which only the runner writes. The snapshot's primary key becomes
(room_id, doc). Existing rows are kept as they are: they belong to the main document.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-10 10:00:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def _doc_column() -> sa.Column:
    return sa.Column('doc', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False, server_default='')


def _snapshots_sqlite(pk: list[str], with_doc: bool) -> None:
    """SQLite cannot change a primary key in place: build the new table and copy the rows."""
    columns = [
        sa.Column('room_id', sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        *([_doc_column()] if with_doc else []),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.Column('upto_seq', sa.Integer(), nullable=False),
        sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    ]
    op.create_table('_document_snapshots_new', *columns, sa.PrimaryKeyConstraint(*pk))
    names = 'room_id, data, upto_seq, updated_at'
    op.execute(f"INSERT INTO _document_snapshots_new ({names}) SELECT {names} FROM document_snapshots")
    op.drop_table('document_snapshots')
    op.rename_table('_document_snapshots_new', 'document_snapshots')


def upgrade() -> None:
    with op.batch_alter_table('document_updates', schema=None) as batch_op:
        batch_op.add_column(_doc_column())
    if op.get_bind().dialect.name == 'sqlite':
        _snapshots_sqlite(['room_id', 'doc'], with_doc=True)
    else:
        op.add_column('document_snapshots', _doc_column())
        op.drop_constraint('document_snapshots_pkey', 'document_snapshots', type_='primary')
        op.create_primary_key('document_snapshots_pkey', 'document_snapshots', ['room_id', 'doc'])


def downgrade() -> None:
    # Named documents cannot live in the old schema: they are deleted.
    op.execute("DELETE FROM document_updates WHERE doc <> ''")
    op.execute("DELETE FROM document_snapshots WHERE doc <> ''")
    if op.get_bind().dialect.name == 'sqlite':
        _snapshots_sqlite(['room_id'], with_doc=False)
    else:
        op.drop_constraint('document_snapshots_pkey', 'document_snapshots', type_='primary')
        op.drop_column('document_snapshots', 'doc')
        op.create_primary_key('document_snapshots_pkey', 'document_snapshots', ['room_id'])
    with op.batch_alter_table('document_updates', schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.drop_column('doc')
