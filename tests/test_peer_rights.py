"""The trust model's pure parts: peer/rights.py (who may write what), peer/roster.py (who a
link belongs to, live), peer/awareness_gate.py (which awareness entries a peer keeps) and the
type-102 framing. The same rules end to end, with real peers: tests/test_trust_peers.py."""

from __future__ import annotations

import pytest

from peer import protocol as p
from peer.awareness_gate import AwarenessGate
from peer.protocol import AwarenessEntry
from peer.rights import Principal, may_run, vet_awareness_state, write_refusal
from peer.roster import Roster

EDITOR = {"user_id": "u-ed", "name": "Ed", "role": "editor"}
VIEWER = {"user_id": "u-vi", "name": "Vi", "role": "viewer"}
OWNER = {"user_id": "u-ow", "name": "Ow", "role": "owner"}


def presence(*entries: tuple[dict, list[str]], **roles: str) -> list[dict]:
    return [
        {"user_id": s["user_id"], "name": s["name"], "role": roles.get(s["user_id"].replace("-", "_"), s["role"]),
         "peer_ids": ids}
        for s, ids in entries
    ]


# ------------------------------------------------------------------ rights
@pytest.mark.parametrize(
    "stamp, doc, refusal",
    [
        (OWNER, None, None),
        (EDITOR, None, None),
        (VIEWER, None, "read_only"),
        ({"user_id": "u", "name": "N", "role": None}, None, "read_only"),
        ({"service": "persistence"}, None, None),
        ({"service": "runner"}, None, "wrong_service"),
        ({"service": "runner"}, "runs", None),
        ({"service": "persistence"}, "runs", None),
        (OWNER, "runs", "not_service"),
        (EDITOR, "runs", "not_service"),
        ({"service": "runner"}, "secrets", "unknown_doc"),
        (None, None, "unknown_sender"),
        ({"role": "owner"}, None, "unknown_sender"),  # a stamp without a user id is no principal
    ],
)
def test_who_may_write_which_document(stamp, doc, refusal) -> None:
    assert write_refusal(Principal.from_stamp(stamp), doc) == refusal


def test_only_owners_and_editors_may_run() -> None:
    assert may_run(Principal.from_stamp(EDITOR)) and may_run(Principal.from_stamp(OWNER))
    assert not may_run(Principal.from_stamp(VIEWER))
    assert not may_run(Principal.from_stamp({"service": "runner"})) and not may_run(None)


def test_awareness_states_must_match_the_link() -> None:
    ed = Principal.from_stamp(EDITOR)
    state, why = vet_awareness_state(ed, {"user": {"id": "u-ed", "name": "Mallory", "color": "#f00"}, "cursor": 1})
    assert why is None and state == {"user": {"id": "u-ed", "name": "Ed", "color": "#f00"}, "cursor": 1}
    assert vet_awareness_state(ed, {"user": {"id": "u-ow", "name": "Ow"}}) == (None, "wrong_user")
    assert vet_awareness_state(ed, {"cursor": 1}) == (None, "wrong_user")
    assert vet_awareness_state(ed, {"user": {"id": "u-ed"}, "saved": {"status": "saved"}}) == (None, "claims_service")
    assert vet_awareness_state(ed, {"user": {"id": "u-ed"}, "service": "runner"}) == (None, "claims_service")
    persistence = Principal.from_stamp({"service": "persistence"})
    runner = Principal.from_stamp({"service": "runner"})
    saved = {"service": "persistence", "saved": {"status": "saved"}}
    assert vet_awareness_state(persistence, saved) == (saved, None)
    assert vet_awareness_state(runner, saved) == (None, "wrong_service")
    assert vet_awareness_state(runner, {"service": "runner", "saved": {}}) == (None, "wrong_service")
    assert vet_awareness_state(runner, {"service": "runner", "languages": ["c"]})[1] is None
    assert vet_awareness_state(None, {"user": {"id": "u-ed"}}) == (None, "unknown_sender")


# ------------------------------------------------------------------ roster
def test_effective_role_follows_presence_and_the_stamp_until_listed() -> None:
    roster = Roster()
    roster.stamp("p-ed", EDITOR)
    assert roster.role_of("p-ed") == "editor" and roster.write_refusal("p-ed") is None  # no presence yet
    change = roster.presence(presence((EDITOR, ["p-ed"]), u_ed="viewer"))
    assert change.changed == frozenset() and not change.close  # first sight, not a change
    assert roster.role_of("p-ed") == "viewer" and roster.write_refusal("p-ed") == "read_only"
    roster.stamp("p-ed", EDITOR)  # an old stamp on a later frame does not undo the demotion
    assert roster.role_of("p-ed") == "viewer"
    change = roster.presence(presence((EDITOR, ["p-ed"])))
    assert change.changed == {"u-ed"} and roster.role_of("p-ed") == "editor"
    roster.stamp("p-new", VIEWER)  # presence does not list this user yet: the stamp counts
    assert roster.role_of("p-new") == "viewer"
    assert roster.principal("unknown") is None and roster.write_refusal("unknown") == "unknown_sender"
    roster.stamp("p-svc", {"service": "runner"})
    assert roster.role_of("p-svc") is None and roster.write_refusal("p-svc", "runs") is None


def test_a_user_gone_from_presence_is_blocked_until_listed_again() -> None:
    roster = Roster()
    roster.stamp("p-ed1", EDITOR)
    roster.stamp("p-ed2", EDITOR)  # a second tab, not yet in presence
    roster.stamp("p-ow", OWNER)
    roster.presence(presence((EDITOR, ["p-ed1"]), (OWNER, ["p-ow"])))
    change = roster.presence(presence((OWNER, ["p-ow"])))
    assert change.gone == {"u-ed"} and change.close == {"p-ed1", "p-ed2"}
    assert roster.blocked("p-ed1") and roster.blocked("p-ed2") and not roster.blocked("p-ow")
    assert roster.write_refusal("p-ed1") == "removed" and roster.role_of("p-ed1") is None
    roster.stamp("p-ed3", EDITOR)  # a fresh peer id of a gone user is blocked too
    assert roster.blocked("p-ed3")
    change = roster.presence(presence((EDITOR, []), (OWNER, ["p-ow"])))
    assert change.returned == {"u-ed"} and not roster.blocked("p-ed3") and roster.write_refusal("p-ed3") is None


def test_a_peer_id_leaving_presence_is_closed_but_its_user_stays() -> None:
    roster = Roster()
    roster.stamp("tab1", EDITOR)
    roster.stamp("tab2", EDITOR)
    roster.presence(presence((EDITOR, ["tab1", "tab2"])))
    change = roster.presence(presence((EDITOR, ["tab2"])))
    assert change.close == {"tab1"} and not change.gone and not roster.blocked("tab1")


def test_presence_garbage_is_ignored() -> None:
    roster = Roster()
    roster.stamp("p", EDITOR)
    roster.presence(["junk", {"user_id": 5}, {"user_id": "u-ed", "role": 7, "peer_ids": "x"}])
    assert roster.role_of("p") is None  # listed with an unusable role: may not write
    assert roster.presence("not a list").gone == {"u-ed"}


# ------------------------------------------------------------------ awareness gate
def entry(cid: int, state: dict | None, clock: int = 1) -> AwarenessEntry:
    return AwarenessEntry(cid, clock, state)


def test_a_client_id_belongs_to_the_first_link_that_announced_it() -> None:
    gate = AwarenessGate(1, state_bytes=1000, per_link=2, total=10)
    ed, ow = Principal.from_stamp(EDITOR), Principal.from_stamp(OWNER)
    kept, drops = gate.vet("link-ed", ed, [entry(10, {"user": {"id": "u-ed", "name": "x"}})], {})
    assert [e.state["user"]["name"] for e in kept] == ["Ed"] and not drops and gate.owner(10) == "link-ed"
    kept, drops = gate.vet("link-ow", ow, [entry(10, {"user": {"id": "u-ow"}}, 5), entry(10, None, 6)], {10: {}})
    assert kept == [] and drops == {"client_id_taken": 2}  # its state and its removal of that state
    kept, drops = gate.vet("link-ow", ow, [entry(1, {"user": {"id": "u-ow"}})], {})
    assert kept == [] and drops == {"own_client_id": 1}
    kept, _ = gate.vet("link-ed", ed, [entry(10, None, 2)], {10: {}})
    assert kept == [entry(10, None, 2)]
    gate.released([10])
    kept, _ = gate.vet("link-ow", ow, [entry(10, {"user": {"id": "u-ow"}}, 7)], {})
    assert len(kept) == 1 and gate.owner(10) == "link-ow"
    assert gate.link_closed("link-ow") == [10] and gate.owner(10) is None


def test_awareness_bounds_per_link_total_and_size() -> None:
    gate = AwarenessGate(1, state_bytes=60, per_link=2, total=3)
    ed = Principal.from_stamp(EDITOR)
    ok = {"user": {"id": "u-ed"}}
    kept, drops = gate.vet("a", ed, [entry(i, ok) for i in (10, 11, 12)], {})
    assert [e.client_id for e in kept] == [10, 11] and drops == {"too_many": 1}
    kept, drops = gate.vet("b", ed, [entry(20, ok), entry(21, ok), entry(22, {"user": {"id": "u-ed", "pad": "x" * 80}})], {})
    assert [e.client_id for e in kept] == [20] and drops == {"too_many": 1, "too_large": 1}


# ------------------------------------------------------------------ framing
def test_named_document_messages_round_trip_and_reject_garbage() -> None:
    frame = p.encode_doc("runs", p.SYNC_UPDATE, b"\x01\x02")
    assert frame[0] == 102 and p.parse_message(frame) == p.DocMessage("runs", p.SYNC_UPDATE, b"\x01\x02")
    assert p.parse_message(p.encode_doc("rüns", p.SYNC_STEP1, b"")) == p.DocMessage("rüns", p.SYNC_STEP1, b"")
    for bad in (
        bytes([102, 0, 0, 0]),  # empty name
        bytes([102, 4]) + b"runs" + bytes([7, 0]),  # unknown sync step
        bytes([102, 2, 0xFF, 0xFE, 2, 0]),  # name not UTF-8
        bytes([102, 4]) + b"runs" + bytes([2, 5, 1]),  # truncated payload
        bytes([102, 65]) + b"x" * 65 + bytes([2, 0]),  # name too long
    ):
        with pytest.raises(p.ProtocolError):
            p.parse_message(bad)
    assert set(p.CAPS) == {"chunk", "app", "docs", "roles", "mesh", "relayed"}
