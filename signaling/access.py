"""Room access rules, shared by the REST API and the signaling subscribe check."""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from codesync.models import Membership, Role


async def room_role(session: AsyncSession, room_id: str, user_id: str) -> Role | None:
    """The user's role in the room, or None when not a member (or no such room)."""
    row = await session.get(Membership, (room_id, user_id))
    return Role(row.role) if row is not None else None
