"""Per-connection limits of ``/signal``, all read from Settings (``CODESYNC_SIGNAL_*``).

The reference server has none: it dies on one malformed frame and buffers without bound for
a client that stops reading. These keep one client from hurting the others.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from codesync.settings import Settings

# A browser or peer.Room uses one peer id per connection, and a fresh one after
# ``peer_id_taken``: two is all a well-behaved user connection ever needs.
USER_PEER_IDS = 2


@dataclass(frozen=True)
class Limits:
    max_frame: int
    max_topics: int
    rate: float  # frames per second, sustained
    burst: float
    max_conns_per_user: int
    send_queue: int
    max_strikes: int
    heartbeat: float
    max_peer_ids: int  # peer ids one connection may own at once (squatting, hoarding)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        return cls(
            max_frame=settings.signal_max_frame,
            max_topics=settings.signal_max_topics,
            rate=settings.signal_rate,
            burst=max(1.0, settings.signal_rate * 2),
            max_conns_per_user=settings.signal_max_conns_per_user,
            send_queue=settings.signal_send_queue,
            max_strikes=settings.signal_max_strikes,
            heartbeat=settings.signal_heartbeat,
            max_peer_ids=USER_PEER_IDS,
        )

    @classmethod
    def for_services(cls, settings: Settings) -> "Limits":
        """Service peers (persistence, runner) sit in every active room over one connection,
        so they get room-count topics and a frame rate that grows with the rooms they serve."""
        user = cls.from_settings(settings)
        return replace(
            user,
            max_topics=settings.signal_service_max_topics,
            rate=settings.signal_service_rate,
            burst=max(1.0, settings.signal_service_rate * 2),
            send_queue=max(user.send_queue, settings.signal_service_send_queue),
            # one peer id per room (peer.Room), and a room may be left and joined again
            max_peer_ids=2 * settings.signal_service_max_topics,
        )
