// Data-channel message framing (docs/protocol.md, "Data channels"): y-protocols types 0/1/3/4
// plus CodeSync's extensions 100 (chunk), 101 (app message, JSON) and 102 (named-document sync);
// 103 (links) is in topology.js.
// Pure functions and a bounded reassembler; no transport here.
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'

export const MSG_SYNC = 0
export const MSG_AWARENESS = 1
export const MSG_QUERY_AWARENESS = 3
export const MSG_BC_PEER_ID = 4
export const MSG_CHUNK = 100
export const MSG_APP = 101
export const MSG_DOC = 102
export const MSG_RELAYED = 104 // an Update a peer forwards (not its own): never forwarded again to `relayed` peers

export const SYNC_STEP1 = 0
export const SYNC_STEP2 = 1
export const SYNC_UPDATE = 2

/** A random RFC 4122 v4 id: peer ids and run ids (crypto.randomUUID where the page has it). */
export function uuid () {
  if (crypto.randomUUID) return crypto.randomUUID()
  const b = crypto.getRandomValues(new Uint8Array(16))
  b[6] = (b[6] & 0x0f) | 0x40
  b[8] = (b[8] & 0x3f) | 0x80
  const x = Array.from(b, v => v.toString(16).padStart(2, '0')).join('')
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`
}

/** An empty Yjs update (no structs, empty delete set). */
export const EMPTY_UPDATE = new Uint8Array([0, 0])

/**
 * What CodeSync peers put in every announce/signal payload: `roles` says this peer enforces the
 * trust model on what it receives (the server relays a viewer's signalling only to such peers);
 * `mesh` that it tells its links (type 103) and forwards by the mesh rules (topology.js);
 * `relayed` that it takes forwarded updates as type 104 and never forwards those again to a
 * `relayed` peer (docs/protocol.md "Room topology").
 */
export const CAPS = ['chunk', 'app', 'docs', 'roles', 'mesh', 'relayed']

/** Split `message` into type-100 frames of at most `partSize` payload bytes each. */
export function encodeChunks (message, messageId, partSize) {
  const count = Math.ceil(message.length / partSize)
  const frames = []
  for (let index = 0; index < count; index++) {
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, MSG_CHUNK)
    encoding.writeVarUint(enc, messageId)
    encoding.writeVarUint(enc, index)
    encoding.writeVarUint(enc, count)
    encoding.writeVarUint8Array(enc, message.subarray(index * partSize, (index + 1) * partSize))
    frames.push(encoding.toUint8Array(enc))
  }
  return frames
}

export function encodeApp (obj) {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, MSG_APP)
  encoding.writeVarString(enc, JSON.stringify(obj))
  return encoding.toUint8Array(enc)
}

/** Decode the body of an app message (the decoder is positioned after the type). */
export function decodeApp (decoder) {
  const value = JSON.parse(decoding.readVarString(decoder))
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new Error('app message is not an object')
  return value
}

/** A type-0 sync message: `syncType` (SYNC_*) and its payload (state vector or update). */
export function encodeSync (syncType, payload) {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, MSG_SYNC)
  encoding.writeVarUint(enc, syncType)
  encoding.writeVarUint8Array(enc, payload)
  return encoding.toUint8Array(enc)
}

/** A type-104 message: an Update we forward (to peers with `relayed`). */
export function encodeRelayed (update) {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, MSG_RELAYED)
  encoding.writeVarUint8Array(enc, update)
  return encoding.toUint8Array(enc)
}

/** A type-102 named-document sync message: `varString name, varUint syncType, varUint8Array payload`. */
export function encodeDocSync (name, syncType, payload) {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, MSG_DOC)
  encoding.writeVarString(enc, name)
  encoding.writeVarUint(enc, syncType)
  encoding.writeVarUint8Array(enc, payload)
  return encoding.toUint8Array(enc)
}

/** Decode the body of a type-102 message (the decoder is positioned after the type). */
export function decodeDocSync (decoder) {
  const name = decoding.readVarString(decoder)
  const syncType = decoding.readVarUint(decoder)
  const payload = decoding.readVarUint8Array(decoder)
  if (syncType > SYNC_UPDATE) throw new Error('unknown sync type ' + syncType)
  return { name, syncType, payload }
}

/**
 * The entries of a y-protocols awareness update, `[{clientID, clock, state}]` (state parsed, `null`
 * when the client left). Throws on malformed input, reading at most `maxEntries` entries.
 */
export function decodeAwarenessEntries (update, maxEntries = Infinity) {
  const d = decoding.createDecoder(update)
  const n = decoding.readVarUint(d)
  if (n > maxEntries) throw new Error(`awareness update with ${n} entries (at most ${maxEntries})`)
  const entries = []
  for (let i = 0; i < n; i++) {
    const clientID = decoding.readVarUint(d)
    const clock = decoding.readVarUint(d)
    const json = decoding.readVarString(d)
    entries.push({ clientID, clock, state: JSON.parse(json), size: json.length })
  }
  return entries
}

/** The inverse of decodeAwarenessEntries (what `awarenessProtocol.applyAwarenessUpdate` reads). */
export function encodeAwarenessEntries (entries) {
  const enc = encoding.createEncoder()
  encoding.writeVarUint(enc, entries.length)
  for (const { clientID, clock, state } of entries) {
    encoding.writeVarUint(enc, clientID)
    encoding.writeVarUint(enc, clock)
    encoding.writeVarString(enc, JSON.stringify(state))
  }
  return encoding.toUint8Array(enc)
}

/**
 * Reassembles chunked messages from one peer. Parts must arrive in order (data channels are
 * ordered); memory and time are bounded: a message may not exceed `maxBytes`, at most
 * `maxPending` messages are in flight, and a message unfinished after `timeoutMs` is dropped.
 */
export class Reassembler {
  constructor ({ maxBytes = 64 * 1024 * 1024, maxPending = 8, timeoutMs = 30_000 } = {}) {
    this.maxBytes = maxBytes
    this.maxPending = maxPending
    this.timeoutMs = timeoutMs
    this.pending = new Map() // id -> {parts, size, count, started}
  }

  /** Feed one chunk frame body; returns the whole message once complete, else null. Throws on protocol errors. */
  feed (decoder) {
    const id = decoding.readVarUint(decoder)
    const index = decoding.readVarUint(decoder)
    const count = decoding.readVarUint(decoder)
    const part = decoding.readVarUint8Array(decoder)
    const now = Date.now()
    for (const [key, entry] of this.pending) {
      if (now - entry.started > this.timeoutMs) this.pending.delete(key)
    }
    if (count < 1 || index >= count) throw new Error('bad chunk header')
    let entry = this.pending.get(id)
    if (!entry) {
      if (index !== 0) throw new Error('chunk out of order')
      if (this.pending.size >= this.maxPending) throw new Error('too many chunked messages in flight')
      entry = { parts: [], size: 0, count, started: now }
      this.pending.set(id, entry)
    }
    if (entry.count !== count || entry.parts.length !== index) {
      this.pending.delete(id)
      throw new Error('chunk out of order')
    }
    entry.size += part.length
    if (entry.size > this.maxBytes) {
      this.pending.delete(id)
      throw new Error('chunked message too large')
    }
    entry.parts.push(part)
    if (entry.parts.length < count) return null
    this.pending.delete(id)
    const out = new Uint8Array(entry.size)
    let offset = 0
    for (const p of entry.parts) { out.set(p, offset); offset += p.length }
    return out
  }
}
