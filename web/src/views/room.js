// The editor page: mounts the workspace (workspacepane.js: file tree, tabs and editor, language
// picker), the run panel with its console (runpanel.js, console.js) and the status line
// (statusbar.js); presence and sharing are here. The local user's role is live: presence and the
// server's stamps can demote (read-only at once, Run and file changes gone), promote, or remove
// (links closed) them while the page is open.
import * as Y from 'yjs'
import { Awareness } from 'y-protocols/awareness'
import { IndexeddbPersistence } from 'y-indexeddb'
import { api, Rooms, session } from '../api.js'
import { FINAL_STATUSES } from '../doc.js'
import * as ws from '../workspace.js'
import { CodeSyncProvider } from '../provider.js'
import { mayWriteLocal } from '../rights.js'
import { colorFor, copyText, h, notice } from '../ui.js'
import { header } from './rooms.js'
import { createHistoryPanel } from './history.js'
import { createRunPanel } from './runpanel.js'
import { createStatusBar } from './statusbar.js'
import { createWorkspace } from './workspacepane.js'

/**
 * Links to people this browser keeps at most (service links do not count): 30, or what
 * localStorage `codesync.maxConns` says (1-100) — a knob for tests and for weak devices.
 */
function linkLimit () {
  const n = Number(localStorage.getItem('codesync.maxConns'))
  return Number.isInteger(n) && n >= 1 && n <= 100 ? n : 30
}

/** `alive()` is false once the user has navigated away (or been signed out) during an await. */
export async function roomView (root, roomId, alive = () => true) {
  const msg = notice('room-error')
  root.appendChild(h('div.page', header(), h('main.rooms-page', h('p.muted', 'Opening room…'), msg.el)))
  let room
  let loadError = null
  let offline = false
  const cacheKey = `codesync.room.${roomId}`
  try {
    room = await Rooms.get(roomId)
    localStorage.setItem(cacheKey, JSON.stringify(room))
  } catch (err) {
    loadError = err
    const cached = err.status === 0 ? localStorage.getItem(cacheKey) : null
    if (cached) {
      // Server unreachable: open the room from what this browser remembers (IndexedDB has the text).
      room = JSON.parse(cached)
      offline = true
    } else if (err.status === 403 || err.status === 404) {
      localStorage.removeItem(cacheKey)
    }
  }
  if (!alive()) return () => {}
  if (!room) {
    const err = loadError || { status: 0, message: 'unknown error' }
    root.replaceChildren(h('div.page', header(), h('main.rooms-page', h('h1', 'Room unavailable'),
      h('div.notice.error', { testid: 'room-error' }, err.status === 403 || err.status === 404
        ? "You don't have access to this room, or it no longer exists. Ask its owner for an invite link."
        : `Could not open the room: ${err.message}`),
      h('p', h('a', { href: '#/rooms' }, 'Back to your rooms')))))
    return () => {}
  }
  let iceServers = []
  try {
    const got = await api('GET', '/api/ice-servers')
    iceServers = Array.isArray(got) ? got : (got && got.ice_servers) || (got && got.iceServers) || []
  } catch (e) {}
  if (!alive()) return () => {}

  let role = room.role || 'viewer'
  const me = session.user || {}

  const doc = new Y.Doc()
  const runsDoc = new Y.Doc() // the named document `runs` (type 102): written by the runner only
  const meta = doc.getMap('meta')
  const idb = new IndexeddbPersistence(`codesync-room-${roomId}`, doc)
  const awareness = new Awareness(doc)
  awareness.setLocalStateField('user', { id: me.id, name: me.name || me.email || 'Someone', ...colorFor(me.id || me.email || doc.clientID) })

  const provider = new CodeSyncProvider(doc, awareness, {
    roomId,
    iceServers,
    maxConns: linkLimit(),
    role,
    userId: me.id,
    namedDocs: { runs: runsDoc },
    getToken: ({ force }) => session.accessToken({ force })
  })

  // ------------------------------------------------------------------ layout
  const title = h('span.room-title', { testid: 'room-title' }, meta.get('title') || room.name)
  const roleTag = h('span.tag.role', { testid: 'my-role' })
  const people = h('ul.people', { testid: 'presence' })
  const sharePanel = h('section.panel')
  const workspace = createWorkspace({
    doc, awareness, provider, idb, room, roomId, role: () => role, onRun: () => runPanel.requestRun(), onChange: () => renderPeople()
  })
  const runPanel = createRunPanel({ provider, doc, runsDoc, target: workspace.target, canRun: mayWriteLocal(role) })
  const statusBar = createStatusBar({ provider, doc, awareness, offline })
  const historyPanel = createHistoryPanel({ provider, doc, getRole: () => role, currentFile: () => workspace.active() })
  const side = h('aside.side',
    h('section.panel', h('h2', 'People'), people),
    sharePanel,
    runPanel.panel)
  const page = h('div.page.room',
    header([title, roleTag]),
    h('div.toolbar', workspace.langSelect, runPanel.controls, workspace.runTarget, historyPanel.button),
    statusBar.message,
    h('div.room-body', h('aside.files-side', workspace.filesEl), h('section.editor-pane', workspace.editorEl, historyPanel.overlay), side),
    statusBar.footer)
  root.replaceChildren(page)

  // ------------------------------------------------------------------ role
  /** Apply the local user's (live) role to the page: editable, file changes, language picker, Run, console. */
  const applyRole = () => {
    const canEdit = mayWriteLocal(role)
    roleTag.textContent = role ? role + (canEdit ? '' : ' · read-only') : 'no access · read-only'
    workspace.setCanEdit(canEdit)
    runPanel.setCanRun(canEdit)
  }
  applyRole()
  provider.on('role', (r) => { role = r; applyRole(); historyPanel.setRole(r) })
  const onMeta = () => { title.textContent = meta.get('title') || room.name }
  meta.observe(onMeta)

  // ------------------------------------------------------------------ presence
  let presence = []
  let reloadMembers = null
  let knownUsers = ''
  provider.on('presence', (p) => {
    presence = p
    renderPeople()
    const users = p.map(x => x.user_id).filter(Boolean).sort().join(',')
    if (users !== knownUsers) { knownUsers = users; if (reloadMembers) reloadMembers() }
  })
  provider.on('peers', () => renderPeople())
  awareness.on('change', () => renderPeople())
  function renderPeople () {
    const where = workspace.whereIs() // user id -> path of the file their view is in
    const items = []
    const seen = new Set()
    for (const p of presence) {
      if (!p.user_id) continue
      seen.add(String(p.user_id))
      items.push({ id: p.user_id, name: p.name || 'Someone', role: p.role || '', you: String(p.user_id) === String(me.id) })
    }
    // Peers known only through the data channels (signaling down): from awareness, whose names
    // the provider has already replaced with the server-stamped ones.
    awareness.getStates().forEach((s) => {
      const u = s && s.user
      if (u && u.id !== undefined && u.name && !seen.has(String(u.id)) && !s.service) {
        seen.add(String(u.id))
        items.push({ id: u.id, name: u.name, role: '', you: String(u.id) === String(me.id) })
      }
    })
    people.replaceChildren(...items.map(p => h('li', { testid: 'person' },
      h('span.dot', { style: `background:${colorFor(p.id).color}` }),
      h('span.name', p.name + (p.you ? ' (you)' : '')),
      p.role ? h('span.tag.role', p.role) : null,
      where.has(String(p.id)) ? h('span.muted.where', { testid: 'person-file' }, `in ${where.get(String(p.id))}`) : null)))
  }
  renderPeople()

  const onKey = (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === 'Enter' && !workspace.editorEl.contains(ev.target)) {
      ev.preventDefault()
      runPanel.requestRun()
    }
  }
  window.addEventListener('keydown', onKey)

  // ------------------------------------------------------------------ sharing (owner)
  if (role === 'owner') reloadMembers = renderShare(sharePanel, roomId)
  else sharePanel.remove()

  // Exposed for tests and debugging: the documents and the provider of the open room.
  window.codesync = {
    doc, runsDoc, provider, awareness, room, idb, FINAL_STATUSES, ws, history: historyPanel, tabs: workspace.tabs, fileTree: workspace.fileTree,
    get editor () { return workspace.tabs.editor() },
    tree: () => Array.from(workspace.tree().entries.values()).map(e => ({ id: e.id, path: e.path, kind: e.kind, language: e.language }))
  }

  return () => {
    window.removeEventListener('keydown', onKey)
    meta.unobserve(onMeta)
    workspace.destroy()
    runPanel.destroy()
    historyPanel.destroy()
    statusBar.destroy()
    provider.destroy()
    idb.destroy()
    doc.destroy()
    runsDoc.destroy()
    if (window.codesync && window.codesync.doc === doc) delete window.codesync
  }
}

function renderShare (panel, roomId) {
  const msg = notice('share-message')
  const role = h('select', { testid: 'invite-role' }, h('option', { value: 'editor' }, 'can edit'), h('option', { value: 'viewer' }, 'can view'))
  const link = h('input.link', { readonly: true, testid: 'invite-link', placeholder: 'Invite link appears here' })
  const make = h('button', { testid: 'make-invite' }, 'Copy invite link')
  const members = h('ul.members', { testid: 'members' })
  make.addEventListener('click', async () => {
    msg.clear()
    try {
      const body = await Rooms.invite(roomId, role.value)
      const token = body.token || body.invite_token
      const url = token ? `${location.origin}${location.pathname}#/invite/${token}` : (body.url || body.link || body.invite_url)
      link.value = url
      const copied = await copyText(url, link)
      msg.show(copied ? 'Invite link copied.' : 'Copy the link above and send it.', 'ok')
    } catch (err) {
      msg.show(`Could not create an invite: ${err.message}`, 'error')
    }
  })
  async function loadMembers () {
    try {
      const got = await Rooms.members(roomId)
      const list = Array.isArray(got) ? got : (got && got.members) || []
      members.replaceChildren(...list.map((m) => {
        const uid = m.user_id || m.id || (m.user && m.user.id)
        const name = m.name || (m.user && m.user.name) || m.email || uid
        if (m.role === 'owner') return h('li', { testid: 'member' }, h('span.name', name), h('span.tag.role', 'owner'))
        const sel = h('select', { testid: 'member-role' }, ['editor', 'viewer'].map(r => h('option', { value: r }, r)))
        sel.value = m.role
        sel.addEventListener('change', async () => {
          try { await Rooms.setRole(roomId, uid, sel.value); msg.show(`${name} is now ${sel.value === 'editor' ? 'an editor' : 'a viewer'}.`, 'ok') } catch (err) { msg.show(`Could not change the role: ${err.message}`, 'error'); loadMembers() }
        })
        const remove = h('button.link', { testid: 'member-remove' }, 'remove')
        remove.addEventListener('click', async () => {
          try { await Rooms.removeMember(roomId, uid); loadMembers() } catch (err) { msg.show(`Could not remove ${name}: ${err.message}`, 'error') }
        })
        return h('li', { testid: 'member' }, h('span.name', name), sel, remove)
      }))
    } catch (err) {
      members.replaceChildren(h('li.muted', `Members unavailable: ${err.message}`))
    }
  }
  panel.replaceChildren(h('h2', 'Share'), msg.el, h('div.share-row', role, make), link,
    h('h3', h('span', 'Members '), h('button.link', { testid: 'reload-members', on: { click: loadMembers } }, 'refresh')), members)
  loadMembers()
  return loadMembers
}
