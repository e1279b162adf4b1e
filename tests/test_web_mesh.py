"""Big rooms in the browser (docs/protocol.md "Mesh", web/src/topology.js), with real peers: the
real web client in four headless Chromium contexts, real `codesync signaling` and later
`codesync persist`, a raw /signal client, inside a private network namespace
(tests/browser/mesh_web.py). The forward rule itself is unit-tested in
tests/test_web_mesh_units.py."""

from __future__ import annotations

import pytest

from tests.helpers.netns import browser_stack_available, run_driver, step
from tests.helpers.components import require

pytestmark = pytest.mark.timeout(480)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    ok, why = browser_stack_available()
    require("browser testbed", ok, why)
    work = tmp_path_factory.mktemp("mesh-web")
    return run_driver("mesh_web.py", {"workdir": str(work)}, work / "driver.log", timeout=420)


def test_full_mesh_one_copy_per_keystroke(mesh):
    """Four browsers linked pairwise: Alice types; Bob, Carol and Dave each receive every update
    message exactly once, from Alice's link; nobody forwards; the documents agree."""
    res = step(mesh, "full_mesh_one_copy_per_keystroke")
    assert res["alice_update_messages"] >= res["keystrokes"] - 1
    assert set(res["received"]) == {"bob", "carol", "dave"}


def test_dropped_update_is_repaired_by_anti_entropy(mesh):
    """One of Alice's update messages never reaches Dave; nobody forwards it in a full mesh, and
    the state-vector exchange repairs it within one anti-entropy period."""
    res = step(mesh, "dropped_update_repaired_by_anti_entropy")
    assert res["dave"]["repairs"] >= 1 and res["repaired_after_ms"] <= 8000


def test_full_browser_refuses_a_mesh_offer(mesh):
    """A browser at its link limit answers a mesh peer's offer with `refuse`; the offerer drops the
    attempt at once and does not offer to it again within the back-off."""
    res = step(mesh, "full_browser_refuses_explicitly")
    assert res["alice_refused"] >= 1


def test_pending_link_times_out(mesh):
    """An offer to a peer that never answers holds the slot for 10 s, not forever."""
    res = step(mesh, "pending_link_times_out")
    assert 8 <= res["held_s"] <= 14


def test_room_beyond_the_link_limit_converges(mesh):
    """Four browsers with two links each (the persistence peer's links do not count): the limit
    holds, some pairs stay unlinked, and every edit reaches everyone."""
    step(mesh, "small_limit_setup")
    res = step(mesh, "small_limit_room_converges")
    assert res["unlinked_pairs"] >= 1


def test_viewer_junk_links_messages_are_dropped(mesh):
    """A viewer sends malformed, oversized and a flood of well-formed links messages to everyone:
    they are dropped and counted, no link closes, no page error, and the viewer still receives
    every edit exactly once."""
    res = step(mesh, "viewer_junk_links_dropped")
    assert all(v >= 68 for v in res["dropped"].values()), res


def test_two_viewers_do_not_link(mesh):
    """Two viewers in a room with an editor: no link between them, both get the editor's edits,
    and awareness is not relayed (the other viewer's cursor does not reach them)."""
    res = step(mesh, "two_viewers_apart")
    assert res["bob_links"] and res["carol_links"]


def test_promotion_links_viewers_and_demotion_unlinks(mesh):
    """Promoting one viewer links the two (the re-announce); demoting him again closes the link."""
    res = step(mesh, "viewers_promoted_and_demoted")
    assert res["linked_after_promotion_s"] < 20
