"""SQL schema (sqlmodel) shared by the signaling server and the persistence peer.

The tables are created by Alembic migrations (``codesync/migrations``), never by
``create_all``, so SQLite and PostgreSQL deployments evolve the same way.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timezone
from enum import Enum

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Aware UTC timestamps (sqlmodel stores them as UTC on SQLite and PostgreSQL alike)."""
    return datetime.now(timezone.utc)


# The longest id any table holds (``new_id``: 32 hex digits; ``new_room_id``: 12 characters).
# Services refuse longer room ids and user ids before a query (signaling's REST API, the
# persistence peer and the runner on ``room-active``) — one number for all of them.
ID_MAX = 32
ROOM_ID_MAX = ID_MAX


def new_id() -> str:
    return uuid.uuid4().hex


def new_room_id() -> str:
    # URL-safe, unguessable, short enough to read aloud. Room ids are also signaling topics.
    return secrets.token_urlsafe(9)


class Role(str, Enum):
    owner = "owner"
    editor = "editor"
    viewer = "viewer"

    @property
    def rank(self) -> int:
        return {"viewer": 0, "editor": 1, "owner": 2}[self.value]

    def at_least(self, other: "Role") -> bool:
        return self.rank >= other.rank


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    email: str = Field(index=True, unique=True, max_length=320)
    name: str = Field(max_length=200)
    password_hash: str | None = Field(default=None, max_length=255)
    email_verified: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    # Set by "sign out everywhere" (and a password change): access tokens issued up to this
    # moment without a session id (made outside a sign-in) stop working too.
    sessions_revoked_at: datetime | None = None
    # Server administrator (``codesync user create --admin``, the admin page). Accounts whose
    # *verified* email is in ``CODESYNC_ADMIN_EMAILS`` are administrators too (accounts.is_admin).
    is_admin: bool = False
    # Set while an administrator has disabled the account: no sign-in, no token works.
    disabled_at: datetime | None = None
    # The colour of the user's cursor and name ("#rrggbb"); None: derived from the id.
    color: str | None = Field(default=None, max_length=7)


class AuthSession(SQLModel, table=True):
    """One sign-in: its refresh tokens form the family ``id``; its access tokens carry ``sid`` = ``id``.

    Revoking it (logout, logout-all, refresh-token reuse, password change) refuses its access
    tokens at once and closes its ``/signal`` sockets on every node (``signaling.sessions``);
    deleting the user deletes it.
    """

    __tablename__ = "auth_sessions"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=32, ondelete="CASCADE")
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class OAuthIdentity(SQLModel, table=True):
    __tablename__ = "oauth_identities"
    __table_args__ = (UniqueConstraint("provider", "subject", name="uq_oauth_provider_subject"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=32, ondelete="CASCADE")
    provider: str = Field(max_length=64)
    subject: str = Field(max_length=255)
    email: str | None = Field(default=None, max_length=320)
    created_at: datetime = Field(default_factory=utcnow)


class RefreshToken(SQLModel, table=True):
    """One issued refresh token. Only its SHA-256 is stored.

    Tokens of one login form a *family*; presenting a token that was already rotated
    (``used_at`` set) revokes the whole family — the classic theft signal.
    """

    __tablename__ = "refresh_tokens"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=32, ondelete="CASCADE")
    family_id: str = Field(index=True, max_length=32)
    token_hash: str = Field(index=True, unique=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    used_at: datetime | None = None
    revoked_at: datetime | None = None


class ServiceToken(SQLModel, table=True):
    """A headless peer's credential (scope ``persistence`` or ``runner``).

    The tokens minted for it (JWTs with ``jti`` = ``id``) expire; the service exchanges its
    token for a fresh one while it is valid. Revoking the row ends every token of it.
    """

    __tablename__ = "service_tokens"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    scope: str = Field(max_length=32)
    name: str = Field(default="", max_length=200)
    created_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class AccountToken(SQLModel, table=True):
    """The record behind one emailed link (verify an address, reset a password, confirm a new
    address): the link is a signed token naming ``id``; the row makes it single-use
    (``used_at``) and binds it to one user and one address (``email``)."""

    __tablename__ = "account_tokens"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    user_id: str = Field(foreign_key="users.id", index=True, max_length=32, ondelete="CASCADE")
    purpose: str = Field(max_length=32)  # verify_email | reset_password | change_email
    email: str = Field(max_length=320)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    used_at: datetime | None = None


class SignupInvite(SQLModel, table=True):
    """An administrator's invitation to register (any registration mode but ``closed`` … and
    ``closed`` too: it is the administrator who lets the person in). Single use; optionally
    bound to one email address."""

    __tablename__ = "signup_invites"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    email: str | None = Field(default=None, max_length=320)
    # No cascade: deleting the admin who made it must not delete other tables' history.
    created_by: str | None = Field(default=None, foreign_key="users.id", max_length=32, ondelete="SET NULL")
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    used_at: datetime | None = None
    used_by: str | None = Field(default=None, foreign_key="users.id", max_length=32, ondelete="SET NULL")
    revoked_at: datetime | None = None


class DeletedAccount(SQLModel, table=True):
    """A tombstone per deleted account: the id only, no personal data. Tables that keep a
    user id without a foreign key (document history's attribution) show it as "deleted
    user" — and can tell it from an id that never existed."""

    __tablename__ = "deleted_accounts"

    user_id: str = Field(primary_key=True, max_length=32)
    deleted_at: datetime = Field(default_factory=utcnow)


class Room(SQLModel, table=True):
    __tablename__ = "rooms"

    id: str = Field(default_factory=new_room_id, primary_key=True, max_length=ROOM_ID_MAX)
    name: str = Field(max_length=200)
    language: str = Field(max_length=32)
    owner_id: str = Field(foreign_key="users.id", index=True, max_length=32, ondelete="CASCADE")
    created_at: datetime = Field(default_factory=utcnow)


class Membership(SQLModel, table=True):
    __tablename__ = "memberships"

    room_id: str = Field(foreign_key="rooms.id", primary_key=True, max_length=32, ondelete="CASCADE")
    user_id: str = Field(foreign_key="users.id", primary_key=True, max_length=32, ondelete="CASCADE")
    role: str = Field(max_length=16)
    created_at: datetime = Field(default_factory=utcnow)


class Invite(SQLModel, table=True):
    """An invite link's server-side record; the link itself is a signed token naming ``id``."""

    __tablename__ = "invites"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    room_id: str = Field(foreign_key="rooms.id", index=True, max_length=32, ondelete="CASCADE")
    role: str = Field(max_length=16)
    created_by: str = Field(foreign_key="users.id", max_length=32, ondelete="CASCADE")
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    revoked_at: datetime | None = None


# ----------------------------------------------------------------------------- documents
# Owned by the persistence peer (peer/), declared here so one migration chain covers all.

MAIN_DOC = ""  # the ``doc`` of a room's main document; named documents use their name ("runs")


class DocumentUpdate(SQLModel, table=True):
    """Append-only log of Yjs updates for a room, in arrival order."""

    __tablename__ = "document_updates"
    # AUTOINCREMENT on SQLite: never reuse a seq after compaction deleted the newest rows.
    # (room_id, seq): loading reads a room's rows above a snapshot, history reads seq ranges.
    __table_args__ = (Index("ix_document_updates_room_seq", "room_id", "seq"), {"sqlite_autoincrement": True})

    # BIGINT on PostgreSQL (one sequence shared by every room's log); INTEGER PRIMARY KEY
    # AUTOINCREMENT on SQLite (the rowid alias).
    seq: int | None = Field(
        default=None,
        sa_column=Column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    )
    room_id: str = Field(max_length=32)
    # Which document of the room: "" the main document, else a named document ("runs").
    doc: str = Field(default=MAIN_DOC, max_length=32, sa_column_kwargs={"server_default": MAIN_DOC})
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # When the persistence peer received the update (history: playback times, bursts).
    created_at: datetime = Field(default_factory=utcnow)
    # History (docs/history.md): who delivered the update (``history_authors.num`` of the link's
    # server-stamped principal) and the Yjs clock ranges it added (varUint triplets
    # client, start, length; peer/persistence/yupdate.py). NULL on rows older than 0004.
    via: int | None = Field(default=None)
    clients: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))


class DocumentSnapshot(SQLModel, table=True):
    """A room document's state after all its updates up to and including ``upto_seq``.

    Several per document since 0004: the newest is where loading starts, older ones are seek
    points for history (docs/history.md, "Storage")."""

    __tablename__ = "document_snapshots"

    room_id: str = Field(primary_key=True, max_length=32)
    doc: str = Field(default=MAIN_DOC, primary_key=True, max_length=32, sa_column_kwargs={"server_default": MAIN_DOC})
    upto_seq: int = Field(default=0, sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # epoch ms of the newest update it covers (0: unknown, e.g. written before 0004)
    at: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    updated_at: datetime = Field(default_factory=utcnow)


# ----------------------------------------------------------------------------- history
# Owned by the persistence peer (peer/persistence/history*.py, docs/history.md). Times are
# epoch milliseconds; ``author`` / ``via`` columns are room-local ``history_authors.num``.


class HistoryAuthor(SQLModel, table=True):
    """A principal that delivered updates to a room: a user (``user_id``) or a service."""

    __tablename__ = "history_authors"

    room_id: str = Field(primary_key=True, max_length=32)
    num: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    user_id: str | None = Field(default=None, max_length=32)
    service: str | None = Field(default=None, max_length=32)
    name: str = Field(default="", max_length=200)


class HistoryClient(SQLModel, table=True):
    """Which author a Yjs client id belongs to (first writer wins; ``direct``: seen on the
    author's own link, not only through a relay — only such a binding is final)."""

    __tablename__ = "history_clients"

    room_id: str = Field(primary_key=True, max_length=32)
    client: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    author: int
    direct: bool = False


class HistoryBurst(SQLModel, table=True):
    """A run of main-document updates mostly by one client with short pauses (the timeline)."""

    __tablename__ = "history_bursts"

    room_id: str = Field(primary_key=True, max_length=32)
    start_seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    end_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    start_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    end_at: int = Field(sa_column=Column(BigInteger, nullable=False))
    client: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    via: int | None = None
    updates: int = 0
    inserted: int = 0


class HistoryCheckpoint(SQLModel, table=True):
    """A named version an editor created."""

    __tablename__ = "history_checkpoints"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    room_id: str = Field(index=True, max_length=32)
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    at: int = Field(sa_column=Column(BigInteger, nullable=False))
    name: str = Field(max_length=100)
    author: int | None = None


class HistorySettings(SQLModel, table=True):
    """Per-room history policy and bookkeeping."""

    __tablename__ = "history_settings"

    room_id: str = Field(primary_key=True, max_length=32)
    # may viewers read the history? None: the deployment's default (CODESYNC_PERSIST_HISTORY_VIEWERS)
    viewers_read: bool | None = None
    # updates with a seq below this may be gone (retention, "delete history", pre-0004 compaction)
    detail_from: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    updated_at: datetime = Field(default_factory=utcnow)


HISTORY_TABLES = (HistoryAuthor, HistoryClient, HistoryBurst, HistoryCheckpoint, HistorySettings)
"""Everything a room's history keeps besides document_updates / document_snapshots."""


class RoomLease(SQLModel, table=True):
    """Which persistence peer owns a room now (used when Redis is not configured)."""

    __tablename__ = "room_leases"

    room_id: str = Field(primary_key=True, max_length=32)
    owner: str = Field(max_length=64)
    expires_at: datetime
