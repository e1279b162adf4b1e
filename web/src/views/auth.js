// Sign in, register and the OAuth landing page.
import { Auth, session } from '../api.js'
import { h, navigate, notice } from '../ui.js'

export const PENDING_INVITE = 'codesync.pendingInvite'

/** Where to go after signing in: a pending invite first, otherwise the room list. */
export function afterSignIn () {
  const invite = sessionStorage.getItem(PENDING_INVITE)
  if (invite) {
    sessionStorage.removeItem(PENDING_INVITE)
    navigate(`#/invite/${invite}`)
  } else {
    navigate('#/rooms')
  }
}

function errorText (err) {
  if (err.code === 'invalid_credentials' || (err.status === 401 && err.code !== 'session_expired')) {
    return 'Wrong email or password.'
  }
  if (err.status === 409) return 'An account with this email already exists. Sign in instead.'
  return err.message || 'Something went wrong.'
}

async function providerButtons (box) {
  try {
    const providers = await Auth.providers()
    if (!Array.isArray(providers) || providers.length === 0) return
    box.appendChild(h('div.divider', 'or'))
    // Come back to the invite being accepted, if any (the server hands `next` back in #/oauth?…).
    const invite = sessionStorage.getItem(PENDING_INVITE)
    const next = invite ? `?next=${encodeURIComponent(`/invite/${invite}`)}` : ''
    for (const p of providers) {
      box.appendChild(h('a.button.oauth', { href: p.start_url + next, testid: `oauth-${p.name}` }, `Sign in with ${p.label || p.name}`))
    }
  } catch (e) {
    // No providers endpoint or none configured: email + password only.
  }
}

export function loginView (root, { message } = {}) {
  const msg = notice('auth-error')
  const email = h('input', { type: 'email', name: 'email', autocomplete: 'username', required: true, testid: 'email' })
  const password = h('input', { type: 'password', name: 'password', autocomplete: 'current-password', required: true, testid: 'password' })
  const submit = h('button', { type: 'submit', testid: 'login-submit' }, 'Sign in')
  const oauth = h('div.oauth-list')
  const form = h('form.card', {
    on: {
      submit: async (ev) => {
        ev.preventDefault()
        submit.disabled = true
        msg.clear()
        try {
          await Auth.login(email.value.trim(), password.value)
          afterSignIn()
        } catch (err) {
          msg.show(errorText(err), 'error')
        } finally {
          submit.disabled = false
        }
      }
    }
  },
  h('h1', 'Sign in to CodeSync'),
  message ? h('div.notice.warn', { testid: 'auth-message' }, message) : null,
  msg.el,
  h('label', 'Email', email),
  h('label', 'Password', password),
  submit,
  oauth,
  h('p.small', 'No account yet? ', h('a', { href: '#/register', testid: 'to-register' }, 'Create one')))
  root.appendChild(h('main.auth', form))
  providerButtons(oauth)
  email.focus()
}

export function registerView (root) {
  const msg = notice('auth-error')
  const name = h('input', { name: 'name', autocomplete: 'name', required: true, testid: 'name' })
  const email = h('input', { type: 'email', name: 'email', autocomplete: 'username', required: true, testid: 'email' })
  const password = h('input', { type: 'password', name: 'password', autocomplete: 'new-password', required: true, minlength: 8, testid: 'password' })
  const submit = h('button', { type: 'submit', testid: 'register-submit' }, 'Create account')
  const oauth = h('div.oauth-list')
  const form = h('form.card', {
    on: {
      submit: async (ev) => {
        ev.preventDefault()
        submit.disabled = true
        msg.clear()
        try {
          await Auth.register(email.value.trim(), password.value, name.value.trim())
          afterSignIn()
        } catch (err) {
          msg.show(errorText(err), 'error')
        } finally {
          submit.disabled = false
        }
      }
    }
  },
  h('h1', 'Create your CodeSync account'),
  msg.el,
  h('label', 'Name', name),
  h('label', 'Email', email),
  h('label', 'Password (8 characters or more)', password),
  submit,
  oauth,
  h('p.small', 'Already registered? ', h('a', { href: '#/login', testid: 'to-login' }, 'Sign in')))
  root.appendChild(h('main.auth', form))
  providerButtons(oauth)
  name.focus()
}

/** `#/oauth?access_token=..&refresh_token=..&expires_in=..` or `#/oauth?error=..&message=..`. */
export async function oauthView (root, params) {
  if (params.get('error')) {
    loginView(root, { message: `Sign-in with the provider failed: ${params.get('message') || params.get('error')}` })
    return
  }
  const access = params.get('access_token')
  const refresh = params.get('refresh_token')
  if (!access || !refresh) {
    loginView(root, { message: 'Sign-in with the provider did not complete. Please try again.' })
    return
  }
  session.store({ access_token: access, refresh_token: refresh, expires_in: params.get('expires_in') })
  history.replaceState(null, '', '#/rooms') // keep tokens out of the address bar and history
  try {
    const me = await Auth.me()
    session.store({ ...session.data, user: me.user || me })
  } catch (e) {}
  const next = params.get('next')
  if (next && /^\/(rooms|room\/[^/?#]+|invite\/[^/?#]+)$/.test(next)) {
    sessionStorage.removeItem(PENDING_INVITE)
    navigate('#' + next)
  } else {
    afterSignIn()
  }
}
