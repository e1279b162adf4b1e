// Who forwards what in a room (docs/protocol.md, "Mesh"): the rules that let a room of a whole
// class carry one copy of every keystroke per member instead of one per link.
//
// Peers with the capability `mesh` tell their mesh links which peers they are linked with
// (message type 103 "links"). With that, a peer that applied an update from A forwards it to B
// only when B cannot have it otherwise: B is a stock peer (or has not said whom it is linked
// with), or B is not linked with A and this peer is the designated relay between A and B — the
// smallest peer id among their common neighbours that can relay (write the main document).
// Anything a wrong or stale view misses is repaired by the periodic state-vector exchange.
//
// Pure functions, no transport: the provider (provider.js) keeps the state they read, and Node
// tests them (web/test/topology.test.mjs).
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'

/** Data-channel message type 103: `varString JSON {"links": [peerId, ...]}`. */
export const MSG_LINKS = 103

/** A links message naming more peers than this is ignored (the signaling server caps ids at 128 chars). */
export const MAX_LINK_IDS = 1000
export const MAX_PEER_ID_LENGTH = 128
/** The longest links payload worth parsing (1000 ids of 128 characters, even JSON-escaped, fit). */
export const MAX_LINKS_BYTES = 1024 * 1024

/** Timings of the mesh rules, milliseconds. */
export const MESH_TIMING = Object.freeze({
  linksDebounce: 100, // a changed link set is told after this quiet period
  antiEntropy: 5000, // state vectors exchanged on every link this often (±jitter) after a change
  quietRounds: 5, // rounds skipped in a row while nothing changed; the next one is a catch-all
  jitter: 0.2,
  pendingTimeout: 10_000, // a link not open by then is closed and frees its slot
  refusedBackoff: 30_000, // no new offer to a peer that refused us for this long
  reannounce: 10_000, // announce again while members are unlinked and slots are free (±jitter)
  reannounceLimit: 30, // re-announces in a row without any change in presence or links
  linksPerSecond: 20, // type-103 messages taken from one link (more are dropped)
  linksBurst: 40
})

/** `base` ± `jitter` (a fraction), so that peers that joined together do not act in step. */
export function jittered (base, jitter = MESH_TIMING.jitter, random = Math.random) {
  return Math.round(base * (1 - jitter + 2 * jitter * random()))
}

/**
 * Order of peer ids: by Unicode code points, as Python compares `str` (JavaScript's `<` compares
 * UTF-16 code units, which differs for characters beyond U+FFFF). Peer ids are usually ASCII.
 */
export function compareIds (a, b) {
  if (a === b) return 0
  const n = Math.min(a.length, b.length)
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i)
    const y = b.charCodeAt(i)
    if (x === y) continue
    const xs = x >= 0xd800 && x <= 0xdfff
    const ys = y >= 0xd800 && y <= 0xdfff
    if (xs !== ys) return xs ? 1 : -1 // a surrogate (> U+FFFF) sorts after every BMP character
    return x < y ? -1 : 1
  }
  return a.length < b.length ? -1 : 1
}

/** The type-103 frame for this peer's open links. */
export function encodeLinks (peerIds) {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, MSG_LINKS)
  encoding.writeVarString(enc, JSON.stringify({ links: Array.from(peerIds) }))
  return encoding.toUint8Array(enc)
}

/**
 * The body of a type-103 message (the decoder is positioned after the type) as
 * `{links: Set<string>}`, or `{drop: reason}` for anything malformed or oversized. Never throws:
 * a bad links message is dropped and the previous view of that peer stays.
 */
export function decodeLinks (decoder) {
  let text
  try {
    const len = decoding.peekVarUint(decoder)
    if (len > MAX_LINKS_BYTES) return { drop: 'links message too large' }
    text = decoding.readVarString(decoder)
  } catch (err) {
    return { drop: 'truncated links message' }
  }
  return parseLinks(text)
}

/** `parseLinks('{"links": [...]}')`: the validation of decodeLinks on the JSON text. */
export function parseLinks (text) {
  if (typeof text !== 'string' || text.length > MAX_LINKS_BYTES) return { drop: 'links message too large' }
  let value
  try {
    value = JSON.parse(text)
  } catch (err) {
    return { drop: 'links message is not JSON' }
  }
  if (!value || typeof value !== 'object' || Array.isArray(value) || !Array.isArray(value.links)) {
    return { drop: 'links message without a links list' }
  }
  if (value.links.length > MAX_LINK_IDS) return { drop: `links message with ${value.links.length} ids (at most ${MAX_LINK_IDS})` }
  const links = new Set()
  for (const id of value.links) {
    if (typeof id !== 'string' || !id || id.length > MAX_PEER_ID_LENGTH) return { drop: 'links message with an invalid peer id' }
    links.add(id)
  }
  return { links }
}

/**
 * Should this peer (`self`), having applied an update that arrived from `from`, send it on to
 * `to`?
 *
 * - `toLinks` null (`to` has no `mesh`, or has not said whom it is linked with yet): yes, as a
 *   stock peer would.
 * - `to` is linked with `from`: no, it has the update from `from` directly.
 * - otherwise yes iff `self` comes first among the common neighbours of `from` and `to` that can
 *   relay (`mayRelay(id)`: the peer may write the main document as `self` sees it; `self` always
 *   counts, it only gets here when it may) — members before service peers (`isService(id)`: the
 *   persistence peer is linked to everyone and forwards only what no member can), then the
 *   smallest id (compareIds). `fromLinks` null (`from` has no `mesh`): the common neighbours are
 *   unknown, so `self` forwards.
 *
 * @param {{self: string, from: string, fromLinks: Set<string>|null, to: string,
 *   toLinks: Set<string>|null, mayRelay?: (peerId: string) => boolean,
 *   isService?: (peerId: string) => boolean}} view
 */
export function shouldForward ({ self, from, fromLinks, to, toLinks, mayRelay = () => true, isService = () => false }) {
  if (!toLinks) return true
  if (toLinks.has(from)) return false
  if (!fromLinks) return true
  const selfService = isService(self)
  const [small, large] = fromLinks.size <= toLinks.size ? [fromLinks, toLinks] : [toLinks, fromLinks]
  for (const id of small) {
    if (id === self || id === from || id === to || !large.has(id)) continue
    const service = isService(id)
    // members come before service peers, then the smaller peer id
    const first = service !== selfService ? !service : compareIds(id, self) < 0
    if (first && mayRelay(id)) return false
  }
  return true
}

/**
 * Do we and a remote peer stay unlinked because both of us are viewers (docs/protocol.md "Room
 * topology", viewers)? Only between mesh peers: neither may write the main document, so neither
 * applies nor forwards what the other sends, and awareness is never relayed — the link would only
 * carry two cursors to each other, at the price of a slot on both sides. Viewers still link to
 * editors, owners and services; a stock peer (no `mesh`) is linked as before.
 *
 * @param {{selfRole: string|null, remoteRole: string|null|undefined, remoteCaps: string[]|null|undefined}} view
 *   roles as each side's live role is known here (presence, else the sender stamp)
 */
export function viewersApart ({ selfRole, remoteRole, remoteCaps }) {
  return selfRole === 'viewer' && remoteRole === 'viewer' && Array.isArray(remoteCaps) && remoteCaps.includes('mesh')
}
