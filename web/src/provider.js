// CodeSync's WebRTC provider for Yjs: speaks y-webrtc's signaling and data-channel protocol
// (so stock y-webrtc clients interoperate) plus CodeSync's additions: the access token in the
// signaling URL (a fresh one on every reconnect), server sender stamps and presence frames,
// caps announcement, chunking (type 100), app messages (type 101) and named documents (type 102)
// towards CodeSync peers.
//
// It enforces the trust model (docs/protocol.md) on what it receives, with the rules of
// rights.js: each link belongs to the principal the server stamped on the remote peer id's
// frames; main-document updates are applied (and then forwarded) only from writer links, named
// documents only from the services that own them, awareness only as the binding rules allow;
// presence closes the links of users who left the room and demotes links live.
//
// Big rooms (topology.js, docs/protocol.md "Mesh"): with peers that share the capability `mesh`
// it exchanges the list of open links (type 103) and forwards an applied update only where the
// mesh rules say nobody else delivers it; every few seconds it exchanges state vectors with its
// writer links (anti-entropy) so that anything missed is repaired; links that do not open in time
// are closed; at maxConns it refuses mesh peers' offers explicitly; while members are unlinked
// and it has free slots, it announces again now and then.
//
// Events: 'status' ({state}), 'peers' ({connected: [peerId]}), 'presence' (peers list),
// 'role' (the local user's live role, null once removed), 'app' (msg, peerId, sender),
// 'error' ({code, message}), 'synced'.
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { ObservableV2 } from 'lib0/observable'
import * as awarenessProtocol from 'y-protocols/awareness'
import { PeerConn } from './peerconn.js'
import {
  CAPS, EMPTY_UPDATE, MSG_APP, MSG_AWARENESS, MSG_BC_PEER_ID, MSG_CHUNK, MSG_DOC, MSG_QUERY_AWARENESS, MSG_RELAYED,
  MSG_SYNC, SYNC_STEP1, SYNC_STEP2, SYNC_UPDATE, decodeApp, decodeAwarenessEntries, decodeDocSync, encodeApp,
  encodeAwarenessEntries, encodeDocSync, encodeRelayed, encodeSync, uuid
} from './wire.js'
import {
  AWARENESS_LIMITS, indexPresence, mayReceiveApp, mayWriteLocal, mayWriteMain, mayWriteNamed,
  presenceChanges, principalOf, samePrincipal, sanitizeAwareness, WRITER_ROLES
} from './rights.js'
import { MESH_TIMING, MSG_LINKS, decodeLinks, encodeLinks, jittered, shouldForward, viewersApart } from './topology.js'

const COALESCE_MS = 3
const PING_MS = 15_000
const PONG_TIMEOUT_MS = 8_000
const LOG_EVERY_MS = 5_000 // dropped input is logged at most this often per kind
const MAX_DEFERRED = 64 // announces of users absent from presence, kept until listed again
const MAX_FRESH_IDS = 2 // fresh peer ids taken on one socket before reconnecting instead
const MAX_KNOWN_SERVICES = 64 // peer ids of service peers seen in frames (relay candidates)
const MAX_REFUSALS = 1024 // peers that refused us, remembered for MESH_TIMING.refusedBackoff

function isEmptyUpdate (u) {
  return u.length === 2 && u[0] === 0 && u[1] === 0
}

export class CodeSyncProvider extends ObservableV2 {
  /**
   * @param {Y.Doc} doc the main room document
   * @param {awarenessProtocol.Awareness} awareness
   * @param {{roomId: string, getToken: (opts: {force: boolean}) => Promise<string>, signalingUrl?: string,
   *   iceServers?: any[], maxConns?: number, role?: string|null, userId?: string|null,
   *   namedDocs?: Record<string, Y.Doc>, timing?: Partial<typeof MESH_TIMING>}} opts `role` / `userId`:
   *   the local user as the REST API knows them when the room opens (presence and our own stamps
   *   update the role live); `namedDocs`: the room's named documents (type 102), which this browser
   *   only receives; `maxConns`: links to people (service links do not count); `timing`: the mesh
   *   rules' periods (topology.js MESH_TIMING).
   */
  constructor (doc, awareness, { roomId, getToken, signalingUrl, iceServers = [], maxConns = 30, role = null, userId = null, namedDocs = {}, timing = {} }) {
    super()
    this.doc = doc
    this.awareness = awareness
    this.roomId = roomId
    this.getToken = getToken
    this.signalingUrl = signalingUrl || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/signal`
    this.iceServers = iceServers
    this.maxConns = maxConns
    this.peerId = uuid()
    this.role = role
    this.userId = userId === null || userId === undefined ? null : String(userId)
    this.named = new Map(Object.entries(namedDocs))
    this.conns = new Map()
    this.presence = []
    this.presenceIndex = new Map() // user id -> {role, name, peerIds}
    this.gone = new Set() // users who left presence: their links are closed, their frames ignored
    this.deferred = new Map() // peer id -> announce of a gone user, replayed once listed again
    this.awarenessOwner = new Map() // awareness client id -> the link that first announced it
    this.timing = { ...MESH_TIMING, ...timing }
    this.stats = {
      droppedUpdates: 0, droppedDocUpdates: 0, droppedAwareness: 0, refusedApp: 0,
      foreignSignals: 0, ignoredSignals: 0, closedLinks: 0, peerIdChanges: 0,
      // mesh (docs/protocol.md "Mesh"): copies received, forwarded and not forwarded, repairs
      updatesReceived: 0, relayedReceived: 0, duplicateUpdates: 0, localUpdates: 0, updatesForwarded: 0, forwardsSkipped: 0,
      linksReceived: 0, linksSent: 0, droppedLinks: 0, antiEntropyRounds: 0, antiEntropySkipped: 0, repairs: 0,
      pendingTimeouts: 0, refusedOffers: 0, refusedBy: 0, reannounces: 0
    }
    this.peerRoles = new Map() // peer id -> role, from presence (who can relay)
    this.serviceIds = new Map() // peer id -> service, from stamped frames (who can relay)
    this.refusedUntil = new Map() // peer id -> time before which we do not offer to it again
    this.peerCaps = new Map() // peer id -> caps of its latest frame (is it a mesh peer?), bounded
    this.toldViewers = new Set() // peer ids whose announce we answered with refuse/viewers, bounded
    this.reannounces = 0 // re-announces since presence or our links last changed
    this.docVersion = 0 // bumped on every change of the main document (answer cache)
    this.changedSinceRound = new Set(['']) // documents changed since our last anti-entropy round ('' main, 'doc:'+name)
    this.quietRounds = 0
    this.answerCache = null
    this.linksTimer = null
    this.antiEntropyTimer = null
    this.reannounceTimer = null
    this.lastLog = {}
    this.state = 'connecting'
    this.ws = null
    this.destroyed = false
    this.stopped = false
    this.backoff = 500
    this.forceRefresh = false
    this.freshIds = 0
    this.pending = new Map() // origin conn (or null) -> [update]
    this.flushTimer = null
    this.cooling = false
    this.coolPending = false
    this.microFlush = false
    this.applyingRelayed = false // the update being applied came as type 104 (forwarded by its link)

    this._onUpdate = (update, origin) => {
      this.docVersion++
      this.changedSinceRound.add('')
      // Only writers send: a read-only client's changes would be dropped by every receiver.
      if (!mayWriteLocal(this.role)) return
      // pending key: null (our own), the link it came from, or that link's `relayedKey` (it came as type 104)
      const key = origin instanceof PeerConn ? (this.applyingRelayed ? origin.relayedKey : origin) : null
      if (!this.pending.has(key)) this.pending.set(key, [])
      this.pending.get(key).push(update)
      // Leading edge: the first update goes out at the end of this task; updates arriving in the
      // next few milliseconds are merged into one message (each data-channel message costs an
      // SCTP packet + DTLS record on the receiving peer, DESIGN.md "aiortc carries few small messages").
      if (this.cooling) {
        this.coolPending = true
      } else if (!this.microFlush) {
        this.microFlush = true
        queueMicrotask(() => {
          this.microFlush = false
          this.flush()
          this.cooling = true
          this.flushTimer = setTimeout(() => {
            this.cooling = false
            this.flushTimer = null
            if (this.coolPending) { this.coolPending = false; this.flush() }
          }, COALESCE_MS)
        })
      }
    }
    this._onAwareness = ({ added, updated, removed }, origin) => {
      if (origin instanceof PeerConn) return
      // States removed locally (e.g. timed out) free their client id for whoever announces it next.
      for (const id of removed) this.unbindAwareness(id)
      // Awareness is never relayed: only our own client's state goes out.
      const own = this.doc.clientID
      if (added.includes(own) || updated.includes(own) || removed.includes(own)) {
        const enc = encoding.createEncoder()
        encoding.writeVarUint(enc, MSG_AWARENESS)
        encoding.writeVarUint8Array(enc, awarenessProtocol.encodeAwarenessUpdate(this.awareness, [own]))
        this.broadcast(encoding.toUint8Array(enc))
      }
    }
    this._onUnload = () => awarenessProtocol.removeAwarenessStates(this.awareness, [doc.clientID], 'window unload')
    doc.on('update', this._onUpdate)
    awareness.on('update', this._onAwareness)
    window.addEventListener('beforeunload', this._onUnload)
    this.scheduleAntiEntropy()
    this.scheduleReannounce()
    this.connectSignaling()
  }

  // ------------------------------------------------------------------ signaling
  setState (state, detail = {}) {
    this.state = state
    this.emit('status', [{ state, ...detail }])
  }

  async connectSignaling () {
    if (this.destroyed || this.stopped) return
    this.setState('connecting')
    let token
    try {
      token = await this.getToken({ force: this.forceRefresh })
      this.forceRefresh = false
    } catch (err) {
      this.setState('disconnected', { reason: err.message })
      if (err.code === 'session_expired' || err.code === 'not_signed_in') {
        this.emit('error', [{ code: 'session_expired', message: err.message }])
        return
      }
      return this.scheduleReconnect()
    }
    if (this.destroyed || this.stopped) return
    let ws
    try {
      ws = new WebSocket(`${this.signalingUrl}?token=${encodeURIComponent(token)}`)
    } catch (err) {
      return this.scheduleReconnect()
    }
    this.ws = ws
    let opened = false
    let lastPong = Date.now()
    let pinger = null
    ws.onopen = () => {
      opened = true
      this.backoff = 500
      this.freshIds = 0
      this.setState('connected')
      this.sendWs({ type: 'subscribe', topics: [this.roomId] })
      this.announce()
      pinger = setInterval(() => {
        if (Date.now() - lastPong > PING_MS + PONG_TIMEOUT_MS) { try { ws.close() } catch (e) {} return }
        this.sendWs({ type: 'ping' })
      }, PING_MS)
    }
    ws.onmessage = (ev) => {
      lastPong = Date.now()
      let m
      try { m = JSON.parse(ev.data) } catch (e) { return }
      this.handleSignal(m)
    }
    ws.onclose = (ev) => {
      clearInterval(pinger)
      if (this.ws === ws) this.ws = null
      if (this.destroyed || this.stopped) return
      // Close codes of /signal (signaling/ws/protocol.py): 4001 token expired -> reconnect with a
      // fresh token at once; 4003 unauthorized -> one retry with a refreshed token, then give up;
      // 4029 too many connections -> slow down. A socket refused before opening also gets a new token.
      if (ev.code === 4001) {
        this.forceRefresh = true
        this.backoff = 0
      } else if (ev.code === 4003) {
        this.forceRefresh = true
        this.unauthorized = (this.unauthorized || 0) + 1
        if (this.unauthorized > 2) {
          this.setState('unauthorized', { code: ev.code, reason: ev.reason })
          this.emit('error', [{ code: 'unauthorized', message: 'The signaling server does not accept your session. Please sign in again.' }])
          return
        }
      } else if (ev.code === 4029) {
        this.backoff = Math.max(this.backoff, 5000)
        this.emit('error', [{ code: 'too_many_connections', message: 'Too many open CodeSync tabs or devices: close some and this one reconnects.' }])
      } else if (!opened) {
        this.forceRefresh = true
      }
      if (opened && ev.code !== 4003) this.unauthorized = 0
      this.setState('disconnected', { code: ev.code, reason: ev.reason })
      this.scheduleReconnect()
    }
    ws.onerror = () => {}
  }

  scheduleReconnect () {
    if (this.destroyed || this.stopped || this.reconnectTimer) return
    const delay = this.backoff
    this.backoff = Math.min(Math.max(this.backoff * 2, 500), 8000)
    this.reconnectTimer = setTimeout(() => { this.reconnectTimer = null; this.connectSignaling() }, delay)
  }

  /** Reconnect now (e.g. after a token refresh or when the page regains network). */
  reconnect () {
    if (this.ws) { try { this.ws.close() } catch (e) {} } else if (!this.reconnectTimer) this.connectSignaling()
  }

  sendWs (obj) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(obj))
  }

  publish (data) {
    this.sendWs({ type: 'publish', topic: this.roomId, data: { ...data, caps: CAPS } })
  }

  announce () {
    if (!this.stopped && this.slotsUsed() < this.maxConns) this.publish({ type: 'announce', from: this.peerId })
  }

  /** Links (open or pending) that count against maxConns: every link but those to service peers. */
  slotsUsed () {
    let n = 0
    this.conns.forEach(c => { if (!c.service) n++ })
    return n
  }

  handleSignal (m) {
    if (!m || typeof m !== 'object' || this.stopped) return
    if (m.type === 'publish' && m.topic === this.roomId) {
      const data = m.data
      if (!data || typeof data !== 'object' || typeof data.from !== 'string') return // encrypted rooms are not ours
      if (data.from === this.peerId) return this.onOwnStamp(m.sender)
      if (data.to !== undefined && data.to !== this.peerId) return
      this.onPeerFrame(data, m.sender)
    } else if (m.type === 'presence' && m.topic === this.roomId) {
      this.onPresence(Array.isArray(m.peers) ? m.peers : [])
    } else if (m.type === 'error') {
      if (m.topic === this.roomId && m.code === 'forbidden') {
        this.stop()
      } else if (m.topic === this.roomId && m.code === 'peer_id_taken') {
        this.freshPeerId()
        return
      }
      this.emit('error', [{ code: m.code, message: m.message || m.code }])
    }
  }

  /** An announce or signal from another peer id, with the server's stamp. */
  onPeerFrame (data, stamp) {
    const principal = principalOf(stamp)
    const caps = Array.isArray(data.caps) ? data.caps.filter(c => typeof c === 'string') : []
    let conn = this.conns.get(data.from)
    if (conn && !samePrincipal(conn.principal, principal)) {
      // The id changed hands (a released id claimed by someone else): that principal's frames
      // never touch, let alone replace, the link of the one it belonged to.
      this.count('foreignSignals', `frame from ${describe(principal)} under the peer id of ${describe(conn.principal)}`)
      return
    }
    if (principal && principal.userId && this.gone.has(principal.userId)) {
      if (data.type === 'announce' && this.deferred.size < MAX_DEFERRED) this.deferred.set(data.from, { stamp, caps })
      this.count('ignoredSignals', `${describe(principal)} is not in the room's presence`)
      return
    }
    if (conn) conn.restamp(stamp, caps)
    this.rememberCaps(data.from, caps)
    const service = !!(principal && principal.service)
    if (service) this.rememberService(data.from, principal.service)
    const viewers = !service && this.viewerPair(data.from, principal, caps)
    if (data.type === 'announce') {
      if (viewers) {
        // It may have joined after our announce and know neither our caps nor our role (it would
        // count us as missing): one directed refuse tells it both. Once per peer id.
        if (!conn && !this.toldViewers.has(data.from)) {
          if (this.toldViewers.size >= MAX_REFUSALS) this.toldViewers.clear()
          this.toldViewers.add(data.from)
          this.refuse(data.from, 'viewers')
        }
        return
      }
      if (!conn && (service || this.slotsUsed() < this.maxConns) && !this.refusedRecently(data.from)) {
        this.conns.set(data.from, new PeerConn(this, data.from, true, stamp, caps))
      }
    } else if (data.type === 'signal' && data.signal && typeof data.signal === 'object') {
      if (data.signal.type === 'refuse') return this.onRefused(conn, data.from, data.signal.reason)
      if (data.signal.type === 'offer' && viewers) {
        // Both viewers: no link (docs/protocol.md "Room topology"); an offer means the offerer's
        // view of the roles lags or it ignores the rule.
        if (conn) { this.conns.delete(data.from); conn.destroy() }
        this.refuse(data.from, 'viewers')
        return
      }
      if (data.signal.type === 'offer' && !conn && !service && caps.includes('mesh') && this.slotsUsed() >= this.maxConns) {
        // Full: say so (a stock peer would never understand; it gets the link as before), so the
        // offerer frees its slot at once and looks elsewhere instead of waiting for a timeout.
        this.refuse(data.from, 'full')
        return
      }
      if (data.signal.type === 'offer') {
        if (conn && conn.glareToken !== undefined && conn.glareToken > data.token && !conn.connected) return
        if (conn) { this.conns.delete(data.from); conn.destroy() }
        conn = new PeerConn(this, data.from, false, stamp, caps)
        this.conns.set(data.from, conn)
      } else if (data.signal.type === 'answer' && conn) {
        conn.glareToken = undefined
      }
      if (conn) conn.signal(data.signal)
    }
  }

  /** Refuse a mesh peer's offer (`full`, or `viewers`: we are both viewers), to it only. */
  refuse (peerId, reason) {
    this.stats.refusedOffers++
    this.publish({ type: 'signal', from: this.peerId, to: peerId, signal: { type: 'refuse', reason } })
  }

  /**
   * A peer refused us. `full`: close the attempt now and offer to it again only after a while.
   * `viewers` (we are both viewers): close the attempt, no back-off — we offer only to peers we
   * do not see as fellow viewers, and presence settles that (a promotion must link at once).
   */
  onRefused (conn, peerId, reason) {
    if (reason === 'viewers') {
      this.stats.refusedBy++
      if (conn && !conn.connected && conn.initiator) { conn.refused = true; conn.destroy() }
      return
    }
    if (!conn || conn.connected || !conn.initiator) return
    this.stats.refusedBy++
    const now = Date.now()
    for (const [id, until] of this.refusedUntil) if (until <= now || this.refusedUntil.size >= MAX_REFUSALS) this.refusedUntil.delete(id)
    this.refusedUntil.set(peerId, now + this.timing.refusedBackoff)
    conn.refused = true
    conn.destroy()
  }

  refusedRecently (peerId) {
    const until = this.refusedUntil.get(peerId)
    if (until === undefined) return false
    if (until > Date.now()) return true
    this.refusedUntil.delete(peerId)
    return false
  }

  rememberCaps (peerId, caps) {
    if (this.peerCaps.has(peerId)) this.peerCaps.delete(peerId)
    else if (this.peerCaps.size >= MAX_KNOWN_SERVICES) this.peerCaps.delete(this.peerCaps.keys().next().value)
    this.peerCaps.set(peerId, caps)
  }

  /** The live role of a person's peer id as far as we know: presence (by peer id, then by user), else the stamp. */
  roleOf (peerId, principal = null) {
    const role = this.peerRoles.get(peerId)
    if (role !== undefined) return role
    const conn = this.conns.get(peerId)
    const p = principal || (conn && conn.principal)
    if (!p || p.service) return null
    const listed = p.userId && this.presenceIndex.get(p.userId)
    return listed ? listed.role : p.role
  }

  /** We and `peerId` are both viewers and it is a mesh peer: no link between us (topology.js viewersApart). */
  viewerPair (peerId, principal = null, caps = null) {
    const conn = this.conns.get(peerId)
    return viewersApart({
      selfRole: this.role,
      remoteRole: this.roleOf(peerId, principal),
      remoteCaps: caps || (conn && conn.caps) || this.peerCaps.get(peerId)
    })
  }

  rememberService (peerId, service) {
    if (this.serviceIds.get(peerId) === service) return
    this.serviceIds.delete(peerId)
    if (this.serviceIds.size >= MAX_KNOWN_SERVICES) this.serviceIds.delete(this.serviceIds.keys().next().value)
    this.serviceIds.set(peerId, service)
  }

  /** Our own publish came back stamped: the role the server gives us, unless presence says more. */
  onOwnStamp (stamp) {
    const me = principalOf(stamp)
    if (!me || me.service) return
    if (this.userId === null) this.userId = me.userId
    if (me.userId === this.userId && !this.presenceIndex.has(me.userId)) this.setRole(me.role)
  }

  onPresence (peers) {
    const viewerPairs = Array.from(this.peerRoles.keys()).filter(id => id !== this.peerId && this.viewerPair(id))
    const next = indexPresence(peers)
    const linked = []
    this.conns.forEach(c => { if (c.principal && c.principal.userId) linked.push(c.principal.userId) })
    const { gone, returned } = presenceChanges(this.presenceIndex, next, this.gone, linked)
    this.presenceIndex = next
    this.gone = gone
    this.presence = peers
    this.peerRoles = new Map()
    next.forEach(entry => entry.peerIds.forEach(id => this.peerRoles.set(id, entry.role)))
    this.reannounces = 0
    // A user gone from presence (removed, room deleted, or simply gone): close every link to them.
    for (const conn of Array.from(this.conns.values())) {
      if (conn.principal && conn.principal.userId && gone.has(conn.principal.userId)) {
        this.count('closedLinks', `${describe(conn.principal)} left the room's presence`)
        conn.destroy()
      }
    }
    const mine = this.userId !== null && next.get(this.userId)
    if (mine) this.setRole(mine.role)
    this.viewerLinks(viewerPairs)
    // Users listed again: their announces that arrived while they were absent count now.
    if (returned.size || this.deferred.size) {
      for (const [peerId, { stamp, caps }] of Array.from(this.deferred)) {
        const p = principalOf(stamp)
        if (!p || !p.userId || gone.has(p.userId)) continue
        this.deferred.delete(peerId)
        const listed = next.get(p.userId)
        if (listed && listed.peerIds.has(peerId)) this.onPeerFrame({ type: 'announce', from: peerId, caps }, stamp)
      }
    }
    this.emit('presence', [peers])
  }

  /**
   * Roles changed: links between two viewers close; a peer that was a viewer like us and is not
   * any more (one of us promoted) is missing now — announce so that it links.
   */
  viewerLinks (viewerPairsBefore) {
    for (const conn of Array.from(this.conns.values())) {
      if (!conn.service && this.viewerPair(conn.remotePeerId)) {
        this.count('closedLinks', `we and ${describe(conn.principal)} are both viewers`)
        this.conns.delete(conn.remotePeerId)
        conn.destroy()
      }
    }
    if (viewerPairsBefore.some(id => !this.conns.has(id) && !this.viewerPair(id))) this.announce()
  }

  /** The local user's live role (owner/editor/viewer; null once removed from the room). */
  setRole (role) {
    if (role === this.role) return
    this.role = role
    if (!mayWriteLocal(role)) this.pending.clear()
    this.emit('role', [role])
  }

  /** Removed from the room (or never a member): close every link and stop. */
  stop () {
    if (this.stopped) return
    this.stopped = true
    this.setRole(null)
    clearTimeout(this.reconnectTimer)
    this.reconnectTimer = null
    this.stopTimers()
    this.conns.forEach(c => c.destroy())
    this.conns.clear()
    if (this.ws) { try { this.ws.close() } catch (e) {} }
    this.setState('forbidden')
    this.emitPeers()
  }

  /** The server refused our peer id (another principal owns it): take a fresh one, never stay stuck. */
  freshPeerId () {
    this.peerId = uuid()
    this.stats.peerIdChanges++
    if (++this.freshIds > MAX_FRESH_IDS) {
      // Bounded: a fresh connection starts with no ids bound (the server caps ids per connection).
      if (this.ws) { try { this.ws.close() } catch (e) {} }
      return
    }
    this.announce()
  }

  count (kind, why, conn = null) {
    this.stats[kind] = (this.stats[kind] || 0) + 1
    const now = Date.now()
    if (!this.lastLog[kind] || now - this.lastLog[kind] > LOG_EVERY_MS) {
      this.lastLog[kind] = now
      console.warn(`codesync: ${kind} (${this.stats[kind]} so far)${conn ? ` from ${describe(conn.principal)} ${conn.remotePeerId}` : ''}: ${why}`)
    }
  }

  // ------------------------------------------------------------------ peers
  /** A data channel opened: SyncStep1 for the main and (to peers with `docs`) the named documents, our awareness. */
  onLinkOpen (conn) {
    if (!conn.service && this.viewerPair(conn.remotePeerId)) {
      // offered while one of us saw the other as a writer; the roles have settled since
      this.conns.delete(conn.remotePeerId)
      conn.destroy()
      return
    }
    this.ask(conn)
    if (conn.caps.includes('docs')) this.named.forEach((doc, name) => this.ask(conn, name))
    const own = this.ownAwareness()
    if (own) conn.send(own)
    this.reannounces = 0
    this.sendLinks(conn)
    this.scheduleLinks()
    this.emitPeers()
  }

  connectedPeers () {
    return Array.from(this.conns.values()).filter(c => c.connected)
  }

  emitPeers () {
    this.emit('peers', [{ connected: this.connectedPeers().map(c => c.remotePeerId) }])
  }

  onConnClosed (conn) {
    if (this.conns.get(conn.remotePeerId) === conn) this.conns.delete(conn.remotePeerId)
    if (conn.awarenessIds.size) {
      const ids = Array.from(conn.awarenessIds)
      ids.forEach(id => { if (this.awarenessOwner.get(id) === conn) this.awarenessOwner.delete(id) })
      conn.awarenessIds.clear()
      awarenessProtocol.removeAwarenessStates(this.awareness, ids.filter(id => id !== this.doc.clientID), conn)
    }
    if (conn.timedOut) this.stats.pendingTimeouts++
    if (conn.opened) this.scheduleLinks()
    this.emitPeers()
    // A link that was open closed: tell the room we have a free slot. Attempts that never opened
    // (timed out, refused, failed) wait for the periodic re-announce instead, so that a full room
    // does not answer every refusal with a fresh round of offers.
    if (conn.opened && !this.destroyed && !this.stopped) setTimeout(() => this.announce(), 200)
  }

  // ------------------------------------------------------------------ mesh
  /** Tell one mesh link our open links now, unless it already has exactly this list. */
  sendLinks (conn, ids = this.openLinkIds()) {
    if (!conn.connected || !conn.mesh) return
    const key = ids.join('\n')
    if (conn.sentLinks === key) return
    conn.sentLinks = key
    conn.send(encodeLinks(ids))
    this.stats.linksSent++
  }

  openLinkIds () {
    return this.connectedPeers().map(c => c.remotePeerId).sort()
  }

  /** Our link set changed: tell every mesh link once things settle (debounced). */
  scheduleLinks () {
    if (this.linksTimer || this.destroyed || this.stopped) return
    this.linksTimer = setTimeout(() => {
      this.linksTimer = null
      const ids = this.openLinkIds()
      this.conns.forEach(c => this.sendLinks(c, ids))
    }, this.timing.linksDebounce)
  }

  /** Could `peerId` relay the main document to others (may it write it, as far as we know)? */
  mayRelay (peerId) {
    const conn = this.conns.get(peerId)
    if (conn && conn.principal) return mayWriteMain(conn.rights)
    const role = this.peerRoles.get(peerId)
    if (role !== undefined) return WRITER_ROLES.has(role)
    const service = this.serviceIds.get(peerId)
    return service !== undefined && mayWriteMain({ service })
  }

  /** Is `peerId` a service peer (elected as a forwarder only after every member)? */
  isService (peerId) {
    const conn = this.conns.get(peerId)
    return Boolean((conn && conn.service) || this.serviceIds.has(peerId))
  }

  /**
   * An update applied from `from`: send it on to the links that would not get it otherwise — as
   * type 104 to `relayed` peers (so they never forward it again), as an Update to others. One
   * that came as type 104 (`relayed`) goes to no `relayed` peer: its author's links were covered
   * by the peer that forwarded it to us.
   */
  forward (update, from, relayed) {
    const self = this.peerId
    const fromLinks = from.links
    const mayRelay = (id) => this.mayRelay(id)
    const isService = (id) => this.isService(id)
    let plain = null
    let asRelayed = null
    this.conns.forEach(to => {
      if (to === from || !to.connected) return
      const takesRelayed = to.caps.includes('relayed')
      if (relayed && takesRelayed) return
      const toLinks = to.mesh ? to.links : null
      if (shouldForward({ self, from: from.remotePeerId, fromLinks, to: to.remotePeerId, toLinks, mayRelay, isService })) {
        to.send(takesRelayed ? (asRelayed || (asRelayed = encodeRelayed(update))) : (plain || (plain = encodeSync(SYNC_UPDATE, update))))
        this.stats.updatesForwarded++
      } else {
        this.stats.forwardsSkipped++
      }
    })
  }

  scheduleAntiEntropy () {
    if (this.destroyed || this.stopped) return
    this.antiEntropyTimer = setTimeout(() => {
      this.antiEntropyTimer = null
      this.antiEntropy()
      this.scheduleAntiEntropy()
    }, jittered(this.timing.antiEntropy, this.timing.jitter))
  }

  /** SyncStep1 for the main (name undefined) or a named document on `conn`; remembered per link. */
  ask (conn, name) {
    if (name === undefined) conn.send(encodeSync(SYNC_STEP1, Y.encodeStateVector(this.doc)))
    else conn.send(encodeDocSync(name, SYNC_STEP1, Y.encodeStateVector(this.named.get(name))))
    if (!conn.askedAt) conn.askedAt = new Map()
    conn.askedAt.set(name === undefined ? '' : 'doc:' + name, Date.now())
  }

  askedRecently (conn, name) {
    const at = conn.askedAt && conn.askedAt.get(name === undefined ? '' : 'doc:' + name)
    return at !== undefined && Date.now() - at < Math.min(1000, 0.2 * this.timing.antiEntropy)
  }

  /**
   * Anti-entropy (docs/protocol.md "Room topology"): a round for each document that changed since
   * the last one (all of them every `quietRounds + 1`-th round: the catch-all) — an update can only be
   * missing somewhere after a change, and every peer holding it changed when it got it, so a
   * quiet room is quiet on the wire. Our main-document state vector goes to every link (a
   * read-only peer answers with nothing, but asks us back: `onSync`), named documents' to the
   * services that write them; their SyncStep2 answers bring whatever we missed (a dropped
   * update, a relay that did not happen, an island joined again).
   */
  antiEntropy (force = false) {
    const links = this.connectedPeers()
    if (!links.length) return
    const catchAll = force || this.quietRounds >= this.timing.quietRounds
    if (!catchAll && !this.changedSinceRound.size) {
      this.quietRounds++
      this.stats.antiEntropySkipped++
      return
    }
    const changed = this.changedSinceRound
    this.changedSinceRound = new Set()
    this.quietRounds = 0
    this.stats.antiEntropyRounds++
    for (const conn of links) {
      if ((catchAll || changed.has('')) && !this.askedRecently(conn)) this.ask(conn)
      if (conn.caps.includes('docs')) {
        this.named.forEach((doc, name) => {
          if ((catchAll || changed.has('doc:' + name)) && mayWriteNamed(name, conn.rights) && !this.askedRecently(conn, name)) this.ask(conn, name)
        })
      }
    }
  }

  scheduleReannounce () {
    if (this.destroyed || this.stopped) return
    this.reannounceTimer = setTimeout(() => {
      this.reannounceTimer = null
      this.maybeReannounce()
      this.scheduleReannounce()
    }, jittered(this.timing.reannounce, this.timing.jitter))
  }

  /** Free slots and members (per presence) we have no link with: announce again, a bounded number of times. */
  maybeReannounce () {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN || this.reannounces >= this.timing.reannounceLimit) return
    if (this.slotsUsed() >= this.maxConns || !this.unlinkedMembers().length) return
    this.reannounces++
    this.stats.reannounces++
    this.announce()
  }

  /** Peer ids presence lists that we have no link (or attempt) with and may offer to. */
  unlinkedMembers () {
    const out = []
    this.peerRoles.forEach((role, id) => {
      if (id !== this.peerId && !this.conns.has(id) && !this.refusedRecently(id) && !this.viewerPair(id)) out.push(id)
    })
    return out
  }

  stopTimers () {
    clearTimeout(this.linksTimer)
    clearTimeout(this.antiEntropyTimer)
    clearTimeout(this.reannounceTimer)
    this.linksTimer = this.antiEntropyTimer = this.reannounceTimer = null
  }

  /**
   * The connected peer whose server stamp says it is the runner service, if any. With a run
   * (`runSnapshot`), the runner that runs it — its awareness names the `instance` and `session`
   * the run's entry carries — so Stop and console input reach the program's runner when a room
   * has several; any runner when none matches (it refuses a run it does not know).
   */
  runnerPeer (run = null) {
    const runners = this.connectedPeers().filter(c => c.principal && c.principal.service === 'runner' && c.caps.includes('app'))
    if (run && run.runnerInstance) {
      const states = this.awareness.getStates()
      for (const [id, conn] of this.awarenessOwner) {
        const state = states.get(id)
        if (runners.includes(conn) && state && state.instance === run.runnerInstance && state.session === run.runnerSession) return conn
      }
    }
    return runners[0] || null
  }

  /** Awareness states that arrived on connected links stamped with `service` (nobody else can set them). */
  serviceStates (service) {
    const out = []
    const states = this.awareness.getStates()
    this.awarenessOwner.forEach((conn, id) => {
      if (conn.connected && conn.principal && conn.principal.service === service && states.get(id)) out.push(states.get(id))
    })
    return out
  }

  sendApp (peerId, obj) {
    const conn = this.conns.get(peerId)
    if (!conn || !conn.connected || !conn.caps.includes('app')) return false
    conn.send(encodeApp(obj))
    return true
  }

  broadcast (message, except = null) {
    this.conns.forEach(c => { if (c !== except && c.connected) c.send(message) })
  }

  flush () {
    const pending = this.pending
    this.pending = new Map()
    if (!mayWriteLocal(this.role)) return
    pending.forEach((updates, origin) => {
      const update = updates.length === 1 ? updates[0] : Y.mergeUpdates(updates)
      if (origin instanceof PeerConn) {
        this.forward(update, origin, false)
      } else if (origin) {
        this.forward(update, origin.conn, true)
      } else {
        this.stats.localUpdates++
        this.broadcast(encodeSync(SYNC_UPDATE, update))
      }
    })
  }

  /** Our own awareness state as a type-1 message (null when we have none). */
  ownAwareness () {
    if (!this.awareness.getLocalState()) return null
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, MSG_AWARENESS)
    encoding.writeVarUint8Array(enc, awarenessProtocol.encodeAwarenessUpdate(this.awareness, [this.doc.clientID]))
    return encoding.toUint8Array(enc)
  }

  handleMessage (conn, buf, allowChunk) {
    if (conn.closed) return
    const decoder = decoding.createDecoder(buf)
    const type = decoding.readVarUint(decoder)
    switch (type) {
      case MSG_SYNC:
        this.onSync(conn, decoding.readVarUint(decoder), decoding.readVarUint8Array(decoder))
        break
      case MSG_RELAYED: // an Update its link forwarded: applied like one, never forwarded to a `relayed` peer
        this.stats.relayedReceived++
        this.onSync(conn, SYNC_UPDATE, decoding.readVarUint8Array(decoder), true)
        break
      case MSG_DOC:
        this.onDocSync(conn, decodeDocSync(decoder))
        break
      case MSG_AWARENESS:
        this.onAwareness(conn, decoding.readVarUint8Array(decoder))
        break
      case MSG_QUERY_AWARENESS: {
        const own = this.ownAwareness()
        if (own) conn.send(own)
        break
      }
      case MSG_BC_PEER_ID:
        break
      case MSG_LINKS: {
        if (!conn.linksBucket.take()) return this.count('droppedLinks', 'too many links messages', conn)
        const got = decodeLinks(decoder)
        if (got.drop) {
          this.count('droppedLinks', got.drop, conn)
        } else {
          conn.links = got.links
          this.stats.linksReceived++
        }
        break
      }
      case MSG_CHUNK: {
        if (!allowChunk) throw new Error('nested chunk')
        const whole = conn.reassembler.feed(decoder)
        if (whole) this.handleMessage(conn, whole, false)
        break
      }
      case MSG_APP: {
        const msg = decodeApp(decoder)
        if (mayReceiveApp(msg, conn.rights)) this.emit('app', [msg, conn.remotePeerId, conn.sender])
        else this.count('refusedApp', `app message ${JSON.stringify(String(msg.op)).slice(0, 40)}`, conn)
        break
      }
      default:
        console.warn('codesync: unknown message type', type)
    }
  }

  /**
   * Type-0 sync. SyncStep1 is answered (every member may read; a read-only client has nothing
   * anyone would accept, so it answers with an empty update). SyncStep2 / Update are applied only
   * from writer links; applied updates are then forwarded by `_onUpdate`, dropped ones never.
   */
  onSync (conn, syncType, payload, relayed = false) {
    if (syncType === SYNC_STEP1) {
      // after the handshake a SyncStep1 is the asker's anti-entropy round: it changed, so we
      // may be the one missing something — ask back (not twice within a moment: no ping-pong)
      if (conn.synced && mayWriteMain(conn.rights) && !this.askedRecently(conn)) this.ask(conn)
      // what is still waiting for the coalescing timer goes first: else the answer carries it
      // and the Update that follows is a duplicate
      if (this.pending.size) this.flush()
      const answer = mayWriteLocal(this.role) ? this.answerFor(payload) : EMPTY_UPDATE
      conn.send(encodeSync(SYNC_STEP2, answer))
      return
    }
    if (syncType !== SYNC_STEP2 && syncType !== SYNC_UPDATE) throw new Error('unknown sync type ' + syncType)
    if (syncType === SYNC_UPDATE) {
      this.stats.updatesReceived++
      conn.received.updates++
    }
    if (mayWriteMain(conn.rights)) {
      const before = this.docVersion
      this.applyingRelayed = relayed
      try {
        Y.applyUpdate(this.doc, payload, conn)
      } finally {
        this.applyingRelayed = false
      }
      if (this.docVersion !== before) {
        if (syncType === SYNC_STEP2 && conn.synced) this.stats.repairs++ // anti-entropy brought something we missed
      } else if (syncType === SYNC_UPDATE && !this.doc.store.pendingStructs) {
        this.stats.duplicateUpdates++ // nothing new, and nothing waiting for a missing update either
        conn.received.duplicates++
      }
    } else if (!isEmptyUpdate(payload)) {
      this.count('droppedUpdates', `document update from a link that may not write${conn.rights && !conn.rights.service ? ` (role ${conn.rights.role})` : ''}`, conn)
    }
    if (syncType === SYNC_STEP2 && !conn.synced) {
      conn.synced = true
      this.emit('synced', [{ peerId: conn.remotePeerId }])
    }
  }

  /**
   * Our answer to a SyncStep1. In a quiet room every link asks with the same state vector every few
   * seconds (anti-entropy), so the last answer is kept until the document changes.
   */
  answerFor (stateVector) {
    const c = this.answerCache
    if (c && c.version === this.docVersion && sameBytes(c.stateVector, stateVector)) return c.answer
    const answer = Y.encodeStateAsUpdate(this.doc, stateVector)
    this.answerCache = { version: this.docVersion, stateVector, answer }
    return answer
  }

  /**
   * Type-102 named documents: applied only from the services that own them (rights.js), never
   * forwarded, never sent from here (this browser has no changes of its own in them).
   */
  onDocSync (conn, { name, syncType, payload }) {
    const doc = this.named.get(name)
    if (!doc) return
    if (syncType === SYNC_STEP1) {
      if (conn.synced && mayWriteNamed(name, conn.rights) && !this.askedRecently(conn, name)) this.ask(conn, name)
      conn.send(encodeDocSync(name, SYNC_STEP2, EMPTY_UPDATE))
    } else if (mayWriteNamed(name, conn.rights)) {
      this.changedSinceRound.add('doc:' + name)
      Y.applyUpdate(doc, payload, conn)
    } else if (!isEmptyUpdate(payload)) {
      this.count('droppedDocUpdates', `update of named document ${JSON.stringify(name)} from a link that may not write it`, conn)
    }
  }

  /**
   * Awareness: a client id belongs to the first link that announced it (until that link closes or
   * removes it); nobody speaks for ours; each state must pass `sanitizeAwareness`; per-link bounds.
   */
  onAwareness (conn, update) {
    if (!conn.awarenessBucket.take()) return this.count('droppedAwareness', 'too many awareness messages', conn)
    let entries
    try {
      entries = decodeAwarenessEntries(update, AWARENESS_LIMITS.entries)
    } catch (err) {
      return this.count('droppedAwareness', err.message, conn)
    }
    const rights = conn.rights
    const kept = []
    let changed = false // dropped or rewritten entries: re-encode; otherwise pass the bytes on as they came
    for (const e of entries) {
      const owner = this.awarenessOwner.get(e.clientID)
      if (e.clientID === this.doc.clientID || (owner && owner !== conn)) {
        this.count('droppedAwareness', `client id ${e.clientID} belongs to another link`, conn)
        changed = true
        continue
      }
      const verdict = sanitizeAwareness(e.state, rights, e.size)
      if (verdict.drop) {
        this.count('droppedAwareness', verdict.drop, conn)
        changed = true
        continue
      }
      if (verdict.state !== e.state) changed = true
      if (!owner) {
        if (verdict.state === null) { changed = true; continue } // removing what nobody announced: nothing to do
        if (conn.awarenessIds.size >= AWARENESS_LIMITS.states) {
          this.count('droppedAwareness', 'too many awareness states on one link', conn)
          changed = true
          continue
        }
        this.awarenessOwner.set(e.clientID, conn)
        conn.awarenessIds.add(e.clientID)
      }
      kept.push({ clientID: e.clientID, clock: e.clock, state: verdict.state })
    }
    if (!kept.length) return
    awarenessProtocol.applyAwarenessUpdate(this.awareness, changed ? encodeAwarenessEntries(kept) : update, conn)
    for (const e of kept) {
      if (e.state === null && !this.awareness.getStates().has(e.clientID)) this.unbindAwareness(e.clientID)
    }
  }

  unbindAwareness (clientID) {
    const owner = this.awarenessOwner.get(clientID)
    if (!owner) return
    this.awarenessOwner.delete(clientID)
    owner.awarenessIds.delete(clientID)
  }

  destroy () {
    if (this.destroyed) return
    this.destroyed = true
    clearTimeout(this.reconnectTimer)
    clearTimeout(this.flushTimer)
    this.stopTimers()
    awarenessProtocol.removeAwarenessStates(this.awareness, [this.doc.clientID], 'destroy')
    this.flush()
    this.doc.off('update', this._onUpdate)
    this.awareness.off('update', this._onAwareness)
    window.removeEventListener('beforeunload', this._onUnload)
    this.conns.forEach(c => c.destroy())
    this.conns.clear()
    if (this.ws) {
      this.sendWs({ type: 'unsubscribe', topics: [this.roomId] })
      try { this.ws.close() } catch (e) {}
    }
    super.destroy()
  }
}

function sameBytes (a, b) {
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

function describe (principal) {
  if (!principal) return 'an unstamped peer'
  return principal.service ? `the ${principal.service} service` : `user ${principal.userId}`
}
