// One WebRTC connection to one remote peer: simple-peer compatible signalling through the
// provider's signaling socket, one ordered data channel, chunking of large messages for CodeSync
// peers, back-pressure. Transport only: what the messages mean, and who may send them, is the
// provider's business (provider.js, rights.js).
import { Reassembler, encodeChunks } from './wire.js'
import { AWARENESS_LIMITS, RateBucket, linkRights, principalOf } from './rights.js'
import { MESH_TIMING } from './topology.js'

const MAX_SEND_LIMIT = 256 * 1024 // Chromium never sends more than this in one message
const HIGH_WATER = 4 * 1024 * 1024

function randomLabel () {
  return Array.from(crypto.getRandomValues(new Uint8Array(10)), b => b.toString(16).padStart(2, '0')).join('')
}

/** One WebRTC connection to one remote peer (simple-peer compatible signalling). */
export class PeerConn {
  /**
   * @param {CodeSyncProvider} provider
   * @param {string} remotePeerId
   * @param {boolean} initiator
   * @param {any} stamp the server's `sender` stamp on the frame that made this link: it names the
   *   link's principal for its whole life (frames from another principal never touch it)
   * @param {string[]} caps the capabilities that frame announced
   */
  constructor (provider, remotePeerId, initiator, stamp, caps) {
    this.provider = provider
    this.remotePeerId = remotePeerId
    this.initiator = initiator
    this.stamp = stamp || null
    this.principal = principalOf(stamp)
    this.caps = caps || []
    this.relayedKey = { conn: this } // the provider's pending-updates key for what came from here as type 104
    this.awarenessBucket = new RateBucket(AWARENESS_LIMITS.perSecond, AWARENESS_LIMITS.burst)
    this.linksBucket = new RateBucket(MESH_TIMING.linksPerSecond, MESH_TIMING.linksBurst) // type 103 is debounced: a few a second at most
    this.glareToken = undefined
    this.connected = false
    this.closed = false
    this.synced = false
    this.opened = false // the data channel was open at some point (a link, not just an attempt)
    this.timedOut = false // closed because it did not open within MESH_TIMING.pendingTimeout
    this.refused = false // closed because the remote said it is full (signal `refuse`)
    this.links = null // the remote's open links as its last type-103 message said (null: never said)
    this.sentLinks = null // what we last told it about ours (a key, to send only changes)
    this.received = { updates: 0, duplicates: 0 } // type-0 Update messages on this link (metrics, tests)
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
    // A link that does not open in time is closed: it would hold one of our maxConns slots forever.
    this.timer = setTimeout(() => {
      if (this.connected || this.closed) return
      this.timedOut = true
      this.destroy()
    }, MESH_TIMING.pendingTimeout)
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

  /** The latest server stamp of this link's principal (role and name follow it live). */
  get sender () { return this.stamp }

  /** What this link may do right now (stamp + latest presence, rights.js). */
  get rights () { return linkRights(this.principal, this.provider.presenceIndex, this.provider.gone) }

  /** Does the remote follow the mesh rules (it tells its links, type 103)? */
  get mesh () { return this.caps.includes('mesh') }

  /** Is this a link to a service peer (persistence, runner)? Those never count against maxConns. */
  get service () { return !!(this.principal && this.principal.service) }

  /** A newer frame of the same principal: its stamp (role, name) and caps are the current ones. */
  restamp (stamp, caps) {
    if (stamp) {
      this.stamp = stamp
      this.principal = principalOf(stamp)
    }
    if (caps) this.caps = caps
  }

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
    this.opened = true
    clearTimeout(this.timer)
    this.provider.onLinkOpen(this)
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
