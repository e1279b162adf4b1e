"""peer/ pure parts: y-protocols framing, chunking, UTF-16 positions, the ICE policy."""

from __future__ import annotations

import json

import aioice.ice
import aioice.mdns
import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peer import chunking, ice, text
from peer import protocol as p

# ------------------------------------------------------------------ framing


@given(st.integers(min_value=0, max_value=(1 << 53) - 1))
def test_var_uint_round_trips(n: int) -> None:
    encoded = p.write_var_uint(n)
    r = p.Reader(encoded)
    assert r.var_uint() == n and r.remaining == 0
    # pycrdt's encoder agrees with ours
    assert encoded == pycrdt.write_var_uint(n)


def test_var_uint_beyond_53_bits_is_refused() -> None:
    with pytest.raises(p.ProtocolError):
        p.Reader(b"\xff" * 9 + b"\x01").var_uint()


@pytest.mark.parametrize(
    "frame",
    [
        b"",  # no type
        b"\x80",  # truncated varUint
        b"\x00",  # sync without step
        b"\x00\x07\x00",  # unknown sync step
        b"\x00\x01\x05ab",  # declared 5 bytes, 2 present
        b"\x01\x10",  # awareness with a length beyond the frame
        b"\x64\x01\x00",  # chunk without count/part
        b"\x64\x01\x03\x02\x00",  # chunk index 3 of 2
        b"\x64\x01\x00\x00\x00",  # chunk count 0
        b"\x65\x03abc",  # app, not JSON
        b"\x65\x02[]",  # app, JSON but not an object
        b"\x65\x02\xff\xfe",  # app, not UTF-8
    ],
)
def test_malformed_frames_raise_protocol_error(frame: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.parse_message(frame)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise_anything_but_protocol_error(data: bytes) -> None:
    try:
        p.parse_message(data)
    except p.ProtocolError:
        pass


def test_every_message_type_parses() -> None:
    doc = pycrdt.Doc()
    doc.get("source", type=pycrdt.Text).insert(0, "x")
    sv, update = doc.get_state(), doc.get_update()
    # byte-identical with pycrdt's own helpers for the types it covers
    assert p.encode_sync_step1(sv) == pycrdt.create_sync_message(doc)
    assert p.encode_sync_update(update) == pycrdt.create_update_message(update)
    assert p.parse_message(p.encode_sync_step1(sv)) == p.SyncMessage(p.SYNC_STEP1, sv)
    assert p.parse_message(p.encode_sync_step2(update)) == p.SyncMessage(p.SYNC_STEP2, update)
    assert p.parse_message(p.encode_sync_update(update)) == p.SyncMessage(p.SYNC_UPDATE, update)
    assert p.parse_message(p.encode_awareness(b"\x00")) == p.AwarenessMessage(b"\x00")
    assert p.parse_message(p.encode_query_awareness()) == p.QueryAwarenessMessage()
    assert p.parse_message(b"\x04\x03abc") == p.IgnoredMessage(4)
    assert p.parse_message(b"\x02\x00") == p.IgnoredMessage(2)
    assert p.parse_message(p.encode_chunk(7, 1, 3, b"xy")) == p.ChunkMessage(7, 1, 3, b"xy")
    assert p.parse_message(p.encode_app({"op": "run", "é": 1})) == p.AppMessage({"op": "run", "é": 1})
    assert p.parse_message(b"\x63") == p.UnknownMessage(99)


def test_awareness_update_with_non_ascii_state_is_readable_by_pycrdt() -> None:
    state = {"user": {"name": "José 😀", "color": "#f00"}, "cursor": None}
    encoded = p.encode_awareness_update({5: state}, {5: {"clock": 3}}, [5, 6])
    entries = p.decode_awareness_update(encoded)
    assert entries == [p.AwarenessEntry(5, 3, state), p.AwarenessEntry(6, 0, None)]
    aw = pycrdt.Awareness(pycrdt.Doc())
    aw.apply_awareness_update(encoded, "test")
    assert aw.states[5] == state


def test_awareness_decoder_bounds_entries_and_checks_json() -> None:
    many = p.encode_awareness_update({}, {}, list(range(100)))
    with pytest.raises(p.ProtocolError):
        p.decode_awareness_update(many, max_entries=50)
    bad = p.write_var_uint(1) + p.write_var_uint(1) + p.write_var_uint(1) + p.write_var_string("{nope")
    with pytest.raises(p.ProtocolError):
        p.decode_awareness_update(bad)
    not_object = p.write_var_uint(1) + p.write_var_uint(1) + p.write_var_uint(1) + p.write_var_string("[1]")
    with pytest.raises(p.ProtocolError):
        p.decode_awareness_update(not_object)


# ------------------------------------------------------------------ chunking


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=0, max_size=5000), st.integers(min_value=64, max_value=1500))
def test_split_and_reassemble_round_trip(frame: bytes, limit: int) -> None:
    parts = chunking.split_message(frame, limit, message_id=9)
    assert all(len(part) <= limit for part in parts)
    if len(frame) <= limit:
        assert parts == [frame]
        return
    r = chunking.Reassembler()
    results = [r.feed(p.parse_message(part)) for part in parts]  # type: ignore[arg-type]
    assert results[:-1] == [None] * (len(parts) - 1)
    assert results[-1] == frame
    assert r.pending_bytes == 0 and r.pending_messages == 0


def _chunks(frame: bytes, limit: int, mid: int) -> list[p.ChunkMessage]:
    return [p.parse_message(x) for x in chunking.split_message(frame, limit, mid)]  # type: ignore[misc]


def test_reassembly_refuses_out_of_order_and_forgets_the_message() -> None:
    r = chunking.Reassembler()
    parts = _chunks(b"a" * 1000, 200, 1)
    r.feed(parts[0])
    with pytest.raises(p.ProtocolError):
        r.feed(parts[2])
    assert r.pending_messages == 0 and r.pending_bytes == 0
    with pytest.raises(p.ProtocolError):  # a middle part of a message we never started
        r.feed(parts[1])


def test_reassembly_is_bounded_in_bytes_messages_and_time() -> None:
    r = chunking.Reassembler(max_message_bytes=1500, max_pending=2, timeout=5.0)
    with pytest.raises(p.ProtocolError):
        for part in _chunks(b"b" * 4000, 500, 1):
            r.feed(part, now=0.0)
    assert r.pending_bytes == 0
    r.feed(_chunks(b"c" * 1000, 200, 2)[0], now=0.0)
    r.feed(_chunks(b"d" * 1000, 200, 3)[0], now=0.0)
    with pytest.raises(p.ProtocolError):
        r.feed(_chunks(b"e" * 1000, 200, 4)[0], now=1.0)  # a third in flight
    assert r.expire(now=10.0) == 2  # both silent for longer than the timeout
    assert r.pending_messages == 0 and r.pending_bytes == 0
    with pytest.raises(p.ProtocolError):
        r.feed(p.ChunkMessage(5, 0, 1 << 20, b"x"))  # absurd part count


# ------------------------------------------------------------------ text positions

_text = st.text(alphabet=st.sampled_from(list("ab\n é€😀𝄞")), max_size=30)


@given(_text, st.data())
def test_utf16_positions_insert_where_yjs_would(s: str, data) -> None:
    doc = pycrdt.Doc()
    t = doc.get("source", type=pycrdt.Text)
    t.insert(0, s)
    cp = data.draw(st.integers(min_value=0, max_value=len(s)))
    pos16 = text.codepoint_to_utf16(s, cp)
    assert pos16 == len(s[:cp].encode("utf-16-le")) // 2
    assert text.utf16_to_codepoint(s, pos16) == cp
    assert text.utf8_to_utf16(s, text.utf16_to_utf8(s, pos16)) == pos16
    text.insert_utf16(t, pos16, "XY")
    assert str(t) == s[:cp] + "XY" + s[cp:]
    if cp < len(s):
        length16 = text.codepoint_to_utf16(s, len(s)) - pos16
        text.delete_utf16(t, pos16 + 2, length16)
        assert str(t) == s[:cp] + "XY"


def test_utf16_position_inside_a_surrogate_pair_is_refused() -> None:
    with pytest.raises(IndexError):
        text.utf16_to_codepoint("a😀b", 2)
    with pytest.raises(IndexError):
        text.utf16_to_codepoint("ab", 3)
    assert text.utf16_length("a😀b") == 4


# ------------------------------------------------------------------ ICE policy


@pytest.fixture
def ice_policy():
    ice.remove_ice_policy()
    yield ice
    ice.remove_ice_policy()


def test_ice_policy_gathers_only_configured_hosts_and_never_multicasts(ice_policy) -> None:
    original = aioice.ice.get_host_addresses
    assert ice.apply_ice_policy("") is False and aioice.ice.get_host_addresses is original
    assert ice.apply_ice_policy("127.0.0.1, 10.99.0.1") is True
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == ["127.0.0.1", "10.99.0.1"]
    assert aioice.ice.get_host_addresses(use_ipv4=False, use_ipv6=True) == []
    assert ice.address_allowed("127.0.0.5") and ice.address_allowed("10.99.0.77")
    assert not ice.address_allowed("10.99.1.1") and not ice.address_allowed("8.8.8.8")
    assert not ice.address_allowed("abc.local") and ice.address_allowed("::1")
    ice.remove_ice_policy()
    assert aioice.ice.get_host_addresses is original


async def test_ice_policy_mdns_resolves_nothing_and_foreign_candidates_are_dropped(ice_policy) -> None:
    ice.apply_ice_policy(["127.0.0.1"])
    proto = await aioice.mdns.create_mdns_protocol()
    assert await proto.resolve("0c2d5a1e-8b8f-4a9f-9d0c-cd7b8d1f7f6e.local") is None
    conn = aioice.ice.Connection(ice_controlling=True, components=1)
    try:
        for host in ("192.0.2.10", "127.0.0.1", "8.8.8.8"):
            await conn.add_remote_candidate(
                aioice.Candidate(
                    foundation="1", component=1, transport="udp", priority=1, host=host, port=9, type="host"
                )
            )
        # a .local candidate resolves to nothing, at once, without touching the network
        await conn.add_remote_candidate(
            aioice.Candidate(
                foundation="2", component=1, transport="udp", priority=1,
                host="0c2d5a1e-8b8f-4a9f-9d0c-cd7b8d1f7f6e.local", port=9, type="host",
            )
        )
        assert [c.host for c in conn.remote_candidates] == ["127.0.0.1"]
        await conn.gather_candidates()
        assert {c.host for c in conn.local_candidates} == {"127.0.0.1"}
    finally:
        await conn.close()


def test_ice_servers_are_explicit_and_filtered_by_the_policy(ice_policy) -> None:
    body = [
        {"urls": "stun:127.0.0.1:3478"},
        {"urls": ["turn:stun.l.google.com:19302"], "username": "u", "credential": "c"},
        {"urls": ["turn:10.99.0.1:3478?transport=udp"], "username": "u", "credential": "c"},
        {"nonsense": True},
    ]
    assert len(ice.ice_servers_from_json(body)) == 3  # no policy: all well-formed ones
    ice.apply_ice_policy("10.99.0.1")
    servers = ice.ice_servers_from_json({"iceServers": body})
    assert [s.urls for s in servers] == [["stun:127.0.0.1:3478"], ["turn:10.99.0.1:3478?transport=udp"]]
    assert ice.rtc_configuration(None).iceServers == []  # never None: aiortc would add Google's STUN
    assert json.dumps(ice.rtc_configuration(servers).iceServers[1].urls)
