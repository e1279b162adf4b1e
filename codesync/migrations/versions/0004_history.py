"""history: attribution per update, several snapshots per document, timeline tables

docs/history.md. The update log is kept (compaction no longer deletes rows), so:

- ``document_updates`` gains ``via`` (room-local author number of the link an update came on)
  and ``clients`` (the Yjs clock ranges it added); the room_id index becomes (room_id, seq).
- ``document_snapshots`` may hold several snapshots per document: the primary key becomes
  (room_id, doc, upto_seq) and ``at`` (epoch ms of the newest update covered) is added.
- New: ``history_authors``, ``history_clients``, ``history_bursts``, ``history_checkpoints``,
  ``history_settings``. Rooms compacted before this revision lost their older updates: their
  ``detail_from`` is set just above their snapshot.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-14 10:00:00
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def _s(n: int) -> sa.types.TypeEngine:
    return sqlmodel.sql.sqltypes.AutoString(length=n)


def _snapshot_columns(history: bool) -> list[sa.Column]:
    return [
        sa.Column('room_id', _s(32), nullable=False),
        sa.Column('doc', _s(32), nullable=False, server_default=''),
        sa.Column('upto_seq', sa.BigInteger() if history else sa.Integer(), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        *([sa.Column('at', sa.BigInteger(), nullable=False, server_default='0')] if history else []),
        sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    ]


def _rebuild_snapshots_sqlite(history: bool) -> None:
    """SQLite cannot change a primary key in place: new table, copy, swap."""
    pk = ['room_id', 'doc', 'upto_seq'] if history else ['room_id', 'doc']
    op.create_table('_document_snapshots_new', *_snapshot_columns(history), sa.PrimaryKeyConstraint(*pk))
    names = 'room_id, doc, upto_seq, data, updated_at'
    op.execute(f"INSERT INTO _document_snapshots_new ({names}) SELECT {names} FROM document_snapshots")
    op.drop_table('document_snapshots')
    op.rename_table('_document_snapshots_new', 'document_snapshots')


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == 'sqlite'

    # -- the update log: attribution columns, (room_id, seq) index
    op.add_column('document_updates', sa.Column('via', sa.Integer(), nullable=True))
    op.add_column('document_updates', sa.Column('clients', sa.LargeBinary(), nullable=True))
    op.create_index('ix_document_updates_room_seq', 'document_updates', ['room_id', 'seq'], unique=False)
    op.drop_index('ix_document_updates_room_id', table_name='document_updates')

    # -- snapshots: several per document
    if sqlite:
        _rebuild_snapshots_sqlite(history=True)
    else:
        op.add_column('document_snapshots', sa.Column('at', sa.BigInteger(), nullable=False, server_default='0'))
        op.alter_column('document_snapshots', 'upto_seq', type_=sa.BigInteger(), existing_nullable=False)
        op.drop_constraint('document_snapshots_pkey', 'document_snapshots', type_='primary')
        op.create_primary_key('document_snapshots_pkey', 'document_snapshots', ['room_id', 'doc', 'upto_seq'])

    # -- history tables
    op.create_table(
        'history_authors',
        sa.Column('room_id', _s(32), nullable=False),
        sa.Column('num', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('user_id', _s(32), nullable=True),
        sa.Column('service', _s(32), nullable=True),
        sa.Column('name', _s(200), nullable=False),
        sa.PrimaryKeyConstraint('room_id', 'num'),
    )
    op.create_table(
        'history_clients',
        sa.Column('room_id', _s(32), nullable=False),
        sa.Column('client', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('author', sa.Integer(), nullable=False),
        sa.Column('direct', sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint('room_id', 'client'),
    )
    op.create_table(
        'history_bursts',
        sa.Column('room_id', _s(32), nullable=False),
        sa.Column('start_seq', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('end_seq', sa.BigInteger(), nullable=False),
        sa.Column('start_at', sa.BigInteger(), nullable=False),
        sa.Column('end_at', sa.BigInteger(), nullable=False),
        sa.Column('client', sa.BigInteger(), nullable=True),
        sa.Column('via', sa.Integer(), nullable=True),
        sa.Column('updates', sa.Integer(), nullable=False),
        sa.Column('inserted', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('room_id', 'start_seq'),
    )
    op.create_table(
        'history_checkpoints',
        sa.Column('id', _s(32), nullable=False),
        sa.Column('room_id', _s(32), nullable=False),
        sa.Column('seq', sa.BigInteger(), nullable=False),
        sa.Column('at', sa.BigInteger(), nullable=False),
        sa.Column('name', _s(100), nullable=False),
        sa.Column('author', sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_history_checkpoints_room_id', 'history_checkpoints', ['room_id'], unique=False)
    op.create_table(
        'history_settings',
        sa.Column('room_id', _s(32), nullable=False),
        sa.Column('viewers_read', sa.Boolean(), nullable=True),
        sa.Column('detail_from', sa.BigInteger(), nullable=False, server_default='0'),
        sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('room_id'),
    )
    # Before this revision loading read every row left, whatever its seq; now it reads the rows
    # above the newest snapshot. A row that committed after a compaction with a lower seq (two
    # writers during a lease handover, PostgreSQL) would be skipped: lower such a snapshot's
    # upto_seq below it (re-applying what the snapshot already holds changes nothing).
    op.execute(
        "UPDATE document_snapshots SET upto_seq = (SELECT MIN(u.seq) - 1 FROM document_updates u "
        "WHERE u.room_id = document_snapshots.room_id AND u.doc = document_snapshots.doc "
        "AND u.seq <= document_snapshots.upto_seq) "
        "WHERE EXISTS (SELECT 1 FROM document_updates u WHERE u.room_id = document_snapshots.room_id "
        "AND u.doc = document_snapshots.doc AND u.seq <= document_snapshots.upto_seq)"
    )
    # Compaction before this revision deleted the updates it absorbed: those rooms' detail
    # starts above their snapshots.
    op.execute(
        "INSERT INTO history_settings (room_id, viewers_read, detail_from, updated_at) "
        "SELECT room_id, NULL, MAX(upto_seq) + 1, MAX(updated_at) FROM document_snapshots GROUP BY room_id"
    )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == 'sqlite'
    for table in ('history_settings', 'history_checkpoints', 'history_bursts', 'history_clients', 'history_authors'):
        if table == 'history_checkpoints':
            op.drop_index('ix_history_checkpoints_room_id', table_name=table)
        op.drop_table(table)
    # One snapshot per document again (the newest); the rows it covers go, as the old
    # compaction would have deleted them.
    op.execute(
        "DELETE FROM document_snapshots WHERE upto_seq < (SELECT MAX(s.upto_seq) FROM document_snapshots s "
        "WHERE s.room_id = document_snapshots.room_id AND s.doc = document_snapshots.doc)"
    )
    op.execute(
        "DELETE FROM document_updates WHERE seq <= (SELECT MAX(s.upto_seq) FROM document_snapshots s "
        "WHERE s.room_id = document_updates.room_id AND s.doc = document_updates.doc)"
    )
    if sqlite:
        _rebuild_snapshots_sqlite(history=False)
    else:
        op.drop_constraint('document_snapshots_pkey', 'document_snapshots', type_='primary')
        op.create_primary_key('document_snapshots_pkey', 'document_snapshots', ['room_id', 'doc'])
        op.alter_column('document_snapshots', 'upto_seq', type_=sa.Integer(), existing_nullable=False)
        op.drop_column('document_snapshots', 'at')
    op.create_index('ix_document_updates_room_id', 'document_updates', ['room_id'], unique=False)
    op.drop_index('ix_document_updates_room_seq', table_name='document_updates')
    with op.batch_alter_table('document_updates', schema=None, table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.drop_column('clients')
        batch_op.drop_column('via')
