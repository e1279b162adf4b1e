"""The persistence peer: stores every room's document and serves it to late joiners.

- ``store`` — SQL storage (append-only update log + atomically compacted snapshot).
- ``lease`` — one owner per room across several persistence peers (Redis or the database).
- ``writer`` — per-room group commit, validation, compaction policy, "saved" state.
- ``service`` — ``codesync persist``: joins active rooms through signaling (``peer`` library).
"""
