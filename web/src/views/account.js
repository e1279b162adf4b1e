// `#/account`: profile (name, colour), email address (status, change), password, sign-in
// providers (link, unlink), signing out everywhere, deleting the account.
import { Account, Auth, session } from '../api.js'
import { colorFor, h, navigate, notice } from '../ui.js'
import { errorText } from './auth.js'
import { header, verifyBanner } from './rooms.js'

const ACCOUNT_MESSAGES = {
  wrong_password: 'The current password is not correct.',
  last_sign_in_method: 'This is your last way to sign in. Set a password ("Forgot your password?" on the sign-in page) or link another provider first.',
  identity_in_use: 'That provider account already signs in to another CodeSync account.',
  rooms_need_decision: 'Decide for each room you alone own: give it to a member, or delete it.',
  confirmation_required: 'Type your email address to confirm.',
  same_email: 'That is already your address.'
}

function text (err) {
  return ACCOUNT_MESSAGES[err.code] || errorText(err)
}

function section (title, testid, ...children) {
  return h('section.card.wide', { testid }, h('h2', title), ...children)
}

/** A form whose submit runs `action` with a busy button and a message area. */
function form (testid, fields, label, action) {
  const msg = notice(`${testid}-message`)
  const submit = h('button', { type: 'submit', testid: `${testid}-submit` }, label)
  const el = h('form.stack', {
    testid,
    on: {
      submit: async (ev) => {
        ev.preventDefault()
        submit.disabled = true
        msg.clear()
        try {
          const ok = await action()
          if (ok) msg.show(ok, 'ok')
        } catch (err) {
          msg.show(text(err), 'error')
        } finally {
          submit.disabled = false
        }
      }
    }
  }, ...fields, submit, msg.el)
  return { el, msg }
}

export async function accountView (root, params = new URLSearchParams()) {
  const top = notice('account-notice')
  const main = h('main.rooms-page.account', h('h1', 'Your account'), top.el)
  root.appendChild(h('div.page', header(), main))
  if (params.get('linked')) top.show(`Linked: you can now sign in with ${params.get('linked')}.`, 'ok')
  if (params.get('error')) top.show(`Linking failed: ${ACCOUNT_MESSAGES[params.get('error')] || params.get('message') || params.get('error')}`, 'error')
  if (params.get('linked') || params.get('error')) history.replaceState(null, '', '#/account')
  let me
  try {
    me = await Account.me()
  } catch (err) {
    top.show(text(err), 'error')
    return
  }

  // -- profile
  const name = h('input', { name: 'name', value: me.name, required: true, maxlength: 200, testid: 'profile-name' })
  const color = h('input', { type: 'color', name: 'color', value: me.color || '#2f6fed', testid: 'profile-color' })
  const swatch = h('span.dot.big', { testid: 'profile-swatch', style: `background:${me.color || colorFor(me.id).color}` })
  color.addEventListener('input', () => { swatch.style.background = color.value })
  const useDefault = h('button.link', {
    type: 'button',
    testid: 'profile-color-default',
    on: { click: async () => { const u = await Account.update({ color: null }); swatch.style.background = colorFor(u.id).color; profile.msg.show('Your colour is the automatic one again.', 'ok') } }
  }, 'automatic colour')
  const profile = form('profile', [
    h('label', 'Display name (what others see in rooms)', name),
    h('label', 'Cursor and name colour', h('span.row', color, swatch, useDefault))
  ], 'Save profile', async () => {
    const u = await Account.update({ name: name.value.trim(), color: color.value })
    document.querySelectorAll('[data-testid=me]').forEach(el => { el.textContent = u.name })
    return 'Saved. Rooms you open from now on show the new name and colour.'
  })
  main.appendChild(section('Profile', 'profile-section', profile.el))

  // -- email
  const newEmail = h('input', { type: 'email', name: 'email', required: true, testid: 'email-new' })
  const emailPassword = h('input', { type: 'password', name: 'password', autocomplete: 'current-password', testid: 'email-password' })
  const emailForm = form('email-change', [
    h('label', 'New address', newEmail),
    me.has_password ? h('label', 'Your current password', emailPassword) : null
  ], 'Change address', async () => {
    await Account.changeEmail(newEmail.value.trim(), me.has_password ? emailPassword.value : undefined)
    emailPassword.value = ''
    return `We mailed a link to ${newEmail.value.trim()}. Your address changes when you open it; until then it stays ${me.email}.`
  })
  main.appendChild(section('Email address', 'email-section',
    h('p', { testid: 'email-status' }, me.email, ' ',
      me.email_verified ? h('span.tag.ok', 'confirmed') : h('span.tag.warn', 'not confirmed')),
    verifyBanner(me),
    emailForm.el))

  // -- password
  if (me.has_password) {
    const current = h('input', { type: 'password', name: 'current', autocomplete: 'current-password', required: true, testid: 'password-current' })
    const next = h('input', { type: 'password', name: 'new', autocomplete: 'new-password', required: true, minlength: 8, testid: 'password-new' })
    const pw = form('password-change', [
      h('label', 'Current password', current),
      h('label', 'New password (8 characters or more)', next)
    ], 'Change password', async () => {
      await Account.changePassword(current.value, next.value)
      current.value = ''
      next.value = ''
      return 'Password changed. Every other session was signed out; this one stays.'
    })
    main.appendChild(section('Password', 'password-section', pw.el))
  } else {
    main.appendChild(section('Password', 'password-section',
      h('p.small', 'You sign in with a provider. To add a password, use "Forgot your password?" on the sign-in page: we mail you a link.')))
  }

  // -- providers
  const providers = h('div', { testid: 'providers' }, h('p.muted', 'Loading…'))
  main.appendChild(section('Sign-in providers', 'providers-section', providers))
  const providerMsg = notice('providers-message')
  async function loadProviders () {
    const data = await Account.identities()
    const rows = data.identities.map(i => h('li', { testid: 'identity' },
      h('span', { testid: 'identity-label' }, i.label), h('span.muted.small', i.email || ''),
      h('span.spacer'),
      h('button.link', {
        testid: 'identity-unlink',
        on: {
          click: async () => {
            providerMsg.clear()
            try {
              await Account.unlink(i.id)
              providerMsg.show(`${i.label} no longer signs you in.`, 'ok')
              loadProviders()
            } catch (err) {
              providerMsg.show(text(err), 'error')
            }
          }
        }
      }, 'Unlink')))
    const links = data.available.map(p => h('button', {
      testid: `link-${p.name}`,
      on: {
        click: async () => {
          try {
            const { url } = await Account.link(p.name)
            location.assign(url)
          } catch (err) {
            providerMsg.show(text(err), 'error')
          }
        }
      }
    }, `Link ${p.label}`))
    providers.replaceChildren(...[
      rows.length ? h('ul.plain', ...rows) : h('p.muted', 'No provider linked.'),
      links.length ? h('div.row', ...links) : null,
      providerMsg.el].filter(Boolean))
  }
  loadProviders().catch(err => providers.replaceChildren(h('p.notice.error', text(err))))

  // -- sessions
  main.appendChild(section('Sessions', 'sessions-section',
    h('p.small', 'Signed in somewhere you should not be? This signs out every browser and device, this one included.'),
    h('button', { testid: 'logout-all', on: { click: async () => { await Auth.logoutEverywhere(); navigate('#/login') } } }, 'Sign out everywhere')))

  // -- deletion
  const del = h('div', { testid: 'delete-plan' })
  main.appendChild(section('Delete your account', 'delete-section',
    h('p.small', 'Your rooms: for each room you alone own, choose who takes it over or delete it. Text you wrote in rooms that stay is kept, shown as written by "deleted user".'),
    del))
  const plan = await Account.deletionPlan()
  const choices = new Map()
  const rows = plan.rooms.filter(r => r.needs_decision).map((r) => {
    const select = h('select', { testid: 'delete-room-choice', 'data-room': r.id },
      r.members.map(m => h('option', { value: m.user_id }, `give it to ${m.name} (${m.role})`)),
      h('option', { value: 'delete' }, 'delete the room'))
    choices.set(r.id, select)
    return h('li', h('span', r.name), select)
  })
  const confirmField = me.has_password
    ? h('input', { type: 'password', autocomplete: 'current-password', testid: 'delete-password' })
    : h('input', { type: 'email', testid: 'delete-confirm-email' })
  const deleting = form('delete-account', [
    rows.length ? h('ul.plain', ...rows) : h('p.small.muted', 'You own no room alone.'),
    h('label', me.has_password ? 'Your password' : 'Type your email address to confirm', confirmField)
  ], 'Delete my account', async () => {
    const body = { rooms: Object.fromEntries([...choices].map(([id, s]) => [id, s.value])) }
    if (me.has_password) body.password = confirmField.value
    else body.confirm_email = confirmField.value
    await Account.remove(body)
    session.clear('Your account has been deleted.') // main.js shows the sign-in page with this
    return null
  })
  deleting.el.querySelector('button[type=submit]').classList.add('danger')
  del.appendChild(deleting.el)
}
