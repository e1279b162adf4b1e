// The editor page: mounts the file tree (filetree.js), the tabs and editor (tabs.js), the run
// panel with its console (runpanel.js, console.js) and the status line (statusbar.js); presence and
// sharing are here. The local user's role is live: presence and the server's stamps can demote
// (read-only at once, Run and file changes gone), promote, or remove (links closed) them while
// the page is open.
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
import { createFileTree } from './filetree.js'
import { createRunPanel } from './runpanel.js'
import { createStatusBar } from './statusbar.js'
import { createTabs } from './tabs.js'

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
  // The resolved tree, read again only after the tree changed: presence and cursor moves (every
  // remote keystroke) re-render the people list and the toolbar, which only look it up.
  let treeCache = null
  const dropTree = () => { treeCache = null }
  doc.getMap('files').observeDeep(dropTree)
  const currentTree = () => treeCache || (treeCache = ws.readTree(doc))
  const idb = new IndexeddbPersistence(`codesync-room-${roomId}`, doc)
  const awareness = new Awareness(doc)
  awareness.setLocalStateField('user', { id: me.id, name: me.name || me.email || 'Someone', ...colorFor(me.id || me.email || doc.clientID) })

  const provider = new CodeSyncProvider(doc, awareness, {
    roomId,
    iceServers,
    role,
    userId: me.id,
    namedDocs: { runs: runsDoc },
    getToken: ({ force }) => session.accessToken({ force })
  })

  // ------------------------------------------------------------------ layout
  const roomLanguage = () => meta.get('language') || room.language || 'python'
  const langSelect = h('select', { testid: 'language', title: "The open file's language (shared with everyone in the room)" })
  const runTarget = h('span.muted.run-target', { testid: 'run-target' })
  const title = h('span.room-title', { testid: 'room-title' }, meta.get('title') || room.name)
  const roleTag = h('span.tag.role', { testid: 'my-role' })
  const people = h('ul.people', { testid: 'presence' })
  const sharePanel = h('section.panel')
  let active = null // the resolved tree entry of the file in view
  const tabs = createTabs({
    doc, awareness, readOnly: !mayWriteLocal(role), onRun: () => runPanel.requestRun(),
    onActive: (entry) => { active = entry; renderToolbar(); renderPeople() }
  })
  const fileTree = createFileTree({
    doc, canEdit: mayWriteLocal(role), onOpen: (id) => tabs.open(id), activeId: () => tabs.activeId(),
    zipName: () => `${(meta.get('title') || room.name || 'project').replace(/[^\w.-]+/g, '_')}.zip`,
    peopleIn
  })
  /** What Run runs: the room's entry file, else the file in view (docs/workspace.md). */
  const target = () => {
    const tree = currentTree()
    const entry = ws.entryFile(doc, tree) || (active && tree.entries.get(active.id))
    if (!entry) return { error: 'Open a file to run it (or set an entry file in the file tree).' }
    if (entry.language === ws.PLAINTEXT) return { error: `${entry.path} is plain text: give it a language's extension or pick its language.` }
    return { language: entry.language, entry: entry.id, entry_path: entry.path }
  }
  const runPanel = createRunPanel({ provider, doc, runsDoc, target, canRun: mayWriteLocal(role) })
  const statusBar = createStatusBar({ provider, doc, awareness, offline })
  const side = h('aside.side',
    h('section.panel', h('h2', 'People'), people),
    sharePanel,
    runPanel.panel)
  const page = h('div.page.room',
    header([title, roleTag]),
    h('div.toolbar', langSelect, runPanel.controls, runTarget),
    statusBar.message,
    h('div.room-body', h('aside.files-side', fileTree.el), h('section.editor-pane', tabs.el), side),
    statusBar.footer)
  root.replaceChildren(page)

  // ------------------------------------------------------------------ files
  /** Apply the local user's (live) role to the page: editable, file changes, language picker, Run, console. */
  const applyRole = () => {
    const canEdit = mayWriteLocal(role)
    roleTag.textContent = role ? role + (canEdit ? '' : ' · read-only') : 'no access · read-only'
    tabs.setReadOnly(!canEdit)
    fileTree.setCanEdit(canEdit)
    runPanel.setCanRun(canEdit)
    renderToolbar()
  }

  /** The language list: what the runner advertises (plus plain text), else every language we know. */
  function languageChoices () {
    const offered = new Set(provider.serviceStates('runner').flatMap(s => Array.isArray(s.languages) ? s.languages : []))
    const list = offered.size ? ws.LANGUAGES.filter(l => offered.has(l.id) || l.id === ws.PLAINTEXT) : ws.LANGUAGES
    return active && !list.some(l => l.id === active.language) ? [...list, ws.LANGUAGES.find(l => l.id === active.language)] : list
  }
  let shownChoices = ''
  function renderToolbar () {
    const choices = languageChoices()
    const key = choices.map(l => l.id).join()
    if (key !== shownChoices) {
      shownChoices = key
      langSelect.replaceChildren(...choices.map(l => h('option', { value: l.id }, l.label)))
    }
    langSelect.value = active ? active.language : roomLanguage()
    langSelect.disabled = !mayWriteLocal(role) || !active
    const tree = currentTree()
    const entry = ws.entryFile(doc, tree)
    runTarget.textContent = entry ? `Run: ${entry.path} (entry)` : active ? `Run: ${active.path} (in view)` : 'Run: the file in view'
    title.textContent = meta.get('title') || room.name
  }
  langSelect.addEventListener('change', () => {
    if (!mayWriteLocal(role) || !active) return
    const chosen = langSelect.value
    doc.transact(() => {
      ws.setLanguage(doc, active.id, chosen === ws.languageOf(active.name) ? null : chosen)
      // The first file is v1's `source`: older clients read its language from meta.language.
      if (active.id === ws.SOURCE_ID && chosen !== ws.PLAINTEXT) meta.set('language', chosen)
    })
    if (active.id === ws.SOURCE_ID && chosen !== ws.PLAINTEXT) Rooms.update(roomId, { language: chosen }).catch(() => {})
  })
  const onMeta = () => renderToolbar()
  meta.observe(onMeta)
  let peopleKey = ''
  const onAwareness = () => {
    renderToolbar()
    const key = JSON.stringify(Array.from(peopleIn()))
    if (key !== peopleKey) { peopleKey = key; fileTree.render() } // dots of who is where; not on every cursor move
  }
  awareness.on('change', onAwareness)

  /** Open the entry file, else the first file, else any file — once there is one. */
  const openDefault = () => {
    if (tabs.activeId()) return
    const tree = currentTree()
    const pick = ws.entryFile(doc, tree) || tree.entries.get(ws.SOURCE_ID) || tree.files()[0]
    if (pick && pick.kind === 'file') tabs.open(pick.id)
  }
  /** A room without a tree (new, or v1 not yet migrated): the first file, the same on every peer. */
  const ensureFiles = () => {
    if (!mayWriteLocal(role) || ws.isV2(doc) || meta.get('schema') === ws.SCHEMA) return
    ws.ensureFirstFile(doc, ws.LANGUAGE_EXTENSION[roomLanguage()] ? roomLanguage() : 'python')
  }
  let settled = false
  const settle = () => { if (!settled) { settled = true; ensureFiles(); openDefault() } }
  idb.once('synced', () => { if (ws.isV2(doc) || doc.getText('source').length) settle() })
  provider.on('synced', settle)
  const settleTimer = setTimeout(settle, 2500) // alone in the room: nobody to sync with
  const onFiles = () => { dropTree(); if (settled) openDefault() } // shallow observers run before deep ones: drop the cache here too
  doc.getMap('files').observe(onFiles)
  applyRole()
  provider.on('role', (r) => { role = r; applyRole() })

  /** File id -> names of the others whose view is in it (awareness `file`). */
  function peopleIn () {
    const out = new Map()
    awareness.getStates().forEach((s, clientId) => {
      if (clientId === doc.clientID || !s || !s.user || typeof s.file !== 'string') return
      if (!out.has(s.file)) out.set(s.file, [])
      out.get(s.file).push(String(s.user.name || ''))
    })
    return out
  }

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
    const tree = currentTree()
    const where = new Map() // user id -> path of the file their view is in
    awareness.getStates().forEach((s) => {
      if (s && s.user && typeof s.file === 'string' && tree.entries.has(s.file)) where.set(String(s.user.id), tree.entries.get(s.file).path)
    })
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
    if ((ev.ctrlKey || ev.metaKey) && ev.key === 'Enter' && !tabs.el.contains(ev.target)) {
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
    doc, runsDoc, provider, awareness, room, idb, FINAL_STATUSES, tabs, fileTree, ws,
    get editor () { return tabs.editor() },
    tree: () => Array.from(currentTree().entries.values()).map(e => ({ id: e.id, path: e.path, kind: e.kind, language: e.language }))
  }

  return () => {
    window.removeEventListener('keydown', onKey)
    meta.unobserve(onMeta)
    awareness.off('change', onAwareness)
    clearTimeout(settleTimer)
    doc.getMap('files').unobserve(onFiles)
    doc.getMap('files').unobserveDeep(dropTree)
    fileTree.destroy()
    tabs.destroy()
    runPanel.destroy()
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
