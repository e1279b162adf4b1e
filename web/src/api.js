// HTTP API client and the signed-in session.
// Tokens live in localStorage so a reload stays signed in; the access token is refreshed
// silently before it expires. POST /api/auth/refresh rotates the refresh token (single use),
// so refreshes are serialised in this tab (one in-flight promise) and across tabs (Web Locks),
// and a tab that finds a newer pair already stored by another tab uses that instead.

const STORE_KEY = 'codesync.session'
const REFRESH_MARGIN_MS = 60_000

export class ApiError extends Error {
  constructor (status, code, message) {
    super(message)
    this.status = status
    this.code = code
  }
}

/** Seconds-since-epoch `exp` of a JWT, or 0 when it cannot be read. */
export function tokenExpiry (token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/')
    const json = JSON.parse(atob(part + '='.repeat((4 - part.length % 4) % 4)))
    return typeof json.exp === 'number' ? json.exp : 0
  } catch (e) {
    return 0
  }
}

function readStored () {
  try {
    const raw = localStorage.getItem(STORE_KEY)
    return raw ? JSON.parse(raw) : null
  } catch (e) {
    return null
  }
}

class Session {
  constructor () {
    this.data = readStored()
    this.listeners = new Set()
    this._refreshing = null
    window.addEventListener('storage', (ev) => {
      if (ev.key === STORE_KEY) {
        this.data = readStored()
        this._emit()
      }
    })
  }

  get signedIn () { return !!(this.data && this.data.refresh_token) }
  get user () { return this.data ? this.data.user : null }

  onChange (fn) { this.listeners.add(fn); return () => this.listeners.delete(fn) }
  _emit () { this.listeners.forEach(fn => { try { fn(this.data) } catch (e) { console.error(e) } }) }

  /** Store a token pair from register/login/refresh/OAuth. */
  store ({ access_token, refresh_token, user, expires_in }) {
    const exp = tokenExpiry(access_token)
    const expiresAt = exp ? exp * 1000 : Date.now() + (Number(expires_in) || 900) * 1000
    // Refresh a minute before expiry, or after three quarters of a short token's lifetime.
    const margin = Math.min(REFRESH_MARGIN_MS, Math.max(1000, (expiresAt - Date.now()) / 4))
    this.data = { access_token, refresh_token, user: user || (this.data && this.data.user) || null, expires_at: expiresAt, margin }
    localStorage.setItem(STORE_KEY, JSON.stringify(this.data))
    this._emit()
  }

  /** The signed-in user's record changed (profile, address): keep the stored copy current. */
  setUser (user) {
    if (!this.data) return
    this.data = { ...this.data, user }
    localStorage.setItem(STORE_KEY, JSON.stringify(this.data))
    this._emit()
  }

  clear (reason) {
    this.data = null
    this.expiredReason = reason || null
    localStorage.removeItem(STORE_KEY)
    this._emit()
  }

  /** A valid access token, refreshing it first when it is (nearly) expired. */
  async accessToken ({ force = false } = {}) {
    if (!this.signedIn) throw new ApiError(401, 'not_signed_in', 'Please sign in.')
    if (!force && this.data.expires_at - Date.now() > (this.data.margin || REFRESH_MARGIN_MS)) return this.data.access_token
    await this.refresh(force ? this.data.access_token : null)
    return this.data.access_token
  }

  refresh (staleAccess = null) {
    if (!this._refreshing) {
      const run = () => this._doRefresh(staleAccess)
      const locked = navigator.locks ? navigator.locks.request('codesync-refresh', run) : run()
      this._refreshing = locked.finally(() => { this._refreshing = null })
    }
    return this._refreshing
  }

  async _doRefresh (staleAccess) {
    // Another tab may have rotated the pair while we waited for the lock.
    const stored = readStored()
    if (stored && stored.refresh_token && (!this.data || stored.refresh_token !== this.data.refresh_token) &&
        stored.expires_at - Date.now() > (stored.margin || REFRESH_MARGIN_MS) && stored.access_token !== staleAccess) {
      this.data = stored
      return
    }
    if (!this.data) throw new ApiError(401, 'not_signed_in', 'Please sign in.')
    let res
    try {
      res = await fetch('/api/auth/refresh', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ refresh_token: this.data.refresh_token })
      })
    } catch (e) {
      throw new ApiError(0, 'network', 'The server cannot be reached. Check your connection.')
    }
    if (res.status === 401 || res.status === 400 || res.status === 403) {
      const err = await toError(res)
      const why = signOutReason(err.code)
      this.clear(why)
      throw new ApiError(401, 'session_expired', why)
    }
    if (!res.ok) throw await toError(res)
    this.store(await res.json())
  }
}

export const session = new Session()

/** What the sign-in page says after the server ended a session. */
function signOutReason (code) {
  if (code === 'account_disabled') return 'This account has been disabled by an administrator.'
  if (code === 'invalid_token') return 'This account no longer exists, or your session has ended. Please sign in again.'
  return 'Your session has expired. Please sign in again.'
}

async function toError (res) {
  let code = 'http_' + res.status
  let message = `The server answered ${res.status}.`
  try {
    const body = await res.json()
    if (body && body.error) {
      code = body.error.code || code
      message = body.error.message || message
    }
  } catch (e) {}
  return new ApiError(res.status, code, message)
}

/** JSON request; `auth` adds the Bearer token and retries once after a refresh on 401. */
export async function api (method, path, body, { auth = true } = {}) {
  for (let attempt = 0; attempt < 2; attempt++) {
    const headers = { Accept: 'application/json' }
    if (body !== undefined) headers['Content-Type'] = 'application/json'
    if (auth) headers.Authorization = 'Bearer ' + await session.accessToken({ force: attempt > 0 })
    let res
    try {
      res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
    } catch (e) {
      throw new ApiError(0, 'network', 'The server cannot be reached. Check your connection.')
    }
    if (res.status === 401 && auth && attempt === 0) continue
    if (res.status === 401 && auth) {
      const why = signOutReason((await toError(res)).code)
      session.clear(why)
      throw new ApiError(401, 'session_expired', why)
    }
    if (!res.ok) throw await toError(res)
    if (res.status === 204) return null
    const text = await res.text()
    return text ? JSON.parse(text) : null
  }
}

export const Auth = {
  async login (email, password) {
    const body = await api('POST', '/api/auth/login', { email, password }, { auth: false })
    session.store(body)
    return body
  },
  /** Resolves to the token pair (signed in), or `{status: 'verification_sent'}` where the
   * server lets nobody in before the address is confirmed. */
  async register (email, password, name, invite) {
    const payload = { email, password, name }
    if (invite) payload.invite = invite
    const body = await api('POST', '/api/auth/register', payload, { auth: false })
    if (body && body.access_token) session.store(body)
    return body
  },
  registration () { return api('GET', '/api/auth/registration', undefined, { auth: false }) },
  requestReset (email) { return api('POST', '/api/auth/password-reset', { email }, { auth: false }) },
  async confirmReset (token, password) {
    const body = await api('POST', '/api/auth/password-reset/confirm', { token, password }, { auth: false })
    session.store(body)
    return body
  },
  /** A verification (or new-address) link; sent with the Bearer token when signed in. */
  async verifyEmail (token) {
    const body = session.signedIn
      ? await api('POST', '/api/auth/verify-email', { token })
      : await api('POST', '/api/auth/verify-email', { token }, { auth: false })
    if (session.signedIn && body && body.user && session.user && body.user.id === session.user.id) session.setUser(body.user)
    return body
  },
  resendVerification (email) {
    return session.signedIn
      ? api('POST', '/api/auth/verify-email/resend', {})
      : api('POST', '/api/auth/verify-email/resend', { email }, { auth: false })
  },
  async logoutEverywhere () {
    try { await api('POST', '/api/auth/logout', { all: true }) } catch (e) {}
    session.clear(null)
  },
  async logout () {
    const refresh = session.data && session.data.refresh_token
    try {
      if (refresh) await api('POST', '/api/auth/logout', { refresh_token: refresh }, { auth: false })
    } catch (e) {}
    session.clear(null)
  },
  providers () { return api('GET', '/api/auth/providers', undefined, { auth: false }) },
  me () { return api('GET', '/api/me') }
}

export const Rooms = {
  list () { return api('GET', '/api/rooms') },
  create (name, language) { return api('POST', '/api/rooms', { name, language }) },
  get (id) { return api('GET', `/api/rooms/${encodeURIComponent(id)}`) },
  update (id, fields) { return api('PATCH', `/api/rooms/${encodeURIComponent(id)}`, fields) },
  remove (id) { return api('DELETE', `/api/rooms/${encodeURIComponent(id)}`) },
  invite (id, role) { return api('POST', `/api/rooms/${encodeURIComponent(id)}/invites`, { role }) },
  accept (token) { return api('POST', '/api/invites/accept', { token }) }, // in the body: URLs end up in logs
  members (id) { return api('GET', `/api/rooms/${encodeURIComponent(id)}/members`) },
  setRole (id, userId, role) { return api('PUT', `/api/rooms/${encodeURIComponent(id)}/members/${encodeURIComponent(userId)}`, { role }) },
  removeMember (id, userId) { return api('DELETE', `/api/rooms/${encodeURIComponent(id)}/members/${encodeURIComponent(userId)}`) }
}

export const Account = {
  async me () {
    const me = await api('GET', '/api/me')
    session.setUser(me)
    return me
  },
  async update (fields) {
    const me = await api('PATCH', '/api/me', fields)
    session.setUser(me)
    return me
  },
  changePassword (current, next) { return api('POST', '/api/me/password', { current_password: current, new_password: next }) },
  changeEmail (email, password) { return api('POST', '/api/me/email', { email, password }) },
  identities () { return api('GET', '/api/me/identities') },
  unlink (id) { return api('DELETE', `/api/me/identities/${encodeURIComponent(id)}`) },
  /** Sets the short-lived link cookie; the caller then opens the returned URL. */
  link (provider) { return api('POST', `/api/me/identities/${encodeURIComponent(provider)}/link`, {}) },
  deletionPlan () { return api('GET', '/api/me/deletion') },
  remove (body) { return api('POST', '/api/me/delete', body) }
}

export const Admin = {
  stats () { return api('GET', '/api/admin/stats') },
  users (q = '', offset = 0) { return api('GET', `/api/admin/users?q=${encodeURIComponent(q)}&offset=${offset}`) },
  rooms (q = '', offset = 0) { return api('GET', `/api/admin/rooms?q=${encodeURIComponent(q)}&offset=${offset}`) },
  setUser (id, fields) { return api('PATCH', `/api/admin/users/${encodeURIComponent(id)}`, fields) },
  deletionPlan (id) { return api('GET', `/api/admin/users/${encodeURIComponent(id)}/deletion`) },
  removeUser (id, body) { return api('POST', `/api/admin/users/${encodeURIComponent(id)}/delete`, body) },
  signupInvites () { return api('GET', '/api/admin/signup-invites') },
  createSignupInvite (email) { return api('POST', '/api/admin/signup-invites', email ? { email } : {}) },
  revokeSignupInvite (id) { return api('DELETE', `/api/admin/signup-invites/${encodeURIComponent(id)}`) }
}
