// CodeSync's WebRTC provider for Yjs: speaks y-webrtc's signaling and data-channel protocol
// (so stock y-webrtc clients interoperate) plus CodeSync's additions: the access token in the
// signaling URL (a fresh one on every reconnect), server sender stamps and presence frames,
// caps announcement, chunking (type 100) and app messages (type 101) towards CodeSync peers.
//
// Events: 'status' ({state}), 'peers' ({connected: [peerId]}), 'presence' (peers list),
// 'app' (msg, peerId, sender), 'error' ({code, message}), 'synced'.
import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import { ObservableV2 } from 'lib0/observable'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'
import {
  CAPS, MSG_APP, MSG_AWARENESS, MSG_BC_PEER_ID, MSG_CHUNK, MSG_QUERY_AWARENESS, MSG_SYNC,
  Reassembler, decodeApp, encodeApp, encodeChunks
} from './wire.js'

const COALESCE_MS = 3
const PING_MS = 15_000
const PONG_TIMEOUT_MS = 8_000
const CONNECT_TIMEOUT_MS = 20_000
const MAX_SEND_LIMIT = 256 * 1024 // Chromium never sends more than this in one message
const HIGH_WATER = 4 * 1024 * 1024

function uuid () {
  return crypto.randomUUID ? crypto.randomUUID() : Array.from(crypto.getRandomValues(new Uint8Array(16)), b => b.toString(16).padStart(2, '0')).join('')
}

function randomLabel () {
  return Array.from(crypto.getRandomValues(new Uint8Array(10)), b => b.toString(16).padStart(2, '0')).join('')
}

/** One WebRTC connection to one remote peer (simple-peer compatible signalling). */
class PeerConn {
  constructor (provider, remotePeerId, initiator) {
    this.provider = provider
    this.remotePeerId = remotePeerId
    this.initiator = initiator
    this.glareToken = undefined
    this.connected = false
    this.closed = false
    this.synced = false
    this.awarenessIds = new Set()
    this.reassembler = new Reassembler()
    this.nextMessageId = 1
    this.queue = []
    this.channel = null
    this.pendingCandidates = []
    this.ops = Promise.resolve()
    this.pc = new RTCPeerConnection({ iceServers: provider.iceServers })
    this.pc.onicecandidate = (ev) => {
      if (ev.candidate && ev.candidate.candidate) {
        this.sendSignal({ type: 'candidate', candidate: { candidate: ev.candidate.candidate, sdpMLineIndex: ev.candidate.sdpMLineIndex, sdpMid: ev.candidate.sdpMid } })
      }
    }
    this.pc.onconnectionstatechange = () => {
      const s = this.pc.connectionState
      if (s === 'failed' || s === 'closed') this.destroy()
    }
    this.timer = setTimeout(() => { if (!this.connected) this.destroy() }, CONNECT_TIMEOUT_MS)
    if (initiator) {
      this.setupChannel(this.pc.createDataChannel(randomLabel()))
      this.enqueue(async () => {
        const offer = await this.pc.createOffer()
        await this.pc.setLocalDescription(offer)
        this.sendSignal({ type: 'offer', sdp: this.pc.localDescription.sdp })
      })
    } else {
      this.pc.ondatachannel = (ev) => this.setupChannel(ev.channel)
    }
  }

  get caps () { return this.provider.peerCaps.get(this.remotePeerId) || [] }
  get sender () { return this.provider.senders.get(this.remotePeerId) || null }

  enqueue (fn) {
    this.ops = this.ops.then(() => this.closed ? undefined : fn()).catch((err) => {
      console.warn('codesync: WebRTC negotiation with', this.remotePeerId, 'failed:', err)
      this.destroy()
    })
    return this.ops
  }

  sendSignal (signal) {
    if (this.glareToken === undefined) this.glareToken = Date.now() + Math.random()
    this.provider.publish({ type: 'signal', from: this.provider.peerId, to: this.remotePeerId, token: this.glareToken, signal })
  }

  /** Apply a simple-peer signal from the remote side. */
  signal (s) {
    if (!s || typeof s !== 'object') return
    if (s.type === 'offer' || s.type === 'answer') {
      this.enqueue(async () => {
        await this.pc.setRemoteDescription({ type: s.type, sdp: s.sdp })
        for (const c of this.pendingCandidates.splice(0)) await this.pc.addIceCandidate(c).catch(() => {})
        if (s.type === 'offer') {
          await this.pc.setLocalDescription(await this.pc.createAnswer())
          this.sendSignal({ type: 'answer', sdp: this.pc.localDescription.sdp })
        }
      })
    } else if (s.candidate && typeof s.candidate === 'object') {
      this.enqueue(async () => {
        if (!this.pc.remoteDescription) this.pendingCandidates.push(s.candidate)
        else await this.pc.addIceCandidate(s.candidate).catch(() => {})
      })
    }
  }

  setupChannel (channel) {
    this.channel = channel
    channel.binaryType = 'arraybuffer'
    channel.bufferedAmountLowThreshold = 1024 * 1024
    channel.onopen = () => this.onOpen()
    channel.onclose = () => this.destroy()
    channel.onmessage = (ev) => {
      if (typeof ev.data === 'string') return
      try {
        this.provider.handleMessage(this, new Uint8Array(ev.data), true)
      } catch (err) {
        console.warn('codesync: bad message from', this.remotePeerId, err)
      }
    }
    channel.onbufferedamountlow = () => this.drain()
    if (channel.readyState === 'open') this.onOpen()
  }

  onOpen () {
    if (this.connected || this.closed) return
    this.connected = true
    clearTimeout(this.timer)
    const p = this.provider
    const enc = encoding.createEncoder()
    encoding.writeVarUint(enc, MSG_SYNC)
    syncProtocol.writeSyncStep1(enc, p.doc)
    this.send(encoding.toUint8Array(enc))
    const states = p.awareness.getStates()
    if (states.size > 0) {
      const a = encoding.createEncoder()
      encoding.writeVarUint(a, MSG_AWARENESS)
      encoding.writeVarUint8Array(a, awarenessProtocol.encodeAwarenessUpdate(p.awareness, Array.from(states.keys())))
      this.send(encoding.toUint8Array(a))
    }
    p.emitPeers()
  }

  limit () {
    const sctp = this.pc.sctp
    const max = sctp && sctp.maxMessageSize ? sctp.maxMessageSize : 65536
    return Math.min(max, MAX_SEND_LIMIT)
  }

  /** Send one protocol message, chunking it for CodeSync peers when it is above the channel's limit. */
  send (message) {
    if (!this.channel || this.channel.readyState !== 'open') return
    const limit = this.limit()
    if (message.length > limit && this.caps.includes('chunk')) {
      const id = this.nextMessageId++
      for (const frame of encodeChunks(message, id, limit - 64)) this.queue.push(frame)
    } else {
      this.queue.push(message)
    }
    this.drain()
  }

  drain () {
    const ch = this.channel
    try {
      while (this.queue.length && ch && ch.readyState === 'open' && ch.bufferedAmount < HIGH_WATER) {
        ch.send(this.queue.shift())
      }
    } catch (err) {
      console.warn('codesync: send to', this.remotePeerId, 'failed:', err)
      this.destroy()
    }
  }

  destroy () {
    if (this.closed) return
    this.closed = true
    this.connected = false
    clearTimeout(this.timer)
    try { if (this.channel) this.channel.close() } catch (e) {}
    try { this.pc.close() } catch (e) {}
    this.provider.onConnClosed(this)
  }
}

export class CodeSyncProvider extends ObservableV2 {
  /**
   * @param {Y.Doc} doc
   * @param {awarenessProtocol.Awareness} awareness
   * @param {{roomId: string, getToken: (opts: {force: boolean}) => Promise<string>, signalingUrl?: string, iceServers?: any[], maxConns?: number}} opts
   */
  constructor (doc, awareness, { roomId, getToken, signalingUrl, iceServers = [], maxConns = 30 }) {
    super()
    this.doc = doc
    this.awareness = awareness
    this.roomId = roomId
    this.getToken = getToken
    this.signalingUrl = signalingUrl || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/signal`
    this.iceServers = iceServers
    this.maxConns = maxConns
    this.peerId = uuid()
    this.conns = new Map()
    this.senders = new Map()
    this.peerCaps = new Map()
    this.presence = []
    this.state = 'connecting'
    this.ws = null
    this.destroyed = false
    this.backoff = 500
    this.forceRefresh = false
    this.pending = new Map() // origin conn (or null) -> [update]
    this.flushTimer = null
    this.cooling = false
    this.coolPending = false
    this.microFlush = false

    this._onUpdate = (update, origin) => {
      const key = origin instanceof PeerConn ? origin : null
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
      const changed = added.concat(updated, removed)
      const enc = encoding.createEncoder()
      encoding.writeVarUint(enc, MSG_AWARENESS)
      encoding.writeVarUint8Array(enc, awarenessProtocol.encodeAwarenessUpdate(this.awareness, changed))
      this.broadcast(encoding.toUint8Array(enc))
    }
    this._onUnload = () => awarenessProtocol.removeAwarenessStates(this.awareness, [doc.clientID], 'window unload')
    doc.on('update', this._onUpdate)
    awareness.on('update', this._onAwareness)
    window.addEventListener('beforeunload', this._onUnload)
    this.connectSignaling()
  }

  // ------------------------------------------------------------------ signaling
  setState (state, detail = {}) {
    this.state = state
    this.emit('status', [{ state, ...detail }])
  }

  async connectSignaling () {
    if (this.destroyed) return
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
    if (this.destroyed) return
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
      if (this.destroyed) return
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
    if (this.destroyed || this.reconnectTimer) return
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
    if (this.conns.size < this.maxConns) this.publish({ type: 'announce', from: this.peerId })
  }

  handleSignal (m) {
    if (!m || typeof m !== 'object') return
    if (m.type === 'publish' && m.topic === this.roomId) {
      const data = m.data
      if (!data || typeof data !== 'object' || typeof data.from !== 'string') return // encrypted rooms are not ours
      if (data.from === this.peerId) return
      if (data.to !== undefined && data.to !== this.peerId) return
      if (m.sender) this.senders.set(data.from, m.sender)
      if (Array.isArray(data.caps)) this.peerCaps.set(data.from, data.caps)
      if (data.type === 'announce') {
        if (!this.conns.has(data.from) && this.conns.size < this.maxConns) {
          this.conns.set(data.from, new PeerConn(this, data.from, true))
        }
      } else if (data.type === 'signal' && data.signal) {
        let conn = this.conns.get(data.from)
        if (data.signal.type === 'offer') {
          if (conn && conn.glareToken !== undefined && conn.glareToken > data.token && !conn.connected) return
          if (conn) { this.conns.delete(data.from); conn.destroy() }
          conn = new PeerConn(this, data.from, false)
          this.conns.set(data.from, conn)
        } else if (data.signal.type === 'answer' && conn) {
          conn.glareToken = undefined
        }
        if (conn) conn.signal(data.signal)
      }
    } else if (m.type === 'presence' && m.topic === this.roomId) {
      this.presence = Array.isArray(m.peers) ? m.peers : []
      this.emit('presence', [this.presence])
    } else if (m.type === 'error') {
      if (m.code === 'forbidden' && m.topic === this.roomId) this.setState('forbidden')
      this.emit('error', [{ code: m.code, message: m.message || m.code }])
    }
  }

  // ------------------------------------------------------------------ peers
  connectedPeers () {
    return Array.from(this.conns.values()).filter(c => c.connected)
  }

  emitPeers () {
    this.emit('peers', [{ connected: this.connectedPeers().map(c => c.remotePeerId) }])
  }

  onConnClosed (conn) {
    if (this.conns.get(conn.remotePeerId) === conn) this.conns.delete(conn.remotePeerId)
    if (conn.awarenessIds.size) {
      const still = new Set()
      this.conns.forEach(c => c.awarenessIds.forEach(id => still.add(id)))
      const gone = Array.from(conn.awarenessIds).filter(id => !still.has(id) && id !== this.doc.clientID)
      if (gone.length) awarenessProtocol.removeAwarenessStates(this.awareness, gone, conn)
    }
    this.emitPeers()
    if (!this.destroyed) setTimeout(() => this.announce(), 200)
  }

  /** The connected peer whose server stamp says it is the runner service, if any. */
  runnerPeer () {
    return this.connectedPeers().find(c => c.sender && c.sender.service === 'runner' && c.caps.includes('app')) || null
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
    pending.forEach((updates, origin) => {
      const update = updates.length === 1 ? updates[0] : Y.mergeUpdates(updates)
      const enc = encoding.createEncoder()
      encoding.writeVarUint(enc, MSG_SYNC)
      syncProtocol.writeUpdate(enc, update)
      this.broadcast(encoding.toUint8Array(enc), origin)
    })
  }

  handleMessage (conn, buf, allowChunk) {
    const decoder = decoding.createDecoder(buf)
    const type = decoding.readVarUint(decoder)
    switch (type) {
      case MSG_SYNC: {
        const enc = encoding.createEncoder()
        encoding.writeVarUint(enc, MSG_SYNC)
        const syncType = syncProtocol.readSyncMessage(decoder, enc, this.doc, conn)
        if (syncType === syncProtocol.messageYjsSyncStep1) conn.send(encoding.toUint8Array(enc))
        if (syncType === syncProtocol.messageYjsSyncStep2 && !conn.synced) {
          conn.synced = true
          this.emit('synced', [{ peerId: conn.remotePeerId }])
        }
        break
      }
      case MSG_AWARENESS: {
        const update = decoding.readVarUint8Array(decoder)
        // Remember which awareness clients travel over this connection, to drop them when it closes.
        const d = decoding.createDecoder(update)
        const n = decoding.readVarUint(d)
        for (let i = 0; i < n; i++) {
          conn.awarenessIds.add(decoding.readVarUint(d))
          decoding.readVarUint(d)
          decoding.readVarString(d)
        }
        awarenessProtocol.applyAwarenessUpdate(this.awareness, update, conn)
        break
      }
      case MSG_QUERY_AWARENESS: {
        const enc = encoding.createEncoder()
        encoding.writeVarUint(enc, MSG_AWARENESS)
        encoding.writeVarUint8Array(enc, awarenessProtocol.encodeAwarenessUpdate(this.awareness, Array.from(this.awareness.getStates().keys())))
        conn.send(encoding.toUint8Array(enc))
        break
      }
      case MSG_BC_PEER_ID:
        break
      case MSG_CHUNK: {
        if (!allowChunk) throw new Error('nested chunk')
        const whole = conn.reassembler.feed(decoder)
        if (whole) this.handleMessage(conn, whole, false)
        break
      }
      case MSG_APP:
        this.emit('app', [decodeApp(decoder), conn.remotePeerId, conn.sender])
        break
      default:
        console.warn('codesync: unknown message type', type)
    }
  }

  destroy () {
    if (this.destroyed) return
    this.destroyed = true
    clearTimeout(this.reconnectTimer)
    clearTimeout(this.flushTimer)
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
