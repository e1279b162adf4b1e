// `#/admin` (server administrators): live numbers, users (search, disable, re-enable, delete),
// rooms and their sizes, signup invitations.
import { Admin, session } from '../api.js'
import { h, notice } from '../ui.js'
import { errorText } from './auth.js'
import { header } from './rooms.js'

function bytes (n) {
  if (n < 1024) return `${n} B`
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`
  return `${(n / 1024 / 1024).toFixed(1)} MiB`
}

function stat (label, value, testid, note) {
  return h('div.stat', { testid },
    h('div.value', value === null || value === undefined ? '—' : String(value)),
    h('div.label', label),
    note ? h('div.note.small.muted', note) : null)
}

const MODES = {
  open: 'open: anyone may register',
  invite: 'invite-only: room or administrator invitations',
  domain: 'email domains only',
  closed: 'closed: administrators make accounts'
}

export async function adminView (root) {
  const top = notice('admin-notice')
  const main = h('main.rooms-page.admin', h('h1', 'Administration'), top.el)
  root.appendChild(h('div.page', header(), main))
  if (!session.user || !session.user.is_admin) {
    top.show('This page is for server administrators.', 'error')
    return
  }

  // -- live numbers
  const stats = h('div.stats', { testid: 'admin-stats' }, h('p.muted', 'Loading…'))
  const statsNote = h('p.small.muted', { testid: 'admin-stats-source' })
  main.appendChild(h('section.card.wide', h('h2', 'Now'), stats, statsNote))
  async function loadStats () {
    const s = await Admin.stats()
    const r = s.runner
    stats.replaceChildren(
      stat('people connected', s.signaling.connected_users, 'stat-users'),
      stat('active rooms', s.signaling.active_rooms, 'stat-rooms'),
      stat('runs in progress', r.runs_in_progress, 'stat-runs', r.configured ? (r.unreachable ? `${r.unreachable} runner endpoint(s) unreachable` : `${r.runners} runner(s)`) : 'not observed'),
      stat('runs waiting', r.runs_waiting, 'stat-waiting'),
      stat('service peers connected', s.signaling.connected_services, 'stat-services'))
    statsNote.textContent = `Signaling numbers from ${s.signaling.source}. ` +
      (r.configured ? `Runs from ${r.sources.length} /metrics endpoint(s).` : r.note + '.') +
      ` Registration: ${MODES[s.registration.mode] || s.registration.mode}${s.registration.domains.length ? ` (${s.registration.domains.join(', ')})` : ''}.`
  }

  // -- users
  const userMsg = notice('admin-users-message')
  const search = h('input', { type: 'search', placeholder: 'Search name or email', testid: 'admin-user-search' })
  const users = h('tbody', { testid: 'admin-users' })
  const userCount = h('span.small.muted')
  async function loadUsers () {
    const data = await Admin.users(search.value.trim())
    userCount.textContent = `${data.users.length} of ${data.total}`
    users.replaceChildren(...data.users.map(u => h('tr', { testid: 'admin-user', 'data-email': u.email },
      h('td', h('div', u.name, u.is_admin ? h('span.tag', 'admin') : null), h('div.small.muted', u.email)),
      h('td', u.email_verified ? 'yes' : h('span.warn-text', 'no')),
      h('td', String(u.rooms)),
      h('td.small', (u.providers || []).join(', ') || (u.has_password ? 'password' : '')),
      h('td', { testid: 'admin-user-state' }, u.disabled ? h('span.bad-text', 'disabled') : 'active'),
      h('td.actions',
        u.id === session.user.id ? h('span.small.muted', 'you') : [
          h('button.link', {
            testid: u.disabled ? 'admin-enable' : 'admin-disable',
            on: {
              click: async () => {
                try {
                  await Admin.setUser(u.id, { disabled: !u.disabled })
                  userMsg.show(u.disabled ? `${u.email} can sign in again.` : `${u.email} is disabled: signed out everywhere.`, 'ok')
                  loadUsers()
                  setTimeout(() => loadStats().catch(() => {}), 500) // its sockets close within moments
                } catch (err) { userMsg.show(errorText(err), 'error') }
              }
            }
          }, u.disabled ? 'Re-enable' : 'Disable'),
          h('button.link.danger-text', {
            testid: 'admin-delete',
            on: {
              click: async () => {
                const plan = await Admin.deletionPlan(u.id)
                const alone = plan.rooms.filter(r => r.needs_decision)
                const what = alone.length
                  ? `${alone.length} room(s) only they own will go to their best-placed member (rooms with nobody else are deleted).`
                  : 'They own no room alone.'
                if (!confirm(`Delete ${u.email}? ${what} This cannot be undone.`)) return
                try {
                  const res = await Admin.removeUser(u.id, { default: 'transfer' })
                  userMsg.show(`${u.email} deleted (${res.transferred_rooms.length} room(s) transferred, ${res.deleted_rooms.length} deleted).`, 'ok')
                  loadUsers()
                  loadRooms()
                } catch (err) { userMsg.show(errorText(err), 'error') }
              }
            }
          }, 'Delete')
        ]))))
  }
  search.addEventListener('input', () => { clearTimeout(search._t); search._t = setTimeout(() => loadUsers().catch(e => userMsg.show(errorText(e), 'error')), 250) })
  main.appendChild(h('section.card.wide', { testid: 'admin-users-section' },
    h('h2', 'Users ', userCount), search, userMsg.el,
    h('div.table-wrap', h('table.grid',
      h('thead', h('tr', h('th', 'user'), h('th', 'confirmed'), h('th', 'rooms'), h('th', 'sign-in'), h('th', 'state'), h('th', ''))),
      users))))

  // -- rooms
  const rooms = h('tbody', { testid: 'admin-rooms' })
  const roomCount = h('span.small.muted')
  async function loadRooms () {
    const data = await Admin.rooms()
    roomCount.textContent = `${data.rooms.length} of ${data.total}`
    rooms.replaceChildren(...data.rooms.map(r => h('tr', { testid: 'admin-room' },
      h('td', h('div', r.name), h('div.small.muted', r.owner_name ? `owner: ${r.owner_name}` : '')),
      h('td', String(r.members)),
      h('td', { testid: 'admin-room-size' }, bytes(r.stored_bytes), h('div.small.muted', `${r.stored_updates} updates`)),
      h('td', String(r.connected_now)))))
  }
  main.appendChild(h('section.card.wide', { testid: 'admin-rooms-section' },
    h('h2', 'Rooms ', roomCount),
    h('div.table-wrap', h('table.grid',
      h('thead', h('tr', h('th', 'room'), h('th', 'members'), h('th', 'stored'), h('th', 'connected'))),
      rooms))))

  // -- signup invitations
  const inviteEmail = h('input', { type: 'email', placeholder: 'email (optional: binds and mails it)', testid: 'signup-invite-email' })
  const inviteOut = h('input.link', { readonly: true, testid: 'signup-invite-url', hidden: true })
  const inviteMsg = notice('signup-invite-message')
  main.appendChild(h('section.card.wide', { testid: 'admin-invites-section' },
    h('h2', 'Invite someone to register'),
    h('p.small.muted', 'Works whatever the registration mode; single use.'),
    h('form.create', {
      on: {
        submit: async (ev) => {
          ev.preventDefault()
          inviteMsg.clear()
          try {
            const inv = await Admin.createSignupInvite(inviteEmail.value.trim())
            inviteOut.value = inv.url
            inviteOut.hidden = false
            inviteMsg.show(inv.email ? `Mailed to ${inv.email}; the link is also here.` : 'Copy the link and send it.', 'ok')
          } catch (err) { inviteMsg.show(errorText(err), 'error') }
        }
      }
    }, inviteEmail, h('button', { type: 'submit', testid: 'signup-invite-create' }, 'Create invitation')),
    inviteOut, inviteMsg.el))

  try {
    await Promise.all([loadStats(), loadUsers(), loadRooms()])
  } catch (err) {
    top.show(errorText(err), 'error')
  }
  const timer = setInterval(() => loadStats().catch(() => {}), 10_000)
  return () => clearInterval(timer)
}
