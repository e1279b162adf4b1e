"""The forward rule of a mesh room (docs/protocol.md "Room topology"), as a pure function.

y-webrtc relays every remote update to every other link, so in a full mesh of N peers each
member receives about N copies of each keystroke (issue 15: N + 2 with the service peers).
Peers with the capability ``mesh`` tell their linked mesh peers which links they have open
(message type 103) and forward an update only where it is needed:

- to a peer that is not a mesh peer, or that has not told us its links yet: always (as
  y-webrtc does — it may have no other source);
- to a peer linked to the link the update came from: never (it has it from there);
- otherwise: only if we come first among the writers linked to both the origin link and
  the target, ourselves included — members before service peers, then by peer id — so
  exactly one of them forwards, and a service peer (linked to everyone: the hub of a room
  beyond a full mesh) only when no member can.

Peers with the capability ``relayed`` also tell forwarded updates from the link's own (type
104, peer.sync): a forwarded update is never forwarded again to such a peer. So a keystroke
travels at most two hops — its author, then the one elected forwarder per target — and each
member gets one copy, also when the mesh is partial (every member is linked to the
persistence peer, so the author and any target always have a common neighbour).

In a full mesh nobody forwards. Races (a links message still on its way) cost a duplicate
(harmless: Yjs ignores it) or a miss, which the periodic state-vector exchange repairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable


def should_forward(
    me: str,
    origin: str,
    target: str,
    origin_links: Iterable[str] | None,
    target_links: frozenset[str] | set[str] | None,
    *,
    passive: Callable[[str], bool] = lambda peer_id: False,
    service: Callable[[str], bool] = lambda peer_id: False,
) -> bool:
    """Whether ``me``, having applied an update that arrived on the link to ``origin``, sends
    it on to ``target``.

    ``target_links``: the open links ``target`` announced (None: not a mesh peer, or nothing
    announced yet). ``origin_links``: the same for ``origin`` (None: unknown — then only we
    are known to be linked to both). ``passive(peer_id)``: peers whose forwarding the target
    would not accept (they may not write the document: viewers, the runner) or that never
    forward; they are not counted as forwarders, so a viewer with the smallest id does not
    swallow everyone's copies. ``service(peer_id)``: service peers, elected only after every
    member (so the persistence peer's cost per keystroke does not grow with the room).
    """
    if target == origin:
        return False
    if target_links is None:
        return True
    if origin in target_links:
        return False
    if origin_links is None:
        return True
    rank = (service(me), me)
    for peer_id in origin_links:
        if (peer_id in target_links and peer_id != target and peer_id != me and not passive(peer_id)
                and (service(peer_id), peer_id) < rank):
            return False
    return True
