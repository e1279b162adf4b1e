"""Account logic shared by the password and OAuth flows: one way to end up signed in.

Whatever way a user signs in, they leave holding the same pair: a short-lived JWT access
token and an opaque, rotating refresh token (see ``signaling.tokens``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from .models import RefreshToken, User, new_id, utcnow
from .state import AppState
from .tokens import new_refresh_token


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "name": user.name, "created_at": user.created_at.isoformat()}


async def issue_tokens(state: AppState, session: AsyncSession, user: User, family_id: str | None = None) -> dict[str, Any]:
    """Create a refresh token (new family unless given) and an access token; commits.

    Returns the response body shape of register/login/refresh:
    ``{user, access_token, refresh_token, token_type, expires_in}``.
    """
    refresh, refresh_hash = new_refresh_token()
    session.add(
        RefreshToken(
            user_id=user.id,
            family_id=family_id or new_id(),
            token_hash=refresh_hash,
            expires_at=utcnow() + timedelta(seconds=state.settings.refresh_token_ttl),
        )
    )
    await session.commit()
    access, claims = state.tokens.issue_access(user.id)
    return {
        "user": user_json(user),
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "Bearer",
        "expires_in": claims.expires_at - claims.issued_at,
    }
