"""Who may say what on a data channel (docs/protocol.md, "The trust model"). Pure rules, no I/O.

The document never passes through the server, so every CodeSync peer checks what it
receives against the *principal* of the link it arrived on — what the signaling server
stamped on that peer id's frames, with the role that presence shows now
(:mod:`peer.roster`). This module is the table of rights; :class:`peer.room.Room` asks it
once per received document update and awareness entry, so everything here is a few
dictionary lookups.

Refusal reasons are short strings used as metric labels (``codesync_peer_dropped_total``):

- ``unknown_sender`` — no server stamp for that peer id (never seen on signaling);
- ``removed`` — the user was in presence and is no longer (removed from the room, or left);
- ``read_only`` — a person whose effective role may not write (a viewer);
- ``not_service`` — a person writing a document only services write (``runs``);
- ``wrong_service`` — a service writing what another service owns (the runner in the main
  document, a state claiming another service);
- ``unknown_doc`` — a named document nobody defined.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

WRITER_ROLES = frozenset({"owner", "editor"})
"""People with these (effective) roles may write the main document and ask for runs."""

MAIN_DOC_SERVICES = frozenset({"persistence"})
"""Services that may write the main document (the persistence peer serves it from storage)."""

NAMED_DOC_WRITERS: Mapping[str, frozenset[str]] = {"runs": frozenset({"runner", "persistence"})}
"""Named documents (message type 102) and the services that may write each. People never do."""

SERVICE_AWARENESS_KEYS = ("service", "saved")
"""Awareness keys that only a service link may carry (``saved``: only the persistence one)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Whom a link belongs to: a person (user id, name, effective role) or a service."""

    user_id: str | None = None
    name: str | None = None
    role: str | None = None
    service: str | None = None

    @classmethod
    def from_stamp(cls, sender: Any) -> "Principal | None":
        """The server's ``sender`` stamp (``{user_id, name, role}`` or ``{service}``); None if unusable."""
        if not isinstance(sender, dict):
            return None
        service = sender.get("service")
        if isinstance(service, str) and service:
            return cls(service=service)
        user_id = sender.get("user_id")
        if not isinstance(user_id, str) or not user_id:
            return None
        name = sender.get("name")
        role = sender.get("role")
        return cls(
            user_id=user_id,
            name=name if isinstance(name, str) else None,
            role=role if isinstance(role, str) else None,
        )

    @property
    def is_service(self) -> bool:
        return self.service is not None


def write_refusal(principal: Principal | None, doc: str | None = None) -> str | None:
    """Why ``principal`` may not write document ``doc`` (None = the main document), or None if it may."""
    if principal is None:
        return "unknown_sender"
    if doc is None:
        if principal.service is not None:
            return None if principal.service in MAIN_DOC_SERVICES else "wrong_service"
        return None if principal.role in WRITER_ROLES else "read_only"
    writers = NAMED_DOC_WRITERS.get(doc)
    if writers is None:
        return "unknown_doc"
    if principal.service is None:
        return "not_service"
    return None if principal.service in writers else "wrong_service"


def may_run(principal: Principal | None) -> bool:
    """Run and stop requests (app ``run`` / ``stop``) come from owners and editors only."""
    return principal is not None and principal.service is None and principal.role in WRITER_ROLES


def vet_awareness_state(principal: Principal | None, state: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """An awareness state as a receiving peer may keep it: ``(state, None)`` or ``(None, reason)``.

    From a person's link the state must name that person (``user.id`` = the stamped user id);
    ``user.name`` is replaced by the stamped name (a copy is returned, the input is not
    changed); ``service`` and ``saved`` are refused. From a service link, ``service`` must be
    the stamped service and only the persistence service may carry ``saved``.
    """
    if principal is None:
        return None, "unknown_sender"
    if principal.service is not None:
        if state.get("service") != principal.service:
            return None, "wrong_service"
        if "saved" in state and principal.service != "persistence":
            return None, "wrong_service"
        return state, None
    if any(key in state for key in SERVICE_AWARENESS_KEYS):
        return None, "claims_service"
    user = state.get("user")
    if not isinstance(user, dict) or user.get("id") != principal.user_id:
        return None, "wrong_user"
    if principal.name is not None and user.get("name") != principal.name:
        state = {**state, "user": {**user, "name": principal.name}}
    return state, None
