"""Rooms, memberships and invites: who may do what, independent of HTTP.

Rules (README, "HTTP API"):
- Non-members learn nothing about a room: every room endpoint answers them ``not_found``.
  Members lacking the needed role get ``forbidden``.
- Owners do everything; editors may create *viewer* invites (share read access without
  being able to hand out write access); viewers only read.
- A room always keeps at least one owner: the last owner can neither leave, be removed nor
  be demoted. ``rooms.owner_id`` follows along to a remaining owner.
- Accepting an invite never lowers a role the user already has.
- An invite is only as good as its creator's right to make it: removing the creator from the
  room, or demoting them below the role that invite needed (owner for editor invites, editor
  for viewer invites), revokes their invites; deleting the account deletes them. Accepting
  checks the creator's current role too, so nothing that slips past the first rule works.

Functions raise :class:`~signaling.errors.ApiError` (status + code + message), which the
error middleware renders; they work on a session the caller owns.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from .errors import ApiError
from codesync.models import (
    HISTORY_TABLES,
    ID_MAX,
    ROOM_ID_MAX,
    DocumentSnapshot,
    DocumentUpdate,
    Invite,
    Membership,
    Role,
    Room,
    RoomLease,
    User,
    utcnow,
)
from .state import AppState
from .tokens import TokenError

log = logging.getLogger("codesync.rooms")

# Editor modes the web client offers; the runner supports a subset (it refuses the rest).
LANGUAGES: tuple[str, ...] = (
    "plaintext",
    "python",
    "javascript",
    "typescript",
    "bash",
    "c",
    "cpp",
    "go",
    "rust",
    "java",
    "ruby",
    "php",
    "sql",
    "html",
    "css",
    "json",
    "markdown",
)
INVITE_ROLES: tuple[str, ...] = ("editor", "viewer")
MAX_INVITE_TTL = 30 * 24 * 3600

# Called after a membership changes: (room_id, user_id) — user_id None when the whole room
# is gone. The signaling hub registers one to drop subscriptions that lost their right.
MembershipListener = Callable[[str, "str | None"], Awaitable[None]]
LISTENERS_KEY = "membership_listeners"


def add_membership_listener(state: AppState, listener: MembershipListener) -> None:
    state.extras.setdefault(LISTENERS_KEY, []).append(listener)


async def notify_membership(state: AppState, room_id: str, user_id: str | None) -> None:
    for listener in state.extras.get(LISTENERS_KEY, []):
        try:
            await listener(room_id, user_id)
        except Exception:  # noqa: BLE001 - a listener's bug must not undo a committed change
            log.exception("membership listener failed for room %s", room_id)


def not_found() -> ApiError:
    return ApiError(404, "not_found", "no such room")


def room_json(room: Room, role: Role | str) -> dict[str, Any]:
    return {
        "id": room.id,
        "name": room.name,
        "language": room.language,
        "role": Role(role).value,
        "owner_id": room.owner_id,
        "created_at": room.created_at.isoformat(),
    }


async def create_room(session: AsyncSession, user_id: str, name: str, language: str) -> Room:
    room = Room(name=name, language=language, owner_id=user_id)
    session.add(room)
    await session.flush()  # no ORM relationships: insert the room before its membership
    session.add(Membership(room_id=room.id, user_id=user_id, role=Role.owner.value))
    await session.commit()
    return room


async def my_rooms(session: AsyncSession, user_id: str) -> list[tuple[Room, Role]]:
    rows = await session.exec(
        select(Room, Membership.role)
        .join(Membership, col(Membership.room_id) == col(Room.id))
        .where(Membership.user_id == user_id)
        .order_by(col(Room.created_at).desc(), col(Room.id))
    )
    return [(room, Role(role)) for room, role in rows.all()]


async def member_room(
    session: AsyncSession, room_id: str, user_id: str, minimum: Role = Role.viewer, lock: bool = False
) -> tuple[Room, Role]:
    """The room and the caller's role; 404 for non-members, 403 below ``minimum``.

    ``lock`` makes concurrent membership changes of one room serialize — the last-owner
    rule depends on it. It is a no-op UPDATE of the room issued *first* in the transaction:
    a row lock on PostgreSQL, and on SQLite it takes the write lock before anything is read
    (``SELECT … FOR UPDATE`` does not exist there, and a read-then-write transaction would
    act on a stale snapshot).
    """
    if not room_id or len(room_id) > ROOM_ID_MAX:
        raise not_found()
    if lock:
        await session.exec(update(Room).where(col(Room.id) == room_id).values(name=Room.name))
    room = (await session.exec(select(Room).where(Room.id == room_id))).first()
    if room is None:
        raise not_found()
    membership = await session.get(Membership, (room_id, user_id), populate_existing=True)
    if membership is None:
        raise not_found()
    role = Role(membership.role)
    if not role.at_least(minimum):
        raise ApiError(403, "forbidden", f"this needs the {minimum.value} role in the room")
    return room, role


async def update_room(
    session: AsyncSession, room_id: str, user_id: str, name: str | None, language: str | None
) -> tuple[Room, Role]:
    """Rename a room or change its language: editors and owners (viewers only read)."""
    room, role = await member_room(session, room_id, user_id, Role.editor, lock=True)
    if name is not None:
        room.name = name
    if language is not None:
        room.language = language
    session.add(room)
    await session.commit()
    return room, role


async def delete_room(state: AppState, session: AsyncSession, room_id: str, user_id: str) -> None:
    room, _ = await member_room(session, room_id, user_id, Role.owner, lock=True)
    await purge_room(session, room)
    await session.commit()
    await notify_membership(state, room_id, None)


async def purge_room(session: AsyncSession, room: Room) -> None:
    """Delete a room and its stored documents (not committed).

    The document tables carry no foreign key to rooms (the persistence peer owns them);
    a deleted room must not leave its content behind."""
    for table in (DocumentUpdate, DocumentSnapshot, RoomLease, *HISTORY_TABLES):
        await session.exec(delete(table).where(col(table.room_id) == room.id))
    await session.delete(room)


# ----------------------------------------------------------------------------- invites
def invite_json(state: AppState, invite: Invite) -> dict[str, Any]:
    token = state.tokens.issue_invite(invite.id, invite.room_id, invite.role, int(invite.expires_at.timestamp()))
    return {
        "id": invite.id,
        "room_id": invite.room_id,
        "role": invite.role,
        "token": token,
        "url": f"{state.settings.base_url}/#/invite/{token}",
        "created_by": invite.created_by,
        "expires_at": invite.expires_at.isoformat(),
    }


async def create_invite(
    state: AppState, session: AsyncSession, room_id: str, user_id: str, role: str, ttl: int | None = None
) -> dict[str, Any]:
    _, my_role = await member_room(session, room_id, user_id, Role.editor)
    if role not in INVITE_ROLES:
        raise ApiError(422, "invalid", "role: must be editor or viewer")
    if my_role is Role.editor and role != Role.viewer.value:
        raise ApiError(403, "forbidden", "editors may only invite viewers")
    ttl = state.settings.invite_ttl if ttl is None else ttl
    invite = Invite(
        room_id=room_id, role=role, created_by=user_id, expires_at=utcnow() + timedelta(seconds=ttl)
    )
    session.add(invite)
    await session.commit()
    return invite_json(state, invite)


async def list_invites(state: AppState, session: AsyncSession, room_id: str, user_id: str) -> list[dict[str, Any]]:
    await member_room(session, room_id, user_id, Role.owner)
    rows = await session.exec(
        select(Invite)
        .where(Invite.room_id == room_id, col(Invite.revoked_at).is_(None), col(Invite.expires_at) > utcnow())
        .order_by(col(Invite.created_at))
    )
    return [invite_json(state, invite) for invite in rows.all()]


async def revoke_invite(session: AsyncSession, room_id: str, user_id: str, invite_id: str) -> None:
    await member_room(session, room_id, user_id, Role.owner)
    invite = await session.get(Invite, invite_id) if len(invite_id) <= 32 else None
    if invite is None or invite.room_id != room_id:
        raise ApiError(404, "not_found", "no such invite")
    if invite.revoked_at is None:
        invite.revoked_at = utcnow()
        session.add(invite)
        await session.commit()


def role_needed_to_invite(invite_role: str) -> Role:
    """The role a member needs to mint (and keep alive) an invite offering ``invite_role``."""
    return Role.owner if invite_role == Role.editor.value else Role.editor


async def _revoke_invites_of(session: AsyncSession, room_id: str, creator_id: str, role: Role | None) -> None:
    """Revoke ``creator_id``'s live invites to ``room_id`` that ``role`` (None: removed) may not make."""
    allowed = [r for r in INVITE_ROLES if role is not None and role.at_least(role_needed_to_invite(r))]
    await session.exec(
        update(Invite)
        .where(
            col(Invite.room_id) == room_id,
            col(Invite.created_by) == creator_id,
            col(Invite.revoked_at).is_(None),
            col(Invite.role).not_in(allowed) if allowed else col(Invite.role).is_not(None),
        )
        .values(revoked_at=utcnow())
    )


async def accept_invite(state: AppState, session: AsyncSession, token: str, user_id: str) -> tuple[Room, Role]:
    """Join the invite's room with its role, or keep a higher role already held."""
    try:
        claims = state.tokens.decode_invite(token)
    except TokenError as exc:
        if exc.code == "token_expired":
            raise ApiError(410, "invite_expired", "this invite link has expired") from None
        raise ApiError(400, "invalid_invite", "this is not a valid invite link") from None
    invite = await session.get(Invite, claims.invite_id) if len(claims.invite_id) <= 32 else None
    if invite is None or invite.room_id != claims.room_id or invite.role != claims.role:
        # The room was deleted (invites go with it) or the token names a foreign record.
        raise ApiError(410, "invite_revoked", "this invite link is no longer valid")
    if invite.revoked_at is not None:
        raise ApiError(410, "invite_revoked", "this invite link has been revoked")
    if invite.expires_at <= utcnow():
        raise ApiError(410, "invite_expired", "this invite link has expired")
    if invite.role not in INVITE_ROLES:  # pragma: no cover - create_invite never stores others
        raise ApiError(400, "invalid_invite", "this is not a valid invite link")
    room = await session.get(Room, invite.room_id)
    if room is None:  # pragma: no cover - cascade removes the invite with the room
        raise ApiError(410, "invite_revoked", "this invite link is no longer valid")
    creator = await session.get(Membership, (invite.room_id, invite.created_by), populate_existing=True)
    if creator is None or not Role(creator.role).at_least(role_needed_to_invite(invite.role)):
        # Its creator has lost the right to make it since (removed or demoted).
        raise ApiError(410, "invite_revoked", "this invite link is no longer valid: whoever made it can no longer invite")
    offered = Role(invite.role)
    for _ in range(2):  # a concurrent accept by the same user may insert first; then re-read
        membership = await session.get(Membership, (room.id, user_id), populate_existing=True)
        if membership is not None:
            held = Role(membership.role)
            if held.at_least(offered):
                return room, held
            membership.role = offered.value
            session.add(membership)
        else:
            session.add(Membership(room_id=room.id, user_id=user_id, role=offered.value))
        try:
            await session.commit()
            break
        except IntegrityError:
            await session.rollback()
    else:  # pragma: no cover
        raise ApiError(409, "conflict", "could not join the room, try again")
    await notify_membership(state, room.id, user_id)
    return room, offered


# ----------------------------------------------------------------------------- members
def member_json(membership: Membership, user: User) -> dict[str, Any]:
    return {
        "user_id": user.id,
        "name": user.name,
        "role": membership.role,
        "joined_at": membership.created_at.isoformat(),
    }


async def list_members(session: AsyncSession, room_id: str, user_id: str) -> list[dict[str, Any]]:
    await member_room(session, room_id, user_id)
    rows = (
        await session.exec(
            select(Membership, User)
            .join(User, col(User.id) == col(Membership.user_id))
            .where(Membership.room_id == room_id)
            .order_by(col(Membership.created_at), col(Membership.user_id))
        )
    ).all()
    members = [member_json(m, u) for m, u in rows]
    members.sort(key=lambda m: -Role(m["role"]).rank)  # stable: owners, editors, viewers
    return members


async def _owners(session: AsyncSession, room_id: str) -> list[str]:
    rows = await session.exec(
        select(Membership.user_id).where(Membership.room_id == room_id, Membership.role == Role.owner.value)
    )
    return list(rows.all())


async def _target(session: AsyncSession, room_id: str, target_id: str) -> Membership:
    membership = (
        await session.get(Membership, (room_id, target_id), populate_existing=True) if len(target_id) <= ID_MAX else None
    )
    if membership is None:
        raise ApiError(404, "member_not_found", "that user is not a member of this room")
    return membership


async def _keep_an_owner(session: AsyncSession, room: Room, leaving_owner: str) -> None:
    """Refuse if ``leaving_owner`` is the last owner; else move ``owner_id`` off them."""
    others = [uid for uid in await _owners(session, room.id) if uid != leaving_owner]
    if not others:
        raise ApiError(409, "last_owner", "a room needs an owner: make someone else owner first")
    if room.owner_id == leaving_owner:
        room.owner_id = sorted(others)[0]
        session.add(room)


async def set_member_role(
    state: AppState, session: AsyncSession, room_id: str, user_id: str, target_id: str, role: Role
) -> dict[str, Any]:
    room, _ = await member_room(session, room_id, user_id, Role.owner, lock=True)
    membership = await _target(session, room_id, target_id)
    if membership.role == Role.owner.value and role is not Role.owner:
        await _keep_an_owner(session, room, target_id)
    membership.role = role.value
    session.add(membership)
    await _revoke_invites_of(session, room_id, target_id, role)
    await session.commit()
    user = await session.get(User, target_id)
    assert user is not None  # memberships cascade with users
    await notify_membership(state, room_id, target_id)
    return member_json(membership, user)


async def remove_member(state: AppState, session: AsyncSession, room_id: str, user_id: str, target_id: str) -> None:
    """Owners remove anyone; any member may remove themself (leave)."""
    room, my_role = await member_room(session, room_id, user_id, lock=True)
    if target_id != user_id and my_role is not Role.owner:
        raise ApiError(403, "forbidden", "only owners may remove other members")
    membership = await _target(session, room_id, target_id)
    if membership.role == Role.owner.value:
        await _keep_an_owner(session, room, target_id)
    await session.delete(membership)
    await _revoke_invites_of(session, room_id, target_id, None)
    await session.commit()
    await notify_membership(state, room_id, target_id)
