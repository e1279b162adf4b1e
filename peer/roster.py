"""Who each remote peer id is, live: the server's stamps plus the latest presence frame.

docs/protocol.md, "Who a link belongs to": the principal of a link is the ``sender`` stamp on
the remote peer id's signaling frames (the server binds a peer id to one principal); its
*effective role* is the role the latest ``presence`` frame lists for that user, or the
stamp's role while presence does not list the user yet. Service links are what their stamp
says. A user who was listed and is no longer (removed, room deleted, or simply gone) is
*gone*: every link to their peer ids closes and their announces and offers are ignored
until presence lists them again.

Pure bookkeeping (no I/O); :class:`peer.room.Room` feeds it and acts on what
:meth:`Roster.presence` returns. Lookups on the per-keystroke path hit a cache that any
stamp or presence change invalidates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .rights import Principal, write_refusal


@dataclass(frozen=True)
class PresenceChange:
    """What a presence frame changed, for the Room to act on."""

    close: frozenset[str]  # peer ids whose links must close now (their user is gone, or the id left)
    gone: frozenset[str]  # user ids that presence no longer lists
    returned: frozenset[str]  # user ids listed again after they were gone
    changed: frozenset[str]  # user ids whose listed role changed


class Roster:
    def __init__(self) -> None:
        self._stamps: dict[str, Principal] = {}  # peer id -> principal as stamped (stamp's role)
        self._listed: dict[str, tuple[str | None, str | None]] = {}  # user id -> (role, name), latest presence
        self._gone: set[str] = set()  # user ids presence listed once and lists no more
        self._present_peer_ids: set[str] = set()
        self._effective: dict[str, Principal | None] = {}  # cache: peer id -> effective principal
        self.presence_frames = 0

    # ------------------------------------------------------------------ input
    def stamp(self, peer_id: str, sender: Any) -> Principal | None:
        """Record the ``sender`` stamp of a signaling frame from ``peer_id``; returns it (or
        the earlier one when this frame carries no usable stamp)."""
        principal = Principal.from_stamp(sender)
        if principal is None:
            return self._stamps.get(peer_id)
        if self._stamps.get(peer_id) != principal:
            self._stamps[peer_id] = principal
            self._effective.pop(peer_id, None)
        return principal

    def forget(self, peer_id: str) -> None:
        """Drop what we know of a peer id (the Room bounds how many it remembers)."""
        self._stamps.pop(peer_id, None)
        self._effective.pop(peer_id, None)

    def presence(self, peers: Any) -> PresenceChange:
        """Take a ``presence`` frame's ``peers`` list: ``[{user_id, name, role, peer_ids}]``."""
        listed: dict[str, tuple[str | None, str | None]] = {}
        present_ids: set[str] = set()
        by_user: dict[str, set[str]] = {}
        for entry in peers if isinstance(peers, list) else ():
            if not isinstance(entry, dict):
                continue
            uid = entry.get("user_id")
            if not isinstance(uid, str) or not uid:
                continue
            role, name = entry.get("role"), entry.get("name")
            listed[uid] = (role if isinstance(role, str) else None, name if isinstance(name, str) else None)
            ids = entry.get("peer_ids")
            if isinstance(ids, list):
                mine = {x for x in ids if isinstance(x, str)}
                present_ids |= mine
                by_user.setdefault(uid, set()).update(mine)
        before = self._listed
        gone_now = set(before) - set(listed)
        returned = self._gone & set(listed)
        changed = {uid for uid, (role, _) in listed.items() if uid in before and before[uid][0] != role}
        self._gone = (self._gone | gone_now) - set(listed)
        close = {pid for pid, pr in self._stamps.items() if pr.user_id is not None and pr.user_id in gone_now}
        close |= self._present_peer_ids - present_ids  # it was here and left: do not wait for ICE consent
        self._listed = listed
        self._present_peer_ids = present_ids
        self._effective.clear()
        self.presence_frames += 1
        return PresenceChange(frozenset(close), frozenset(gone_now), frozenset(returned), frozenset(changed))

    # ------------------------------------------------------------------ questions
    def principal(self, peer_id: str) -> Principal | None:
        """The peer id's principal with its *effective* role (None: never stamped)."""
        try:
            return self._effective[peer_id]
        except KeyError:
            pass
        stamped = self._stamps.get(peer_id)
        effective = stamped
        if stamped is not None and stamped.user_id is not None:
            if stamped.user_id in self._gone:
                effective = Principal(user_id=stamped.user_id, name=stamped.name, role=None)
            else:
                listed = self._listed.get(stamped.user_id)
                if listed is not None:
                    role, name = listed
                    effective = Principal(user_id=stamped.user_id, name=name or stamped.name, role=role)
        self._effective[peer_id] = effective
        return effective

    @property
    def present_peer_ids(self) -> frozenset[str]:
        """The people's peer ids the latest presence frame lists (services are never listed)."""
        return frozenset(self._present_peer_ids)

    def role_of(self, peer_id: str) -> str | None:
        """The effective role of a person's peer id; None for services, gone users and unknown ids."""
        principal = self.principal(peer_id)
        return principal.role if principal is not None and principal.service is None else None

    def blocked(self, peer_id: str) -> bool:
        """True while the peer id's user is gone from presence (ignore its announces and offers)."""
        stamped = self._stamps.get(peer_id)
        return stamped is not None and stamped.user_id is not None and stamped.user_id in self._gone

    def user_gone(self, user_id: str) -> bool:
        return user_id in self._gone

    def write_refusal(self, peer_id: str, doc: str | None = None) -> str | None:
        """Why ``peer_id`` may not write ``doc`` (None: the main document) now, or None if it may."""
        principal = self.principal(peer_id)
        if principal is not None and principal.user_id is not None and principal.user_id in self._gone:
            return "removed"
        return write_refusal(principal, doc)
