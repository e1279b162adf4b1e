"""Who wrote what: authors, and which author each Yjs client id belongs to. Pure, no I/O.

The persistence peer cannot trust what a client says about itself; what it can trust is the
server's stamp on the link an update arrived on (``room.principal(peer_id)``, docs/protocol.md
"The trust model"). Yjs items carry no author, only a client id and a clock. So:

- **Authors** are the principals that delivered updates to a room (a user, or a service),
  numbered per room (``history_authors.num``; rows store the small number, not the id).
- **Client bindings** (``history_clients``): a client id belongs to one author.
  - *Direct* (final): the client id was announced in awareness on the author's own link
    (a CodeSync peer's awareness client id is its document's client id, and awareness is
    never relayed: the awareness gate binds a client id to the first link that announced it
    and checks ``user.id`` against the stamp), or it is the persistence peer's own.
  - *Provisional*: the first update carrying a client id not bound yet arrived on a link of
    user U: it is U's for now (that is right when U wrote it, and the best guess when U only
    relayed it). A later direct binding replaces it; nothing else does.
- An update's author is the owner of the client that added most of its clocks; a
  delete-only update (Yjs deletions carry no client id) is the delivering link's.

Limits (docs/history.md): a client id only ever seen through relays is attributed to the
relaying user; deletions relayed by another peer are attributed to the relaying user; Yjs
items are not signed, so an editor's modified client can write items under a client id it
has not claimed yet — the row's ``via`` (who delivered it) is kept as the audit trail.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from peer.rights import Principal

from .yupdate import Range

MAX_CLIENTS = 200_000  # client bindings kept per room; beyond, new client ids fall back to ``via``


@dataclass(frozen=True)
class Author:
    num: int
    user_id: str | None = None
    service: str | None = None
    name: str = ""

    def as_json(self) -> dict:
        out: dict = {"num": self.num, "name": self.name}
        if self.user_id is not None:
            out["user_id"] = self.user_id
        if self.service is not None:
            out["service"] = self.service
        return out


@dataclass(frozen=True)
class Binding:
    author: int
    direct: bool


class Attribution:
    """One room's authors and client bindings, with the changes not yet stored."""

    def __init__(self, authors: Iterable[Author] = (), clients: Iterable[tuple[int, Binding]] = ()) -> None:
        self.authors: dict[int, Author] = {}
        self._by_key: dict[tuple[str, str], int] = {}
        for author in authors:
            self._add(author)
        self.clients: dict[int, Binding] = dict(clients)
        # written at the next commit (values as they were when changed)
        self.dirty_authors: dict[int, Author] = {}
        self.dirty_clients: dict[int, Binding] = {}

    def _add(self, author: Author) -> None:
        self.authors[author.num] = author
        key = ("s", author.service) if author.service else ("u", author.user_id or "")
        self._by_key[key] = author.num

    # ------------------------------------------------------------------ authors
    def author_of(self, principal: Principal | None) -> int | None:
        """The room-local number of ``principal`` (registered on first sight; a changed
        display name is recorded too)."""
        if principal is None:
            return None
        if principal.service:
            key, name = ("s", principal.service), principal.service
        elif principal.user_id:
            key, name = ("u", principal.user_id), principal.name or ""
        else:
            return None
        num = self._by_key.get(key)
        if num is not None:
            current = self.authors[num]
            if name and current.name != name:
                updated = Author(num, current.user_id, current.service, name[:200])
                self.authors[num] = updated
                self.dirty_authors[num] = updated
            return num
        num = max(self.authors, default=0) + 1
        author = Author(num, None if principal.service else principal.user_id, principal.service, name[:200])
        self._add(author)
        self.dirty_authors[num] = author
        return num

    # ------------------------------------------------------------------ clients
    def claim(self, client: int, author: int | None) -> bool:
        """``client`` was announced on ``author``'s own link: bind it for good, unless it
        already has a direct binding (first direct one wins). True when it changed."""
        if author is None:
            return False
        current = self.clients.get(client)
        if current is not None and current.direct:
            return False
        if current is None and len(self.clients) >= MAX_CLIENTS:
            return False
        binding = Binding(author, True)
        self.clients[client] = binding
        self.dirty_clients[client] = binding
        return True

    def observe(self, ranges: Iterable[Range], via: int | None) -> None:
        """An update carrying ``ranges`` arrived through ``via``: bind its unknown clients to
        ``via`` provisionally."""
        if via is None:
            return
        for client, _start, _end in ranges:
            if client not in self.clients and len(self.clients) < MAX_CLIENTS:
                binding = Binding(via, False)
                self.clients[client] = binding
                self.dirty_clients[client] = binding

    def owner(self, client: int | None) -> int | None:
        if client is None:
            return None
        binding = self.clients.get(client)
        return binding.author if binding is not None else None

    def author_for(self, key_client: int | None, via: int | None) -> int | None:
        """Whose update this is: the owner of its key client, else whoever delivered it."""
        owner = self.owner(key_client)
        return owner if owner is not None else via

    # ------------------------------------------------------------------ persistence
    def take_dirty(self) -> tuple[dict[int, Author], dict[int, Binding]]:
        """What to write now (copies); :meth:`written` clears what was written unchanged."""
        return dict(self.dirty_authors), dict(self.dirty_clients)

    def written(self, authors: dict[int, Author], clients: dict[int, Binding]) -> None:
        for num, author in authors.items():
            if self.dirty_authors.get(num) == author:
                del self.dirty_authors[num]
        for client, binding in clients.items():
            if self.dirty_clients.get(client) == binding:
                del self.dirty_clients[client]
