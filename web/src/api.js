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
      this.clear('Your session has expired. Please sign in again.')
      throw new ApiError(401, 'session_expired', 'Your session has expired. Please sign in again.')
    }
    if (!res.ok) throw await toError(res)
    this.store(await res.json())
  }
}

export const session = new Session()

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
      session.clear('Your session has expired. Please sign in again.')
      throw new ApiError(401, 'session_expired', 'Your session has expired. Please sign in again.')
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
  async register (email, password, name) {
    const body = await api('POST', '/api/auth/register', { email, password, name }, { auth: false })
    session.store(body)
    return body
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
