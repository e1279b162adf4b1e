// The editor page: CodeMirror on the shared document, presence, run output, sharing, status line.
import * as Y from 'yjs'
import { Awareness } from 'y-protocols/awareness'
import { IndexeddbPersistence } from 'y-indexeddb'
import { api, Rooms, session } from '../api.js'
import { FINAL_STATUSES, LANGUAGES, SCHEMA, listRuns, roomParts, runDuration } from '../doc.js'
import { createEditor } from '../editor.js'
import { CodeSyncProvider } from '../provider.js'
import { colorFor, copyText, h, notice } from '../ui.js'
import { header } from './rooms.js'

const RUN_ANSWER_TIMEOUT_MS = 5000

function uuid () {
  if (crypto.randomUUID) return crypto.randomUUID()
  const b = crypto.getRandomValues(new Uint8Array(16))
  b[6] = (b[6] & 0x0f) | 0x40
  b[8] = (b[8] & 0x3f) | 0x80
  const x = Array.from(b, v => v.toString(16).padStart(2, '0')).join('')
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`
}

function toBase64 (bytes) {
  let s = ''
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000))
  return btoa(s)
}

/**
 * The persistence peer's save status from its awareness state `saved: {status, state_vector, …}`
 * (peer/persistence/writer.py). "saved" only when the stored state vector covers everything this
 * browser has, so a fresh local edit shows "saving…" until the persistence peer has it.
 */
export function savedStatus (awareness, doc) {
  for (const state of awareness.getStates().values()) {
    const saved = state && state.saved
    if (!saved || typeof saved !== 'object') continue
    if (saved.status === 'error') return `not saved: ${saved.error || 'storage error'}`
    if (saved.status !== 'saved') return saved.status === 'loading' ? 'loading…' : 'saving…'
    if (typeof saved.state_vector === 'string') {
      try {
        const stored = Y.decodeStateVector(Uint8Array.from(atob(saved.state_vector), c => c.charCodeAt(0)))
        const mine = Y.decodeStateVector(Y.encodeStateVector(doc))
        for (const [client, clock] of mine) {
          if ((stored.get(client) || 0) < clock) return 'saving…'
        }
      } catch (e) {}
    }
    return 'saved'
  }
  return null
}

function describeRequester (r) {
  if (!r) return ''
  if (typeof r === 'string') return r
  return r.name || r.user_id || r.id || ''
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

  const role = room.role || 'viewer'
  const canEdit = role === 'owner' || role === 'editor'
  const me = session.user || {}

  const doc = new Y.Doc()
  const { source, meta, runs } = roomParts(doc)
  const idb = new IndexeddbPersistence(`codesync-room-${roomId}`, doc)
  const awareness = new Awareness(doc)
  awareness.setLocalStateField('user', { id: me.id, name: me.name || me.email || 'Someone', ...colorFor(me.id || me.email || doc.clientID) })

  // ------------------------------------------------------------------ layout
  const language = () => meta.get('language') || room.language || 'python'
  const langSelect = h('select', { testid: 'language', disabled: !canEdit, title: 'Language (shared with everyone in the room)' },
    LANGUAGES.map(l => h('option', { value: l.id }, l.label)))
  const runBtn = canEdit ? h('button.run', { testid: 'run', title: 'Run (Ctrl/Cmd-Enter)' }, '▶ Run') : null
  const stopBtn = canEdit ? h('button.stop', { testid: 'stop', disabled: true }, '■ Stop') : null
  const title = h('span.room-title', { testid: 'room-title' }, meta.get('title') || room.name)
  const roleTag = h('span.tag.role', { testid: 'my-role' }, role + (canEdit ? '' : ' · read-only'))
  const editorHost = h('div.editor', { testid: 'editor' })
  const people = h('ul.people', { testid: 'presence' })
  const runHead = h('div.run-head', { testid: 'run-status' }, 'No runs yet.')
  const output = h('pre.output', { testid: 'output' })
  const recent = h('ul.recent', { testid: 'recent-runs' })
  const status = {
    signaling: h('span', { testid: 'status-signaling' }, 'connecting'),
    peers: h('span', { testid: 'status-peers' }, '0'),
    saved: h('span', { testid: 'status-saved' }, '—'),
    runner: h('span', { testid: 'status-runner' }, '—')
  }
  const runMsg = notice('run-message')
  const connMsg = notice('conn-message')
  const sharePanel = h('section.panel')
  const side = h('aside.side',
    h('section.panel', h('h2', 'People'), people),
    sharePanel,
    h('section.panel.runs', h('h2', 'Output'), runMsg.el, runHead, output, h('h3', 'Recent runs'), recent))
  const page = h('div.page.room',
    header([title, roleTag]),
    h('div.toolbar', langSelect, runBtn, stopBtn),
    connMsg.el,
    h('div.room-body', h('section.editor-pane', editorHost), side),
    h('footer.status', { testid: 'status' },
      h('span', 'Signaling: ', status.signaling), ' · ',
      h('span', 'Peers: ', status.peers), ' · ',
      h('span', 'Document: ', status.saved), ' · ',
      h('span', 'Runner: ', status.runner)))
  root.replaceChildren(page)

  // ------------------------------------------------------------------ editor + provider
  let provider = null
  const editor = createEditor(editorHost, { ytext: source, awareness, language: language(), readOnly: !canEdit, onRun: () => requestRun() })
  provider = new CodeSyncProvider(doc, awareness, {
    roomId,
    iceServers,
    getToken: ({ force }) => session.accessToken({ force })
  })

  langSelect.value = language()
  langSelect.addEventListener('change', () => {
    if (!canEdit) return
    doc.transact(() => {
      if (!meta.has('schema')) meta.set('schema', SCHEMA)
      meta.set('language', langSelect.value)
    })
    // The document is the source of truth; the room record follows so the room list shows it too.
    Rooms.update(roomId, { language: langSelect.value }).catch(() => {})
  })
  const onMeta = () => {
    langSelect.value = language()
    editor.setLanguage(language())
    title.textContent = meta.get('title') || room.name
  }
  meta.observe(onMeta)

  // ------------------------------------------------------------------ status line
  let everConnected = false
  const renderStatus = () => {
    const st = provider.state
    status.signaling.textContent = st
    status.signaling.className = st === 'connected' ? 'ok' : 'bad'
    const direct = provider.connectedPeers().length
    status.peers.textContent = `${direct} direct`
    const saved = savedStatus(awareness, doc)
    status.saved.textContent = saved || (direct ? 'not saved on the server (no persistence peer connected)' : 'local only')
    status.saved.className = saved === 'saved' ? 'ok' : ''
    if (st === 'connected') {
      everConnected = true
      connMsg.clear()
    } else if (st === 'forbidden') {
      connMsg.show("You don't have access to this room any more.", 'error')
    } else if (st === 'unauthorized') {
      connMsg.show('The signaling server does not accept your session. Please sign in again.', 'error')
    } else if (everConnected || st === 'disconnected') {
      connMsg.show(direct
        ? `Signaling server unreachable — editing continues peer to peer with ${direct} connected peer${direct === 1 ? '' : 's'}. Reconnecting…`
        : `${offline ? 'Working offline from this browser\'s copy. ' : ''}Signaling server unreachable — your edits are kept in this browser and merge when the connection returns. Reconnecting…`, 'warn')
    }
    const runner = provider.runnerPeer()
    status.runner.textContent = runner ? 'ready' : 'not connected'
    status.runner.className = runner ? 'ok' : ''
  }
  let statusTimer = null
  const onDocUpdate = () => {
    if (!statusTimer) statusTimer = setTimeout(() => { statusTimer = null; renderStatus() }, 100)
  }
  doc.on('update', onDocUpdate)
  provider.on('status', renderStatus)
  provider.on('peers', () => { renderStatus(); renderPeople() })
  provider.on('error', (e) => {
    if (e.code === 'session_expired') connMsg.show('Your session has expired. Please sign in again.', 'error')
    else if (e.code === 'unauthorized' || e.code === 'too_many_connections') connMsg.show(e.message, 'error')
    else if (e.code === 'forbidden') connMsg.show("You don't have access to this room any more.", 'error')
  })
  awareness.on('change', () => { renderStatus(); renderPeople() })

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
  function renderPeople () {
    const items = []
    const seen = new Set()
    for (const p of presence) {
      if (!p.user_id) continue
      seen.add(String(p.user_id))
      items.push({ id: p.user_id, name: p.name || 'Someone', role: p.role || '', you: String(p.user_id) === String(me.id) })
    }
    // Peers known only through the data channels (signaling down): from awareness.
    awareness.getStates().forEach((s) => {
      const u = s && s.user
      if (u && u.id !== undefined && u.name && !seen.has(String(u.id)) && !u.service) {
        seen.add(String(u.id))
        items.push({ id: u.id, name: u.name, role: '', you: String(u.id) === String(me.id) })
      }
    })
    people.replaceChildren(...items.map(p => h('li', { testid: 'person' },
      h('span.dot', { style: `background:${colorFor(p.id).color}` }),
      h('span.name', p.name + (p.you ? ' (you)' : '')),
      p.role ? h('span.tag.role', p.role) : null)))
  }
  renderPeople()

  // ------------------------------------------------------------------ runs
  let selectedRun = null
  let pendingRun = null
  let runTimer = null
  let renderScheduled = false
  const scheduleRuns = () => {
    if (renderScheduled) return
    renderScheduled = true
    setTimeout(() => { renderScheduled = false; renderRuns() }, 30)
  }
  function renderRuns () {
    const all = listRuns(doc)
    if (pendingRun && all.some(r => r.id === pendingRun)) {
      clearTimeout(runTimer)
      pendingRun = null
    }
    const current = all.find(r => r.id === selectedRun) || all[0]
    if (!current) {
      runHead.textContent = pendingRun ? 'Waiting for the runner…' : 'No runs yet.'
      output.replaceChildren()
    } else {
      const d = runDuration(current)
      runHead.replaceChildren(
        h('span.tag', { testid: 'run-state' }, current.status),
        current.exitCode !== undefined && current.exitCode !== null ? h('span', { testid: 'exit-code' }, ` exit code ${current.exitCode}`) : null,
        d !== null ? h('span', { testid: 'duration' }, ` · ${d < 1000 ? `${Math.round(d)} ms` : `${(d / 1000).toFixed(2)} s`}`) : null,
        current.requestedBy ? h('span.muted', ` · by ${describeRequester(current.requestedBy)}`) : null)
      const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 4
      output.replaceChildren(...current.segments.map(s => s.stderr ? h('span.stderr', s.text) : document.createTextNode(s.text)))
      if (atBottom) output.scrollTop = output.scrollHeight
    }
    recent.replaceChildren(...all.slice(0, 10).map(r => h('li', {
      testid: 'recent-run',
      class: r === current ? 'selected' : '',
      on: { click: () => { selectedRun = r.id; renderRuns() } }
    }, `${r.language || ''} · ${r.status}${r.exitCode !== undefined && r.exitCode !== null ? ` (${r.exitCode})` : ''}`)))
    if (stopBtn) stopBtn.disabled = !all.some(r => r.status === 'running' || r.status === 'queued')
  }
  runs.observeDeep(scheduleRuns)
  renderRuns()

  function requestRun () {
    if (!canEdit) return
    runMsg.clear()
    const runner = provider.runnerPeer()
    if (!runner) {
      runMsg.show('The runner is not available right now, so code cannot be run. Editing still works.', 'warn')
      return
    }
    const runId = uuid()
    selectedRun = runId
    pendingRun = runId
    provider.sendApp(runner.remotePeerId, {
      op: 'run',
      run_id: runId,
      language: language(),
      state_vector: toBase64(Y.encodeStateVector(doc))
    })
    renderRuns()
    clearTimeout(runTimer)
    runTimer = setTimeout(() => {
      if (pendingRun === runId) {
        pendingRun = null
        runMsg.show('The runner did not answer. Try again in a moment.', 'warn')
        renderRuns()
      }
    }, RUN_ANSWER_TIMEOUT_MS)
  }
  function requestStop () {
    const runner = provider.runnerPeer()
    const active = listRuns(doc).find(r => r.status === 'running' || r.status === 'queued')
    if (!runner || !active) return
    provider.sendApp(runner.remotePeerId, { op: 'stop', run_id: active.id })
  }
  provider.on('app', (m, peerId, sender) => {
    if (!sender || sender.service !== 'runner') return
    if (m.op === 'run-refused') {
      if (m.run_id === pendingRun) { pendingRun = null; clearTimeout(runTimer) }
      runMsg.show(`The runner refused to run this: ${m.reason || 'no reason given'}.`, 'error')
      renderRuns()
    } else if (m.op === 'run-accepted' && m.run_id === pendingRun) {
      clearTimeout(runTimer)
    }
  })
  if (runBtn) runBtn.addEventListener('click', requestRun)
  if (stopBtn) stopBtn.addEventListener('click', requestStop)
  const onKey = (ev) => {
    if ((ev.ctrlKey || ev.metaKey) && ev.key === 'Enter' && !editorHost.contains(ev.target)) {
      ev.preventDefault()
      requestRun()
    }
  }
  window.addEventListener('keydown', onKey)

  // ------------------------------------------------------------------ sharing (owner)
  if (role === 'owner') reloadMembers = renderShare(sharePanel, roomId)
  else sharePanel.remove()

  renderStatus()
  // Exposed for tests and debugging: the document and the provider of the open room.
  window.codesync = { doc, provider, awareness, editor, room, idb, FINAL_STATUSES }

  return () => {
    window.removeEventListener('keydown', onKey)
    clearTimeout(runTimer)
    clearTimeout(statusTimer)
    doc.off('update', onDocUpdate)
    meta.unobserve(onMeta)
    runs.unobserveDeep(scheduleRuns)
    provider.destroy()
    editor.destroy()
    idb.destroy()
    doc.destroy()
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
