// Room list, create room, accept an invite.
import { Account, Auth, Rooms, session } from '../api.js'
import { LANGUAGES } from '../doc.js'
import { h, navigate, notice } from '../ui.js'
import { PENDING_INVITE } from './auth.js'

export function header (extra = null) {
  const user = session.user
  return h('header.top',
    h('a.brand', { href: '#/rooms' }, 'CodeSync'),
    extra,
    h('span.spacer'),
    user && user.is_admin ? h('a.small', { href: '#/admin', testid: 'to-admin' }, 'Admin') : null,
    user ? h('a.who', { href: '#/account', testid: 'me', title: 'Your account' }, user.name || user.email) : null,
    h('button.link', { testid: 'logout', on: { click: async () => { await Auth.logout(); navigate('#/login') } } }, 'Sign out'))
}

/** A one-time message left by the page before (e.g. "your password is changed"). */
export function flash () {
  const text = sessionStorage.getItem('codesync.flash')
  if (!text) return null
  sessionStorage.removeItem('codesync.flash')
  return h('div.notice.ok', { testid: 'flash' }, text)
}

/** "Confirm your address" with a button to send the link again; null when confirmed. */
export function verifyBanner (user) {
  if (!user || user.email_verified !== false) return null
  const msg = notice('verify-banner-message')
  const again = h('button.link', {
    testid: 'resend-verification',
    on: {
      click: async () => {
        again.disabled = true
        try {
          await Auth.resendVerification()
          msg.show(`A new link is on its way to ${user.email}.`, 'ok')
        } catch (err) {
          msg.show(err.message, 'error')
          again.disabled = false
        }
      }
    }
  }, 'Send the link again')
  return h('div.notice.warn', { testid: 'verify-banner' },
    `Confirm your email address: open the link we mailed to ${user.email}. Until then you can edit, but not invite people. `,
    again, msg.el)
}

export function roomsView (root) {
  const msg = notice('rooms-error')
  const list = h('ul.rooms', { testid: 'room-list' }, h('li.muted', 'Loading rooms…'))
  const name = h('input', { name: 'room-name', placeholder: 'Room name', required: true, maxlength: 200, testid: 'room-name' })
  const language = h('select', { name: 'language', testid: 'room-language' }, LANGUAGES.map(l => h('option', { value: l.id }, l.label)))
  const create = h('button', { type: 'submit', testid: 'create-room' }, 'Create room')
  const form = h('form.create', {
    on: {
      submit: async (ev) => {
        ev.preventDefault()
        create.disabled = true
        msg.clear()
        try {
          const room = await Rooms.create(name.value.trim(), language.value)
          navigate(`#/room/${room.id}`)
        } catch (err) {
          msg.show(`Could not create the room: ${err.message}`, 'error')
        } finally {
          create.disabled = false
        }
      }
    }
  }, name, language, create)
  const banner = h('div', { testid: 'banner-slot' }, verifyBanner(session.user))
  root.appendChild(h('div.page', header(), h('main.rooms-page', flash(), banner, h('h1', 'Your rooms'), msg.el, form, list)))
  Account.me().then((me) => banner.replaceChildren(verifyBanner(me) || '')).catch(() => {})

  Rooms.list().then((rooms) => {
    const items = Array.isArray(rooms) ? rooms : (rooms && rooms.rooms) || []
    list.replaceChildren(...(items.length
      ? items.map(r => h('li', h('a', { href: `#/room/${r.id}`, testid: 'room-link' }, r.name),
        h('span.tag', (LANGUAGES.find(l => l.id === r.language) || { label: r.language || '' }).label),
        h('span.tag.role', r.role || '')))
      : [h('li.muted', 'No rooms yet — create one, or open an invite link.')]))
  }).catch((err) => {
    list.replaceChildren()
    msg.show(`Could not load your rooms: ${err.message}`, 'error')
  })
  name.focus()
}

export async function inviteView (root, token) {
  if (!session.signedIn) {
    sessionStorage.setItem(PENDING_INVITE, token)
    navigate('#/login?invited=1')
    return
  }
  const msg = notice('invite-error')
  root.appendChild(h('div.page', header(), h('main.rooms-page', h('h1', 'Joining the room…'), msg.el)))
  try {
    const body = await Rooms.accept(token)
    const roomId = body && (body.room_id || body.id || (body.room && body.room.id))
    navigate(roomId ? `#/room/${roomId}` : '#/rooms')
  } catch (err) {
    const text = err.status === 404 || err.status === 400 || err.status === 410 || err.status === 401
      ? 'This invite link is invalid or has expired. Ask the room owner for a new one.'
      : `Could not accept the invite: ${err.message}`
    msg.show(text, 'error')
  }
}
