"""Revocation keys: the short strings a principal answers to when sessions or credentials end.

``sid:<session>``, ``user:<user id>`` (every socket of that user), ``jti:<token id>`` (one
access token made outside a sign-in), ``svc:<service token id>``, ``scope:<scope>`` (every
socket of a service scope). Their own module, below both ``signaling.principal`` (which says
which keys a principal answers to) and ``signaling.sessions`` (which announces revoked ones).
"""

from __future__ import annotations


def session_key(session_id: str) -> str:
    return f"sid:{session_id}"


def user_key(user_id: str) -> str:
    return f"user:{user_id}"


def token_key(jti: str) -> str:
    return f"jti:{jti}"


def service_key(token_id: str) -> str:
    return f"svc:{token_id}"


def scope_key(scope: str) -> str:
    return f"scope:{scope}"
