"""Who may ask the persistence peer what about a room's history. Pure rules, no I/O.

docs/protocol.md ("History") and docs/history.md. The persistence peer decides on the
*live* principal of the link a request arrived on (``room.principal(peer_id)``: the server's
stamp with the role presence shows now), at the moment it processes the request and again
before it sends the answer. Nothing a client writes in the request counts.

| query | owner | editor | viewer | services |
| --- | --- | --- | --- | --- |
| ``timeline``, ``version``, ``updates``, ``authors`` | yes | yes | the room's policy (default: no) | no |
| ``checkpoint`` (create a named version) | yes | yes | no | no |
| ``export``, ``delete``, ``policy`` | yes | no | no | no |

Refusal reasons (also metric labels): ``unknown_sender``, ``removed`` (gone from presence: a
removed member's links are closed anyway), ``service``, ``viewer_policy``, ``role``.
"""

from __future__ import annotations

from peer.rights import Principal

READ = frozenset({"timeline", "version", "updates", "authors"})
EDIT = frozenset({"checkpoint"})
OWNER = frozenset({"export", "delete", "policy"})
QUERIES = READ | EDIT | OWNER


def history_refusal(principal: Principal | None, query: str, viewers_read: bool) -> str | None:
    """Why ``principal`` may not run ``query`` now (None: it may). ``query`` must be in QUERIES."""
    if principal is None:
        return "unknown_sender"
    if principal.service is not None:
        return "service"
    role = principal.role
    if role is None:
        return "removed"
    if query in READ:
        if role in ("owner", "editor"):
            return None
        return None if role == "viewer" and viewers_read else "viewer_policy"
    if query in EDIT:
        return None if role in ("owner", "editor") else "role"
    if query in OWNER:
        return None if role == "owner" else "role"
    return "role"
