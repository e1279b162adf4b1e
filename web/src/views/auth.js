// Sign in, register, the OAuth landing page, and the emailed-link pages (forgot password,
// reset password, verify an address). The sign-in and register pages say honestly who may
// create an account here (GET /api/auth/registration).
import { Auth, session } from '../api.js'
import { h, navigate, notice } from '../ui.js'

export const PENDING_INVITE = 'codesync.pendingInvite'
export const PENDING_SIGNUP = 'codesync.pendingSignup'

/** Where to go after signing in: a pending invite first, otherwise the room list. */
export function afterSignIn () {
  const invite = sessionStorage.getItem(PENDING_INVITE)
  sessionStorage.removeItem(PENDING_SIGNUP)
  if (invite) {
    sessionStorage.removeItem(PENDING_INVITE)
    navigate(`#/invite/${invite}`)
  } else {
    navigate('#/rooms')
  }
}

const MESSAGES = {
  invalid_credentials: 'Wrong email or password.',
  email_taken: 'An account with this email already exists. Sign in instead.',
  account_disabled: 'This account has been disabled by an administrator.',
  email_unverified: 'Confirm your email address first: open the link we mailed you.',
  registration_closed: 'Registration is closed on this server. Ask an administrator for an account.',
  invite_required: 'This server is invite-only: open the invite link you were sent to create an account.',
  invite_invalid: 'This invitation is not valid any more (used, revoked or expired). Ask for a new one.',
  invite_email_mismatch: 'This invitation is for another email address.',
  link_used: 'This link has already been used. Ask for a new one if you still need it.',
  link_expired: 'This link has expired. Ask for a new one.',
  invalid_link: 'This link is not valid. Check that you copied all of it, or ask for a new one.',
  other_account: 'This link belongs to another account. Sign out, then open it again.',
  rate_limited: 'Too many attempts. Wait a little and try again.'
}

export function errorText (err) {
  if (MESSAGES[err.code]) return MESSAGES[err.code]
  if (err.code === 'domain_not_allowed') return `Accounts here are for some email domains only: ${err.message}.`
  if (err.status === 401 && err.code !== 'session_expired') return MESSAGES.invalid_credentials
  return err.message || 'Something went wrong.'
}

let policyPromise = null
/** The server's registration policy (cached for the page's life; null if unknown). */
export function registrationPolicy () {
  if (!policyPromise) policyPromise = Auth.registration().catch(() => null)
  return policyPromise
}

/** One honest sentence about who may register here, or null for "anyone". */
export function policyText (policy) {
  if (!policy) return null
  switch (policy.mode) {
    case 'closed': return 'Registration is closed on this server: accounts are made by an administrator.'
    case 'invite': return 'This server is invite-only: you can create an account from an invite link.'
    case 'domain': return `Accounts here are for addresses at ${policy.domains.join(', ') || '(no domain)'}.`
    default: return null
  }
}

function mailNote (policy) {
  return policy && policy.mail === 'log'
    ? 'This server has no mail server configured: the link is written to the server\'s log instead of being mailed.'
    : null
}

async function providerButtons (box) {
  try {
    const providers = await Auth.providers()
    if (!Array.isArray(providers) || providers.length === 0) return
    box.appendChild(h('div.divider', 'or'))
    // Come back to the invite being accepted, if any (the server hands `next` back in #/oauth?…).
    const invite = sessionStorage.getItem(PENDING_INVITE)
    const signup = sessionStorage.getItem(PENDING_SIGNUP)
    const nextRoute = invite ? `/invite/${invite}` : (signup ? `/register?invite=${signup}` : null)
    const next = nextRoute ? `?next=${encodeURIComponent(nextRoute)}` : ''
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
  const registerLine = h('p.small', { testid: 'register-line' })
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
  h('p.small', h('a', { href: '#/forgot-password', testid: 'to-forgot' }, 'Forgot your password?')),
  oauth,
  registerLine)
  root.appendChild(h('main.auth', form))
  providerButtons(oauth)
  registrationPolicy().then((policy) => {
    const text = policyText(policy)
    const invited = sessionStorage.getItem(PENDING_INVITE) || sessionStorage.getItem(PENDING_SIGNUP)
    const canRegister = !policy || policy.mode === 'open' || policy.mode === 'domain' || invited
    registerLine.replaceChildren(...[
      text ? h('span', { testid: 'registration-policy' }, text + ' ') : null,
      canRegister ? h('span', 'No account yet? ', h('a', { href: '#/register', testid: 'to-register' }, 'Create one')) : null
    ].filter(Boolean))
  })
  email.focus()
}

export function registerView (root, params = new URLSearchParams()) {
  if (params.get('invite')) sessionStorage.setItem(PENDING_SIGNUP, params.get('invite'))
  const msg = notice('auth-error')
  const name = h('input', { name: 'name', autocomplete: 'name', required: true, testid: 'name' })
  const email = h('input', { type: 'email', name: 'email', autocomplete: 'username', required: true, testid: 'email' })
  const password = h('input', { type: 'password', name: 'password', autocomplete: 'new-password', required: true, minlength: 8, testid: 'password' })
  const submit = h('button', { type: 'submit', testid: 'register-submit' }, 'Create account')
  const oauth = h('div.oauth-list')
  const policyLine = h('div.notice', { testid: 'registration-policy', hidden: true })
  const invite = () => sessionStorage.getItem(PENDING_SIGNUP) || sessionStorage.getItem(PENDING_INVITE)
  const form = h('form.card', {
    on: {
      submit: async (ev) => {
        ev.preventDefault()
        submit.disabled = true
        msg.clear()
        try {
          const body = await Auth.register(email.value.trim(), password.value, name.value.trim(), invite())
          if (body && body.access_token) {
            afterSignIn()
          } else {
            const policy = await registrationPolicy()
            root.replaceChildren(h('main.auth', h('div.card', { testid: 'check-mail' },
              h('h1', 'Check your mail'),
              h('p', `We sent a link to ${email.value.trim()}. Open it to confirm your address, then sign in.`),
              mailNote(policy) ? h('p.small.muted', mailNote(policy)) : null,
              h('a', { href: '#/login' }, 'Back to sign in'))))
          }
        } catch (err) {
          msg.show(errorText(err), 'error')
        } finally {
          submit.disabled = false
        }
      }
    }
  },
  h('h1', 'Create your CodeSync account'),
  policyLine,
  msg.el,
  h('label', 'Name', name),
  h('label', 'Email', email),
  h('label', 'Password (8 characters or more)', password),
  submit,
  oauth,
  h('p.small', 'Already registered? ', h('a', { href: '#/login', testid: 'to-login' }, 'Sign in')))
  root.appendChild(h('main.auth', form))
  providerButtons(oauth)
  registrationPolicy().then((policy) => {
    let text = policyText(policy)
    if (text && invite()) text += ' Your invitation lets you in.'
    if (text) {
      policyLine.textContent = text
      policyLine.className = `notice ${invite() || (policy && policy.mode === 'domain') ? 'info' : 'warn'}`
      policyLine.hidden = false
    }
    if (policy && policy.mode === 'closed' && !sessionStorage.getItem(PENDING_SIGNUP)) submit.disabled = true
  })
  name.focus()
}

/** `#/forgot-password`: the same answer whatever the address. */
export function forgotView (root) {
  const msg = notice('forgot-message')
  const email = h('input', { type: 'email', name: 'email', autocomplete: 'username', required: true, testid: 'email' })
  const submit = h('button', { type: 'submit', testid: 'forgot-submit' }, 'Send me a link')
  const form = h('form.card', {
    on: {
      submit: async (ev) => {
        ev.preventDefault()
        submit.disabled = true
        msg.clear()
        try {
          await Auth.requestReset(email.value.trim())
          const note = mailNote(await registrationPolicy())
          msg.show('If this address has an account, a link to choose a new password is on its way. It works once and for a limited time.' +
            (note ? ' ' + note : ''), 'ok')
        } catch (err) {
          msg.show(errorText(err), 'error')
        } finally {
          submit.disabled = false
        }
      }
    }
  },
  h('h1', 'Forgot your password?'),
  h('p.small.muted', 'Type the address you sign in with; we will mail you a link to choose a new password.'),
  msg.el,
  h('label', 'Email', email),
  submit,
  h('p.small', h('a', { href: '#/login' }, 'Back to sign in')))
  root.appendChild(h('main.auth', form))
  email.focus()
}

/** `#/reset-password/<token>` from the mail. */
export function resetView (root, token) {
  const msg = notice('reset-error')
  const password = h('input', { type: 'password', name: 'password', autocomplete: 'new-password', required: true, minlength: 8, testid: 'password' })
  const again = h('input', { type: 'password', name: 'password2', autocomplete: 'new-password', required: true, minlength: 8, testid: 'password2' })
  const submit = h('button', { type: 'submit', testid: 'reset-submit' }, 'Set the new password')
  history.replaceState(null, '', '#/reset-password') // the token stays out of the history
  const form = h('form.card', {
    on: {
      submit: async (ev) => {
        ev.preventDefault()
        msg.clear()
        if (password.value !== again.value) return msg.show('The two passwords differ.', 'error')
        submit.disabled = true
        try {
          await Auth.confirmReset(token, password.value)
          sessionStorage.setItem('codesync.flash', 'Your password is changed, and every other session was signed out.')
          afterSignIn()
        } catch (err) {
          msg.show(errorText(err), 'error')
          submit.disabled = false
        }
      }
    }
  },
  h('h1', 'Choose a new password'),
  msg.el,
  h('label', 'New password (8 characters or more)', password),
  h('label', 'The same again', again),
  submit,
  h('p.small', h('a', { href: '#/forgot-password' }, 'Ask for a new link')))
  root.appendChild(h('main.auth', form))
  password.focus()
}

/** `#/verify-email/<token>` from the mail: confirms an address (or a new one). */
export async function verifyView (root, token) {
  history.replaceState(null, '', '#/verify-email')
  const box = h('div.card', { testid: 'verify-result' }, h('h1', 'Confirming your address…'))
  root.appendChild(h('main.auth', box))
  try {
    const body = await Auth.verifyEmail(token)
    box.replaceChildren(
      h('h1', 'Address confirmed'),
      h('div.notice.ok', { testid: 'verify-ok' }, `${body.user.email} is confirmed.`),
      h('a.button', { href: session.signedIn ? '#/rooms' : '#/login', testid: 'verify-continue' }, session.signedIn ? 'Go to your rooms' : 'Sign in'))
  } catch (err) {
    box.replaceChildren(
      h('h1', 'This link did not work'),
      h('div.notice.error', { testid: 'verify-error' }, errorText(err)),
      h('a', { href: session.signedIn ? '#/account' : '#/login' }, session.signedIn ? 'Your account' : 'Sign in'))
  }
}

/** `#/oauth?access_token=..&refresh_token=..&expires_in=..` or `#/oauth?error=..&message=..`. */
export async function oauthView (root, params) {
  if (params.get('error')) {
    loginView(root, { message: `Sign-in with the provider failed: ${MESSAGES[params.get('error')] || params.get('message') || params.get('error')}` })
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
