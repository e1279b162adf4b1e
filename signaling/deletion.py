"""Deleting an account: its rooms first (the user decides), then the account, then its sockets.

Why it is careful:

* ``rooms.owner_id`` is ``ON DELETE CASCADE``: deleting a user row would silently delete every
  room it is recorded as owning, with everyone else's work in it. So before the row goes,
  every room the user owns is either *transferred* (another member becomes owner, or another
  owner already is one and ``owner_id`` moves to them) or *deleted* on purpose — the user (or
  the administrator deleting them) says which for each room they are the only owner of; an
  undecided room refuses the deletion (409 ``rooms_need_decision``).
* The stored document updates are not the user's to take away: rooms that live on keep all of
  their content. The document tables have no foreign key to ``users`` and must never get a
  cascading one; whatever records *who* wrote an update keeps the plain id, and an id with a
  ``deleted_accounts`` tombstone is shown as "deleted user".
* Everything that is the user's alone goes with the row (cascades): memberships, sessions,
  refresh tokens, linked providers, emailed links, the invites they made. After the commit
  their ``/signal`` sockets close on every node (``sessions.announce``) and every room they were
  in re-checks its subscribers, so peers see them leave at once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from . import mailtemplates, sessions
from .accounts import AccountError
from .mail import send_later
from codesync.models import AuthSession, DeletedAccount, Membership, RefreshToken, Role, Room, User, utcnow
from .rooms import notify_membership, purge_room
from .state import AppState

DELETE = "delete"


async def owned_rooms(session: AsyncSession, user_id: str) -> list[dict[str, Any]]:
    """The rooms ``user_id`` owns, and for each whether a decision is needed (no other owner)
    and who could take it over (the other members, best role first)."""
    rows = await session.exec(
        select(Room)
        .join(Membership, col(Membership.room_id) == col(Room.id))
        .where(Membership.user_id == user_id, Membership.role == Role.owner.value)
        .order_by(col(Room.created_at))
    )
    out = []
    for room in rows.all():
        members = (
            await session.exec(
                select(Membership, User)
                .join(User, col(User.id) == col(Membership.user_id))
                .where(Membership.room_id == room.id, Membership.user_id != user_id)
                .order_by(col(Membership.created_at))
            )
        ).all()
        others = [{"user_id": u.id, "name": u.name, "role": m.role} for m, u in members]
        others.sort(key=lambda m: -Role(m["role"]).rank)  # stable: owners, editors, viewers
        out.append({
            "id": room.id,
            "name": room.name,
            "other_owners": any(m["role"] == Role.owner.value for m in others),
            "needs_decision": not any(m["role"] == Role.owner.value for m in others),
            "members": others,
        })
    return out


def _default_choice(room: dict[str, Any], default: str | None) -> str | None:
    if default == DELETE:
        return DELETE
    if default == "transfer":
        return room["members"][0]["user_id"] if room["members"] else DELETE
    return None


async def delete_account(
    state: AppState,
    session: AsyncSession,
    user_id: str,
    decisions: dict[str, str],
    default: str | None = None,
) -> dict[str, list[str]]:
    """Delete ``user_id``. ``decisions``: room id → ``"delete"`` or the user id of the member
    who becomes its owner, for each room with no other owner; ``default`` (administrators):
    ``"transfer"`` (to the member with the highest role, oldest first; a room with nobody else
    is deleted) or ``"delete"`` for rooms without a decision.

    Returns ``{"deleted_rooms": [...], "transferred_rooms": [...]}``.
    """
    user = await session.get(User, user_id)
    if user is None:
        raise AccountError("not_found", "no such account")
    plan = await owned_rooms(session, user_id)
    undecided = []
    chosen: dict[str, str] = {}
    for room in plan:
        if not room["needs_decision"]:
            continue
        choice = decisions.get(room["id"]) or _default_choice(room, default)
        if choice is None:
            undecided.append(room)
            continue
        if choice != DELETE and choice not in {m["user_id"] for m in room["members"]}:
            raise AccountError("invalid", f"rooms.{room['id']}: the new owner must be a member of the room")
        chosen[room["id"]] = choice
    if undecided:
        raise AccountError(
            "rooms_need_decision", "decide for each room you alone own: transfer it to a member, or delete it",
            {"rooms": undecided},
        )

    deleted, transferred = [], []
    touched: list[tuple[str, str | None]] = []  # (room, user whose membership changed) to announce
    for room_id, choice in chosen.items():
        room = await session.get(Room, room_id)
        if room is None:
            continue
        if choice == DELETE:
            await purge_room(session, room)
            deleted.append(room_id)
            touched.append((room_id, None))
        else:
            membership = await session.get(Membership, (room_id, choice))
            assert membership is not None
            membership.role = Role.owner.value
            session.add(membership)
            room.owner_id = choice
            session.add(room)
            transferred.append(room_id)
            touched.append((room_id, choice))
    await session.flush()
    # Every room still recorded as owned by the user moves to another owner (cascade guard).
    still = (await session.exec(select(Room).where(col(Room.owner_id) == user_id))).all()
    for room in still:
        owners = (
            await session.exec(
                select(Membership.user_id).where(
                    Membership.room_id == room.id, Membership.role == Role.owner.value, Membership.user_id != user_id
                )
            )
        ).all()
        if not owners:  # pragma: no cover - the plan above gave every such room a decision
            raise AccountError("rooms_need_decision", f"room {room.id} has no other owner")
        room.owner_id = sorted(owners)[0]
        session.add(room)
    member_of = list((await session.exec(select(Membership.room_id).where(Membership.user_id == user_id))).all())
    touched += [(room_id, user_id) for room_id in member_of if room_id not in deleted]
    now = utcnow()
    await session.exec(update(AuthSession).where(col(AuthSession.user_id) == user_id).values(revoked_at=now))
    await session.exec(update(RefreshToken).where(col(RefreshToken.user_id) == user_id).values(revoked_at=now))
    email = user.email
    await session.delete(user)
    session.add(DeletedAccount(user_id=user_id, deleted_at=now))
    await session.commit()
    await sessions.announce(state, [sessions.user_key(user_id)])
    for room_id, who in touched:
        await notify_membership(state, room_id, who)
    send_later(state, mailtemplates.account_deleted(state.settings, email))
    return {"deleted_rooms": deleted, "transferred_rooms": transferred}
