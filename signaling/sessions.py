"""Sessions and service credentials end at once: revocation events and the ``/signal`` safety net.

A *session* is one sign-in (an ``auth_sessions`` row; its refresh tokens form the family of
the same id, its access tokens carry ``sid``). A *service credential* is a ``service_tokens``
row. Both can be revoked — logout, "sign out everywhere", refresh-token reuse, a password
change, an account deletion, ``codesync token revoke`` — and from then on:

- the HTTP API and ``/signal`` refuse their tokens (``signaling.principal`` looks the session
  or credential up on every request and every connect: one primary-key read);
- open ``/signal`` sockets of theirs are closed (4003) within seconds on every node: the
  revoking code calls :func:`announce`, which hands *revocation keys* to the signaling hub
  (``Hub.sessions_revoked``: this node's sockets, and with Redis a notice on
  ``{prefix}:sig:bus`` for the others). A process without a hub (the ``codesync`` command
  line) publishes that notice itself (:func:`publish_notice`).
- As a safety net for a lost notice (Redis briefly down, a socket that connected while the
  revocation committed, a command-line revocation without Redis), every node re-checks the
  sessions and credentials of its open sockets every ``CODESYNC_SESSION_RECHECK`` seconds
  (:func:`recheck_once`, a few ``IN (...)`` queries per round, whatever the number of sockets).

Revocation keys are short strings a principal answers to (``Principal.revocation_keys``):
``sid:<session>``, ``user:<user id>`` (every socket of that user), ``jti:<token id>`` (one
access token made outside a sign-in), ``svc:<service token id>``, ``scope:<scope>`` (every
socket of a service scope).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from sqlmodel import col, select

from codesync.models import AuthSession, ServiceToken, User
from .revocation import scope_key, service_key, session_key, token_key, user_key  # noqa: F401  (re-exported)
from .state import STATE, AppState

if TYPE_CHECKING:  # pragma: no cover
    from .principal import Principal

log = logging.getLogger("codesync.sessions")

RevocationListener = Callable[[set[str]], Awaitable[Any]]
LISTENERS_KEY = "revocation_listeners"
CHUNK = 500  # ids per IN (...) list


# ----------------------------------------------------------------------------- events
def add_revocation_listener(state: AppState, listener: RevocationListener) -> None:
    state.extras.setdefault(LISTENERS_KEY, []).append(listener)


def remove_revocation_listener(state: AppState, listener: RevocationListener) -> None:
    listeners = state.extras.get(LISTENERS_KEY, [])
    if listener in listeners:
        listeners.remove(listener)


async def announce(state: AppState, keys: Iterable[str]) -> None:
    """Tell the signaling hub (this node and, through it, every other) that ``keys`` are revoked.

    Call it *after* the revocation is committed. Never raises: the revocation itself has
    happened, and the periodic re-check closes whatever a failed notice missed.
    """
    wanted = {k for k in keys if k}
    if not wanted:
        return
    for listener in list(state.extras.get(LISTENERS_KEY, [])):
        try:
            await listener(wanted)
        except Exception:  # noqa: BLE001
            log.exception("revocation listener failed; the periodic re-check will close the sockets")


async def publish_notice(redis_url: str, prefix: str, keys: Iterable[str]) -> bool:
    """From a process without a hub (the command line): the same notice every node acts on."""
    from redis.asyncio import Redis

    from .ws.redis_backend import session_notice

    wanted = sorted({k for k in keys if k})
    if not wanted:
        return True
    redis = Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        await redis.publish(f"{prefix}:sig:bus", session_notice(b"cli", wanted))
        return True
    except Exception as exc:  # noqa: BLE001
        log.warning("could not notify the signaling nodes through Redis (%s); they notice within "
                    "CODESYNC_SESSION_RECHECK seconds", type(exc).__name__)
        return False
    finally:
        await redis.aclose()


# ----------------------------------------------------------------------------- safety net
def _chunks(items: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]


async def dead_keys(state: AppState, principals: Iterable["Principal"]) -> set[str]:
    """Revocation keys of those ``principals`` whose session / credential / account is gone."""
    sids: set[str] = set()
    legacy: dict[str, list["Principal"]] = {}
    services: set[str] = set()
    for p in principals:
        if p.service is not None:
            if p.token_id:
                services.add(p.token_id)
        elif p.session_id:
            sids.add(p.session_id)
        elif p.user_id:
            legacy.setdefault(p.user_id, []).append(p)
    dead: set[str] = set()
    async with state.sessions() as session:
        if sids:
            live: set[str] = set()
            for chunk in _chunks(sorted(sids)):
                rows = await session.exec(
                    select(AuthSession.id).where(col(AuthSession.id).in_(chunk), col(AuthSession.revoked_at).is_(None))
                )
                live.update(rows.all())
            dead.update(session_key(s) for s in sids - live)
        if legacy:
            found: dict[str, Any] = {}
            for chunk in _chunks(sorted(legacy)):
                rows = await session.exec(select(User.id, User.sessions_revoked_at).where(col(User.id).in_(chunk)))
                found.update({uid: cutoff for uid, cutoff in rows.all()})
            for uid, ps in legacy.items():
                if uid not in found:
                    dead.add(user_key(uid))
                    continue
                cutoff = found[uid]
                for p in ps:
                    if cutoff is not None and p.token_id and p.issued_at <= cutoff.timestamp():
                        dead.add(token_key(p.token_id))
        if services:
            live_services: set[str] = set()
            for chunk in _chunks(sorted(services)):
                rows = await session.exec(
                    select(ServiceToken.id).where(col(ServiceToken.id).in_(chunk), col(ServiceToken.revoked_at).is_(None))
                )
                live_services.update(rows.all())
            dead.update(service_key(t) for t in services - live_services)
    return dead


async def recheck_once(state: AppState, hub: Any) -> int:
    """Close this node's sockets whose session or credential no longer holds; how many closed."""
    principals = {conn.principal for conn in list(hub.connections.values())}
    if not principals:
        return 0
    dead = await dead_keys(state, principals)
    return hub.close_sessions(dead) if dead else 0


async def _recheck_loop(state: AppState, hub: Any) -> None:
    interval = max(0.2, float(state.settings.session_recheck))
    while True:
        await asyncio.sleep(interval)
        try:
            closed = await recheck_once(state, hub)
            if closed:
                log.info("closed %d /signal socket(s) of revoked sessions or service tokens", closed)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - database briefly gone: try again next round
            log.warning("re-checking the sessions of open sockets failed", exc_info=True)


async def _context(app: web.Application):
    """Wire the hub to revocation events and run the re-check (after the hub exists)."""
    from .ws.server import HUB

    state = app[STATE]
    hub = app[HUB]
    add_revocation_listener(state, hub.sessions_revoked)
    task = asyncio.create_task(_recheck_loop(state, hub), name="session-recheck")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        remove_revocation_listener(state, hub.sessions_revoked)


def setup(app: web.Application) -> None:
    # Registered after the signaling server's own context, so the hub is running here.
    app.cleanup_ctx.append(_context)
