"""Server administration: users (search, disable, re-enable, delete), rooms and their sizes.

Administrators are accounts marked ``is_admin`` (``codesync user create --admin``, or another
administrator) or whose *verified* address is in ``CODESYNC_ADMIN_EMAILS``. Disabling an
account ends it everywhere at once: its sessions are revoked (the API refuses its tokens) and
its ``/signal`` sockets close on every node through the same revocation notice as "sign out
everywhere"; a disabled account cannot sign in (password, refresh or OAuth) until re-enabled.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from .accounts import AccountError, is_admin, revoke_all, user_json
from codesync.models import DocumentSnapshot, DocumentUpdate, Membership, OAuthIdentity, Room, User, utcnow
from .state import AppState

PAGE = 50


def _like(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def list_users(state: AppState, session: AsyncSession, query: str | None, offset: int, limit: int) -> dict[str, Any]:
    stmt = select(User)
    count = select(func.count()).select_from(User)
    if query:
        cond = or_(
            func.lower(User.email).like(_like(query), escape="\\"),
            func.lower(User.name).like(_like(query), escape="\\"),
        )
        stmt = stmt.where(cond)
        count = count.where(cond)
    total = (await session.exec(count)).one()
    users = (await session.exec(stmt.order_by(col(User.created_at).desc(), col(User.id)).offset(offset).limit(limit))).all()
    ids = [u.id for u in users]
    rooms: dict[str, int] = {}
    providers: dict[str, list[str]] = {}
    if ids:
        for uid, n in (
            await session.exec(
                select(Membership.user_id, func.count()).where(col(Membership.user_id).in_(ids)).group_by(Membership.user_id)
            )
        ).all():
            rooms[uid] = int(n)
        for uid, provider in (
            await session.exec(select(OAuthIdentity.user_id, OAuthIdentity.provider).where(col(OAuthIdentity.user_id).in_(ids)))
        ).all():
            providers.setdefault(uid, []).append(provider)
    admins = state.settings.admin_email_list
    return {
        "users": [
            {**user_json(u, admins), "rooms": rooms.get(u.id, 0), "providers": sorted(providers.get(u.id, [])),
             "disabled_at": u.disabled_at.isoformat() if u.disabled_at else None}
            for u in users
        ],
        "total": int(total),
        "offset": offset,
        "limit": limit,
    }


async def set_disabled(state: AppState, session: AsyncSession, admin_id: str, user_id: str, disabled: bool) -> User:
    user = await session.get(User, user_id) if len(user_id) <= 32 else None
    if user is None:
        raise AccountError("not_found", "no such account")
    if disabled and user.id == admin_id:
        raise AccountError("self", "you cannot disable your own account")
    if disabled:
        if user.disabled_at is None:
            user.disabled_at = utcnow()
            session.add(user)
            await session.flush()
        await revoke_all(state, session, user.id)  # commits; closes its sockets on every node
    else:
        user.disabled_at = None
        session.add(user)
        await session.commit()
    return user


async def set_admin(state: AppState, session: AsyncSession, admin_id: str, user_id: str, admin: bool) -> User:
    user = await session.get(User, user_id) if len(user_id) <= 32 else None
    if user is None:
        raise AccountError("not_found", "no such account")
    if not admin and user.id == admin_id:
        raise AccountError("self", "you cannot remove your own administrator role")
    if not admin and user.email_verified and user.email in state.settings.admin_email_list:
        raise AccountError("configured_admin", "this account is an administrator through CODESYNC_ADMIN_EMAILS")
    user.is_admin = admin
    session.add(user)
    await session.commit()
    return user


async def list_rooms(session: AsyncSession, query: str | None, offset: int, limit: int, live: dict[str, int]) -> dict[str, Any]:
    stmt = select(Room, User.name, User.email).join(User, col(User.id) == col(Room.owner_id), isouter=True)
    count = select(func.count()).select_from(Room)
    if query:
        cond = func.lower(Room.name).like(_like(query), escape="\\")
        stmt = stmt.where(cond)
        count = count.where(cond)
    total = (await session.exec(count)).one()
    rows = (await session.exec(stmt.order_by(col(Room.created_at).desc(), col(Room.id)).offset(offset).limit(limit))).all()
    ids = [room.id for room, _, _ in rows]
    members: dict[str, int] = {}
    updates: dict[str, tuple[int, int]] = {}
    snapshots: dict[str, int] = {}
    if ids:
        for rid, n in (
            await session.exec(select(Membership.room_id, func.count()).where(col(Membership.room_id).in_(ids)).group_by(Membership.room_id))
        ).all():
            members[rid] = int(n)
        for rid, n, size in (
            await session.exec(
                select(DocumentUpdate.room_id, func.count(), func.coalesce(func.sum(func.length(DocumentUpdate.data)), 0))
                .where(col(DocumentUpdate.room_id).in_(ids))
                .group_by(DocumentUpdate.room_id)
            )
        ).all():
            updates[rid] = (int(n), int(size))
        for rid, size in (
            await session.exec(
                select(DocumentSnapshot.room_id, func.coalesce(func.sum(func.length(DocumentSnapshot.data)), 0))
                .where(col(DocumentSnapshot.room_id).in_(ids))
                .group_by(DocumentSnapshot.room_id)
            )
        ).all():
            snapshots[rid] = int(size)
    out = []
    for room, owner_name, owner_email in rows:
        n_updates, update_bytes = updates.get(room.id, (0, 0))
        out.append({
            "id": room.id,
            "name": room.name,
            "language": room.language,
            "owner_id": room.owner_id,
            "owner_name": owner_name,
            "owner_email": owner_email,
            "created_at": room.created_at.isoformat(),
            "members": members.get(room.id, 0),
            "stored_updates": n_updates,
            "stored_bytes": update_bytes + snapshots.get(room.id, 0),
            "connected_now": live.get(room.id, 0),
        })
    return {"rooms": out, "total": int(total), "offset": offset, "limit": limit}


async def require_admin_user(state: AppState, session: AsyncSession, user_id: str) -> User:
    user = await session.get(User, user_id)
    if user is None or not is_admin(user, state.settings.admin_email_list):
        raise AccountError("forbidden", "this needs a server administrator")
    return user
