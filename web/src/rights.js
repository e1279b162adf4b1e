// Who may say what on a data channel (docs/protocol.md, "The trust model" and "Awareness").
//
// The document never passes through the server, so this browser enforces rights on everything
// it receives. The only source of a link's rights is the server: the `sender` stamp on the remote
// peer id's signaling frames and the roles in `presence` frames. These are the rules as pure
// functions (no transport, no DOM), so Node can test them (web/test/rights_cli.mjs); the
// provider (provider.js) keeps the state they read.

/** Roles whose holders may change the main document. */
export const WRITER_ROLES = new Set(['owner', 'editor'])

/** Services that may change the main document (the persistence peer serves stored documents). */
const MAIN_WRITER_SERVICES = new Set(['persistence'])

/** Named documents (message type 102) this client knows, and which services may write each. */
export const NAMED_DOC_WRITERS = Object.freeze({ runs: new Set(['runner', 'persistence']) })

/** Per-link awareness bounds: entries per message, states held, state size, messages per second. */
export const AWARENESS_LIMITS = Object.freeze({ entries: 16, states: 4, bytes: 8192, perSecond: 200, burst: 400 })

/**
 * The principal a server stamp names: `{service}` for a service connection, `{userId, name, role}`
 * for a person; null for a missing or malformed stamp (such a link gets no rights at all).
 */
export function principalOf (stamp) {
  if (!stamp || typeof stamp !== 'object') return null
  if (typeof stamp.service === 'string' && stamp.service) return { service: stamp.service }
  if (stamp.user_id === undefined || stamp.user_id === null || stamp.user_id === '') return null
  return {
    userId: String(stamp.user_id),
    name: typeof stamp.name === 'string' ? stamp.name : '',
    role: typeof stamp.role === 'string' ? stamp.role : null
  }
}

/** Same service, or same user (names and roles may change; identity does not). */
export function samePrincipal (a, b) {
  if (!a || !b) return false
  if (a.service || b.service) return a.service === b.service
  return a.userId === b.userId
}

/** Presence `peers` as Map user id -> {role, name, peerIds}. Malformed records are skipped. */
export function indexPresence (peers) {
  const out = new Map()
  if (!Array.isArray(peers)) return out
  for (const p of peers) {
    if (!p || typeof p !== 'object' || p.user_id === undefined || p.user_id === null) continue
    out.set(String(p.user_id), {
      role: typeof p.role === 'string' ? p.role : null,
      name: typeof p.name === 'string' ? p.name : '',
      peerIds: new Set(Array.isArray(p.peer_ids) ? p.peer_ids.map(String) : [])
    })
  }
  return out
}

/**
 * A link's rights now. Services are what their stamp says. A person's *effective role* is the
 * role the latest presence lists for them, or the stamp's role while presence does not list them
 * yet; a user who disappeared from presence (`gone`) has none until listed again.
 */
export function linkRights (principal, presence, gone) {
  if (!principal) return null
  if (principal.service) return principal
  if (gone && gone.has(principal.userId)) return { ...principal, role: null }
  const listed = presence && presence.get(principal.userId)
  const role = listed ? listed.role : principal.role
  const name = (listed && listed.name) || principal.name
  return role === principal.role && name === principal.name ? principal : { ...principal, role, name }
}

/** May this link change the main document (type-0 SyncStep2 and Update)? */
export function mayWriteMain (rights) {
  if (!rights) return false
  if (rights.service) return MAIN_WRITER_SERVICES.has(rights.service)
  return WRITER_ROLES.has(rights.role)
}

/** May this link change the named document `name` (type-102 SyncStep2 and Update)? */
export function mayWriteNamed (name, rights) {
  const writers = Object.prototype.hasOwnProperty.call(NAMED_DOC_WRITERS, name) ? NAMED_DOC_WRITERS[name] : null
  return !!(writers && rights && rights.service && writers.has(rights.service))
}

/** May the local user (role from presence / own stamps) write the main document? */
export function mayWriteLocal (role) {
  return WRITER_ROLES.has(role)
}

/**
 * Which users a new presence frame takes away. `gone` afterwards: users listed before (or with
 * open links) that the new frame does not list, plus earlier gone users still missing. `returned`:
 * gone users the new frame lists again (their offers and announces are accepted again).
 */
export function presenceChanges (prev, next, gone, linkedUsers = []) {
  const nextGone = new Set()
  const returned = new Set()
  const consider = new Set([...(prev ? prev.keys() : []), ...(gone || []), ...linkedUsers])
  for (const userId of consider) {
    if (!next.has(userId)) nextGone.add(userId)
  }
  for (const userId of gone || []) {
    if (next.has(userId)) returned.add(userId)
  }
  return { gone: nextGone, returned }
}

/**
 * The awareness state a link may set for one client id, or `{drop: reason}`. From a person's link
 * the state must carry `user.id` equal to the stamped user id, gets the stamped name, and may not
 * claim `service` or carry `saved`; from a service link `service` must be the stamped service.
 * `state === null` (the client left) passes; whether this link may remove it is the caller's
 * (client-id binding) business.
 */
export function sanitizeAwareness (state, rights, size = 0, maxBytes = AWARENESS_LIMITS.bytes) {
  if (!rights) return { drop: 'unstamped link' }
  if (size > maxBytes) return { drop: 'state too large' }
  if (state === null) return { state }
  if (typeof state !== 'object' || Array.isArray(state)) return { drop: 'state is not an object' }
  if (rights.service) {
    if (state.service !== rights.service) return { drop: `service ${JSON.stringify(state.service)} on a ${rights.service} link` }
    return { state }
  }
  if (Object.prototype.hasOwnProperty.call(state, 'service')) return { drop: 'a person claims to be a service' }
  if (Object.prototype.hasOwnProperty.call(state, 'saved')) return { drop: 'a person claims a saved status' }
  const user = state.user
  if (!user || typeof user !== 'object' || user.id === undefined || user.id === null || String(user.id) !== rights.userId) {
    return { drop: 'user.id is not the stamped user' }
  }
  if (user.name === rights.name) return { state }
  return { state: { ...state, user: { ...user, name: rights.name } } }
}

/** App messages (type 101) a browser accepts: the runner's replies (run, stop, console input), from
 * the runner's link only; history answers and notices (docs/protocol.md "History"), from the
 * persistence peer's only. */
export function mayReceiveApp (msg, rights) {
  if (!msg || typeof msg.op !== 'string') return false
  if (/^(run|stop|input)-/.test(msg.op)) return !!(rights && rights.service === 'runner')
  if (msg.op === 'history-reply' || msg.op === 'history-changed') return !!(rights && rights.service === 'persistence')
  return false
}

/** A token bucket: `take()` is false once more than `burst` arrived faster than `perSecond`. */
export class RateBucket {
  constructor (perSecond, burst, now = Date.now()) {
    this.perSecond = perSecond
    this.burst = burst
    this.tokens = burst
    this.at = now
  }

  take (now = Date.now()) {
    this.tokens = Math.min(this.burst, this.tokens + (now - this.at) * this.perSecond / 1000)
    this.at = now
    if (this.tokens < 1) return false
    this.tokens -= 1
    return true
  }
}
