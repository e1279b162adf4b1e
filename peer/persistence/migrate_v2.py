"""Schema v1 -> v2 of a room's main document, done by the persistence peer when it loads a room.

v1 held one text (``source``) and ``meta {language, title, schema: 1}``. v2 (docs/workspace.md)
holds a file tree (``files``) whose files each have their own root Y.Text. The migration is an
edit of the persistence peer's own, stored and broadcast like any other, and it moves nothing:

- the v1 ``source`` Y.Text stays where it is, byte for byte, and becomes the content of the
  first file (id ``source``: the fixed first-file update, ``peer.workspace.INIT_UPDATE``), named
  ``main`` + the extension of ``meta.language`` (``main.py`` when there is none);
- ``meta.entry = "source"`` (the v1 code is what Run ran, so it stays the entry file) and
  ``meta.schema = 2``; ``meta.language`` and ``meta.title`` are kept;
- v1 run records are not this module's business (``v1.py`` drops them).

It runs only on a document that has v1 content and no tree yet, so it is idempotent: a
migrated room, a room whose files were all deleted, and an empty new room (whose first browser
makes the first file itself) are left alone. A stock y-webrtc client that binds
``getText('source')`` keeps editing the same text, now the first file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import Counter
from pycrdt import Doc, Map, Text

from .. import workspace

log = logging.getLogger("codesync.persistence")

MIGRATED = Counter("codesync_persist_v2_migrations_total", "room documents migrated from schema v1 to v2")


def needs_migration(doc: Doc) -> bool:
    """v1 content (a ``source`` text or a ``meta`` map with keys), no file tree and no
    ``meta.schema`` of 2 or more (a v2 room whose files were all deleted stays empty)."""
    if workspace.is_v2(doc):
        return False
    try:
        schema = doc.get(workspace.META, type=Map).get("schema")
    except Exception:  # noqa: BLE001
        schema = None
    if isinstance(schema, (int, float)) and schema >= workspace.SCHEMA:
        return False
    try:
        has_source = len(doc.get("source", type=Text)) > 0
    except Exception:  # noqa: BLE001 - not a text: nothing of v1 to carry over
        has_source = False
    try:
        has_meta = len(doc.get(workspace.META, type=Map)) > 0
    except Exception:  # noqa: BLE001
        has_meta = False
    return has_source or has_meta


def migrate(doc: Doc) -> list[bytes]:
    """Migrate ``doc`` from v1 to v2 if it needs it; return the updates made (to be stored)."""
    if not needs_migration(doc):
        return []
    produced: list[bytes] = []
    sub = doc.observe(lambda event: produced.append(event.update))
    try:
        meta = doc.get(workspace.META, type=Map)
        language = meta.get("language")
        language = language if isinstance(language, str) and language in workspace.LANGUAGE_EXTENSION else "python"
        workspace.ensure_first_file(doc, language)
        with doc.transaction():
            if meta.get("entry") is None:
                meta["entry"] = workspace.SOURCE_ID
            meta["schema"] = workspace.SCHEMA
    finally:
        doc.unobserve(sub)
    return produced


def migrate_on_load(doc: Doc, submit: Callable[[bytes], None], room_id: str) -> None:
    """The persistence peer's call at load: migrate, hand the updates to the room's writer
    (stored, and broadcast by the peer library as our own edit), count and log it."""
    try:
        updates = migrate(doc)
    except Exception:  # noqa: BLE001 - a document we cannot migrate is still served as it is
        log.exception("room %s: schema v2 migration failed; the document is served unchanged", room_id)
        return
    if not updates:
        return
    for update in updates:
        submit(update)
    MIGRATED.inc()
    entries = workspace.tree(doc)
    log.info("room %s: migrated the main document to schema v2 (the v1 code is now %s, the entry file)",
             room_id, ", ".join(e.path for e in entries.values()) or "nothing")
