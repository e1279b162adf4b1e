// Entry point: hash router over the screens. Routes: #/login, #/register[?invite=], #/oauth?…,
// #/forgot-password, #/reset-password/<token>, #/verify-email/<token>, #/rooms, #/room/<id>,
// #/invite/<token>, #/account[?linked=|?error=], #/admin.
import './style.css'
import { session } from './api.js'
import { clear, navigate } from './ui.js'
import { forgotView, loginView, oauthView, registerView, resetView, verifyView } from './views/auth.js'
import { inviteView, roomsView } from './views/rooms.js'
import { roomView } from './views/room.js'
import { accountView } from './views/account.js'
import { adminView } from './views/admin.js'

const root = document.getElementById('app')
let cleanup = null
let generation = 0

function parse () {
  const raw = location.hash.replace(/^#\/?/, '')
  const [path, query = ''] = raw.split('?')
  return { parts: path.split('/').filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(query) }
}

async function route () {
  const gen = ++generation
  if (cleanup) {
    const c = cleanup
    cleanup = null
    try { c() } catch (e) { console.error(e) }
  }
  clear(root)
  const { parts, params } = parse()
  const [first, second] = parts
  const needsAuth = !['login', 'register', 'oauth', 'invite', 'forgot-password', 'reset-password', 'verify-email'].includes(first || '')
  if (needsAuth && !session.signedIn) {
    const reason = session.expiredReason
    session.expiredReason = null
    return loginView(root, { message: reason })
  }
  switch (first) {
    case 'login':
      return loginView(root, { message: params.get('invited') ? 'Sign in or create an account to join the room you were invited to.' : null })
    case 'register':
      return registerView(root, params)
    case 'forgot-password':
      return forgotView(root)
    case 'reset-password':
      return resetView(root, second || '')
    case 'verify-email':
      return verifyView(root, second || '')
    case 'account':
      return accountView(root, params)
    case 'admin': {
      const c = await adminView(root)
      if (gen !== generation) { if (c) c() } else cleanup = c || null
      return
    }
    case 'oauth':
      return oauthView(root, params)
    case 'invite':
      return inviteView(root, second || '')
    case 'room': {
      const c = await roomView(root, second || '', () => gen === generation)
      if (gen !== generation) c()
      else cleanup = c
      return
    }
    case 'rooms':
    case undefined:
      if (!first) return navigate('#/rooms')
      return roomsView(root)
    default:
      return navigate('#/rooms')
  }
}

// An expired session anywhere sends the user to sign in again, saying why.
session.onChange((data) => {
  if (!data && session.expiredReason) route()
})
window.addEventListener('hashchange', route)
route()
