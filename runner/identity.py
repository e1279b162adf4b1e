"""Who this runner is: a stable *instance* id and a per-process *session* id.

Several runners may share one dockerd and one room document, so what one runner cleans up
after a crash must never be another live runner's:

- ``instance`` (``CODESYNC_RUNNER_INSTANCE``, default the hostname) stays the same across
  restarts of the same runner, so a restarted runner can recognise its own leftovers;
- ``session`` is ``host:pid:start`` (the process start time in clock ticks since boot), unique
  per process; a session on this host whose process is still alive is live, whatever its
  instance id says (two runners misconfigured with one instance id still spare each other).

Docker containers carry both as labels; run entries in the document carry both as fields.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


def _start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time); None when that process does not exist."""
    try:
        raw = open(f"/proc/{pid}/stat", "rb").read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces: split after it.
    fields = raw[raw.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def session_of(pid: int, host: str | None = None) -> str:
    return f"{host or socket.gethostname()}:{pid}:{_start_ticks(pid) or 0}"


def session_alive(session: str) -> bool:
    """True when ``session`` is a process on this host that is still running (same start time).

    A session of another host cannot be checked from here: False (the caller decides by
    other means, e.g. a heartbeat).
    """
    host, _, rest = session.partition(":")
    pid, _, ticks = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    return _start_ticks(int(pid)) == ticks


@dataclass(frozen=True)
class RunnerIdentity:
    instance: str
    session: str

    @classmethod
    def current(cls, instance: str | None = None) -> "RunnerIdentity":
        return cls(instance or socket.gethostname(), session_of(os.getpid()))

    def owns_leftover(self, instance: str | None, session: str | None) -> bool:
        """Something labelled (instance, session) is a leftover of ours to clean up: our
        instance, not this session, and not a live process on this host."""
        return (
            instance == self.instance
            and bool(session)
            and session != self.session
            and not session_alive(session)  # type: ignore[arg-type]
        )
