// A room's history in the browser (docs/history.md): asking the persistence peer over the data
// channel (app messages `history` / `history-reply`, docs/protocol.md "History"), and the pure
// parts of the history views — blame from Yjs items, line diffs, the restore edit, the player's
// clock. No DOM here (views/history.js draws), so Node tests it (web/test/history.test.mjs).
import * as Y from 'yjs'

const REQUEST_TIMEOUT_MS = 30_000
const BUSY_RETRIES = 4

function fromBase64 (s) {
  const bin = atob(s)
  const out = new Uint8Array(bin.length)
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i)
  return out
}

export class HistoryError extends Error {
  constructor (code, message) {
    super(message)
    this.code = code
  }
}

/**
 * Requests to the persistence peer that owns the room. Answers arrive as provider 'app' events,
 * which the provider emits for `history-*` operations only from the persistence-stamped link
 * (rights.js `mayReceiveApp`): a member cannot answer in its place.
 */
export class HistoryClient {
  constructor (provider) {
    this.provider = provider
    this.nextId = 1
    this.waiting = new Map()
    this.listeners = new Set()
    this.onApp = (msg) => {
      if (msg.op === 'history-changed') {
        this.listeners.forEach(fn => { try { fn(msg) } catch (e) { console.error(e) } })
        return
      }
      if (msg.op !== 'history-reply') return
      const w = this.waiting.get(msg.id)
      if (!w) return
      this.waiting.delete(msg.id)
      clearTimeout(w.timer)
      w.resolve(msg)
    }
    provider.on('app', this.onApp)
  }

  /** The connected persistence peer's id (null while there is none). */
  peer () {
    const c = this.provider.connectedPeers().find(c => c.principal && c.principal.service === 'persistence' && c.caps.includes('app'))
    return c ? c.remotePeerId : null
  }

  onChanged (fn) { this.listeners.add(fn); return () => this.listeners.delete(fn) }

  /** The answer of a successful request; throws HistoryError otherwise (retries `busy` a few times). */
  async ask (q, args = {}) {
    for (let attempt = 0; ; attempt++) {
      const reply = await this.request(q, args)
      if (reply.ok) return reply
      const err = reply.error || {}
      if (err.code === 'busy' && attempt < BUSY_RETRIES) {
        await new Promise(resolve => setTimeout(resolve, 300 * 2 ** attempt))
        continue
      }
      throw new HistoryError(err.code || 'error', err.message || 'the history could not be read')
    }
  }

  request (q, args = {}) {
    const peer = this.peer()
    if (!peer) return Promise.reject(new HistoryError('unavailable', 'The history is not available: the persistence peer is not connected.'))
    const id = this.nextId++
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id)
        reject(new HistoryError('timeout', 'The persistence peer did not answer in time.'))
      }, REQUEST_TIMEOUT_MS)
      this.waiting.set(id, { resolve, timer })
      if (!this.provider.sendApp(peer, { op: 'history', id, q, ...args })) {
        clearTimeout(timer)
        this.waiting.delete(id)
        reject(new HistoryError('unavailable', 'Could not reach the persistence peer.'))
      }
    })
  }

  destroy () {
    this.provider.off('app', this.onApp)
    this.waiting.forEach(w => clearTimeout(w.timer))
    this.waiting.clear()
    this.listeners.clear()
  }
}

async function inflate (bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('deflate'))
  return new Uint8Array(await new Response(stream).arrayBuffer())
}

/** The documents of a `version` answer: `{main: Y.Doc, runs: Y.Doc}` (gc off: blame keeps items). */
export async function versionDocs (answer) {
  const out = {}
  for (const [name, b64] of Object.entries(answer.docs || {})) {
    let bytes = fromBase64(b64)
    if (answer.encoding === 'deflate') bytes = await inflate(bytes)
    const doc = new Y.Doc({ gc: false })
    Y.applyUpdate(doc, bytes)
    out[name] = doc
  }
  return out
}

export function decodeUpdate (b64) { return fromBase64(b64) }

// ------------------------------------------------------------------ blame
/**
 * Runs of the visible text of `ytext` by the Yjs client id that inserted them:
 * `[{from, to, client}]` in UTF-16 positions (CodeMirror's and JavaScript's).
 */
export function blameRuns (ytext) {
  const out = []
  let pos = 0
  for (let item = ytext._start; item !== null; item = item.right) {
    if (item.deleted || !item.countable) continue
    const len = item.length
    if (item.content instanceof Y.ContentString) {
      const client = item.id.client
      const last = out[out.length - 1]
      if (last && last.client === client && last.to === pos) last.to = pos + len
      else out.push({ from: pos, to: pos + len, client })
    }
    pos += len
  }
  return out
}

/** Per line of `text`: the client id that wrote most of its characters (null: empty line). */
export function lineClients (text, runs) {
  const lines = text.split('\n')
  const out = []
  let start = 0
  let r = 0
  for (const line of lines) {
    const end = start + line.length
    const count = new Map()
    while (r < runs.length && runs[r].to <= start) r++
    for (let i = r; i < runs.length && runs[i].from < end; i++) {
      const n = Math.min(end, runs[i].to) - Math.max(start, runs[i].from)
      if (n > 0) count.set(runs[i].client, (count.get(runs[i].client) || 0) + n)
    }
    let best = null
    let bestN = 0
    count.forEach((n, client) => { if (n > bestN) { best = client; bestN = n } })
    out.push({ text: line, client: best })
    start = end + 1
  }
  return out
}

// ------------------------------------------------------------------ diffs
/** Lines with their line breaks kept (the last may have none): `'a\nb'` -> `['a\n', 'b']`. */
export function splitLines (text) {
  const out = text.match(/[^\n]*\n|[^\n]+$/g) || []
  return out
}

function diffTokens (A, B, maxEdits) {
  let pre = 0
  while (pre < A.length && pre < B.length && A[pre] === B[pre]) pre++
  let suf = 0
  while (suf < A.length - pre && suf < B.length - pre && A[A.length - 1 - suf] === B[B.length - 1 - suf]) suf++
  const a1 = A.slice(pre, A.length - suf)
  const b1 = B.slice(pre, B.length - suf)
  const mid = myers(a1, b1, maxEdits) || [...a1.map(line => ({ op: '-', line })), ...b1.map(line => ({ op: '+', line }))]
  return [...A.slice(0, pre).map(line => ({ op: ' ', line })), ...mid, ...A.slice(A.length - suf).map(line => ({ op: ' ', line }))]
}

/**
 * Line diff (Myers) for display: `[{op: ' ' | '-' | '+', line}]` turning `a` into `b` (lines
 * without their breaks). Beyond `maxEdits` differences the middle is replaced wholesale
 * (bounded time).
 */
export function diffLines (a, b, maxEdits = 4000) {
  return diffTokens(a.split('\n'), b.split('\n'), maxEdits)
}

function myers (a, b, maxD) {
  const n = a.length
  const m = b.length
  const max = n + m
  const offset = max + 1
  const v = new Int32Array(2 * max + 3)
  const trace = []
  for (let d = 0; d <= Math.min(max, maxD); d++) {
    trace.push(v.slice())
    for (let k = -d; k <= d; k += 2) {
      let x = (k === -d || (k !== d && v[offset + k - 1] < v[offset + k + 1])) ? v[offset + k + 1] : v[offset + k - 1] + 1
      let y = x - k
      while (x < n && y < m && a[x] === b[y]) { x++; y++ }
      v[offset + k] = x
      if (x >= n && y >= m) return backtrack(trace, a, b, offset, d)
    }
  }
  return null
}

function backtrack (trace, a, b, offset, dEnd) {
  const out = []
  let x = a.length
  let y = b.length
  for (let d = dEnd; d > 0; d--) {
    const v = trace[d]
    const k = x - y
    const prevK = (k === -d || (k !== d && v[offset + k - 1] < v[offset + k + 1])) ? k + 1 : k - 1
    const prevX = v[offset + prevK]
    const prevY = prevX - prevK
    while (x > prevX && y > prevY) { out.push({ op: ' ', line: a[--x] }); y-- }
    if (x === prevX) out.push({ op: '+', line: b[--y] })
    else out.push({ op: '-', line: a[--x] })
  }
  while (x > 0 && y > 0) { out.push({ op: ' ', line: a[--x] }); y-- }
  return out.reverse()
}

/**
 * The restore edit: `[{pos, del, ins}]` (UTF-16 positions in `current`, back to front) that
 * turn `current` into `target`. Lines both share keep their characters — and so their authors.
 */
export function restorePatches (current, target, maxEdits = 4000) {
  const ops = diffTokens(splitLines(current), splitLines(target), maxEdits)
  const patches = []
  let pos = 0
  for (let i = 0; i < ops.length;) {
    if (ops[i].op === ' ') { pos += ops[i].line.length; i++; continue }
    const start = pos
    let del = 0
    let ins = ''
    for (; i < ops.length && ops[i].op !== ' '; i++) {
      if (ops[i].op === '-') del += ops[i].line.length
      else ins += ops[i].line
    }
    pos += del
    patches.push({ pos: start, del, ins })
  }
  patches.reverse()
  if (applyPatches(current, patches) === target) return patches
  // cannot happen with whole-line tokens; kept as a guard: one trimmed replacement
  let pre = 0
  while (pre < current.length && pre < target.length && current[pre] === target[pre]) pre++
  let suf = 0
  while (suf < current.length - pre && suf < target.length - pre && current[current.length - 1 - suf] === target[target.length - 1 - suf]) suf++
  return [{ pos: pre, del: current.length - pre - suf, ins: target.slice(pre, target.length - suf) }]
}

export function applyPatches (text, patches) {
  for (const { pos, del, ins } of patches) text = text.slice(0, pos) + ins + text.slice(pos + del)
  return text
}

/** Restore `target` into the live Y.Text as ONE new edit on top (peers merge it like any change). */
export function restoreInto (ytext, target) {
  const patches = restorePatches(ytext.toString(), target)
  ytext.doc.transact(() => {
    for (const { pos, del, ins } of patches) {
      if (del) ytext.delete(pos, del)
      if (ins) ytext.insert(pos, ins)
    }
  }, 'history-restore')
  return patches.length
}

// ------------------------------------------------------------------ the player's clock
/** Pauses longer than this (ms of real time) are shortened to it in playback. */
export const MAX_PAUSE_MS = 1500
export const SPEEDS = [1, 2, 4, 8, 16, 32]

/**
 * Which queued updates are due: `queue` holds `{seq, at, ...}` in order; the clock advances by
 * `elapsedMs * speed` ms of room time, and a pause longer than MAX_PAUSE_MS of playback is
 * shortened to that. Returns how many to apply now and the clock's new room time.
 */
export function dueUpdates (queue, clockAt, elapsedMs, speed) {
  let budget = elapsedMs * speed // room ms of progress at this speed
  let at = clockAt
  let n = 0
  const cap = MAX_PAUSE_MS * speed
  while (n < queue.length) {
    const gap = Math.max(0, queue[n].at - at)
    const cost = Math.min(gap, cap)
    if (cost > budget) {
      at += gap <= cap ? budget : budget * (gap / cost)
      return { count: n, at }
    }
    budget -= cost
    at = Math.max(at, queue[n].at)
    n++
  }
  return { count: n, at: at + budget }
}
