// The history panel (docs/history.md): the room's timeline (sessions, bursts of editing, named
// versions) with any version opened read-only and diffed against now, restore (editors), blame
// (who wrote each line), and a player that replays the room's editing at 1×–32× with the runs
// appearing when they happened. Everything comes from the persistence peer over the data channel
// (web/src/history.js); the signaling server never sees any of it. Rights are the persistence
// peer's to decide (owner / editor / viewer per the room's policy); the panel only hides buttons
// the user could not use.
import * as Y from 'yjs'
import { listRuns } from '../doc.js'
import { HistoryClient, HistoryError, SPEEDS, blameRuns, decodeUpdate, diffLines, dueUpdates, lineClients, restoreInto, versionDocs } from '../history.js'
import { mayWriteLocal } from '../rights.js'
import { SOURCE_ID, textName } from '../workspace.js'
import { colorFor, h, notice } from '../ui.js'

const PAGE = 500 // updates per page while playing
const TICK_MS = 40

const CSS = `
.history-overlay { position: absolute; inset: 0; background: #fff; display: flex; flex-direction: column; z-index: 5; }
.history-overlay[hidden] { display: none; }
.editor-pane { position: relative; }
.history-head { display: flex; gap: 6px; align-items: center; padding: 6px 10px; border-bottom: 1px solid var(--line); flex-wrap: wrap; }
.history-head .tabs button { background: #fff; color: var(--fg); border-color: var(--line); }
.history-head .tabs button.on { background: var(--accent); color: #fff; border-color: var(--accent); }
.history-body { flex: 1; display: flex; min-height: 0; }
.history-list { width: 300px; overflow: auto; border-right: 1px solid var(--line); padding: 6px 8px; font-size: 13px; }
.history-list .session { margin: 8px 0 2px; color: var(--muted); font-weight: 600; }
.history-list .item { display: flex; gap: 6px; align-items: center; padding: 3px 4px; border-radius: 4px; cursor: pointer; }
.history-list .item:hover, .history-list .item.on { background: #eef3ff; }
.history-list .checkpoint { font-weight: 600; }
.history-main { flex: 1; min-width: 0; display: flex; flex-direction: column; }
.history-main .bar { display: flex; gap: 8px; align-items: center; padding: 6px 10px; border-bottom: 1px solid var(--line); flex-wrap: wrap; }
.history-main pre { flex: 1; margin: 0; overflow: auto; padding: 8px 10px; font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space: pre; }
.history-main .diff .add { background: #e6f6ea; display: block; }
.history-main .diff .del { background: #fde8e7; display: block; text-decoration: line-through; color: #8a1c12; }
.history-main .blame { flex: 1; overflow: auto; font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.history-main .blame div { display: flex; white-space: pre; }
.history-main .blame .who { width: 120px; flex: none; overflow: hidden; text-overflow: ellipsis; padding: 0 6px; font-family: system-ui, sans-serif; font-size: 12px; }
.history-main .player-runs { max-height: 30%; overflow: auto; border-top: 1px solid var(--line); padding: 4px 10px; font-size: 12px; }
.history-main .player-runs pre { padding: 0; max-height: 6em; }
.dot.small { width: 8px; height: 8px; border-radius: 50%; display: inline-block; flex: none; }
`

let cssAdded = false
function addCss () {
  if (cssAdded) return
  cssAdded = true
  document.head.appendChild(h('style', CSS))
}

const fmtTime = (ms) => ms ? new Date(ms).toLocaleString() : '—'
const fmtShort = (ms) => ms ? new Date(ms).toLocaleTimeString() : '—'

function authorName (authors, num) {
  const a = authors && num !== null && num !== undefined ? authors[String(num)] : null
  if (!a) return 'unknown'
  return a.service ? `${a.service} service` : (a.name || a.user_id || 'someone')
}

function authorColor (authors, num) {
  const a = authors && authors[String(num)]
  return colorFor(a ? (a.user_id || a.service || num) : 'unknown').color
}

const FIRST_FILE = { id: SOURCE_ID, text: textName(SOURCE_ID), path: null }

/**
 * @param {{provider: any, doc: Y.Doc, getRole: () => string|null, currentFile?: () => any}} opts
 *   `currentFile()`: the workspace's file in view (a tree entry: `id`, `text`, `path`), whose
 *   history the panel shows; the room's first file when there is none.
 * @returns {{button: HTMLElement, overlay: HTMLElement, setRole: (role: string|null) => void, destroy: () => void}}
 *   `button` goes in the toolbar; `overlay` into the editor pane (it covers the editor while open).
 */
export function createHistoryPanel ({ provider, doc, getRole, currentFile = () => null }) {
  addCss()
  const client = new HistoryClient(provider)
  const fileInView = () => currentFile() || FIRST_FILE
  const fileLabel = (file) => file.path ? ` of ${file.path}` : ''
  const button = h('button.link', { testid: 'history-open', title: 'Who wrote what, earlier versions, playback' }, 'History')
  const msg = notice('history-message')
  const tabs = {}
  const tabBar = h('span.tabs')
  for (const [id, label] of [['timeline', 'Versions'], ['blame', 'Blame'], ['play', 'Playback']]) {
    tabs[id] = h('button', { testid: `history-tab-${id}`, on: { click: () => show(id) } }, label)
    tabBar.appendChild(tabs[id])
  }
  const close = h('button.link', { testid: 'history-close', on: { click: () => toggle(false) } }, 'Close ✕')
  const body = h('div.history-body')
  const overlay = h('div.history-overlay', { testid: 'history-panel', hidden: true },
    h('div.history-head', h('strong', 'History'), tabBar, h('span', { style: 'flex:1' }), close), msg.el, body)

  let open = false
  let current = 'timeline'
  let timeline = null
  let authors = {}
  let destroyed = false
  const player = createPlayer()

  const fail = (err) => {
    if (destroyed) return
    const text = err instanceof HistoryError && err.code === 'forbidden'
      ? `You may not do that: ${err.message}.`
      : err instanceof HistoryError && err.code === 'not_kept'
        ? 'That version is no longer kept (the room keeps daily snapshots of older history, or its history was deleted).'
        : `History: ${err.message || err}`
    msg.show(text, 'error')
  }

  function toggle (value = !open) {
    open = value
    overlay.hidden = !open
    if (open) show(current)
    else player.pause()
  }
  button.addEventListener('click', () => toggle())

  function show (id) {
    current = id
    msg.clear()
    Object.entries(tabs).forEach(([k, b]) => b.classList.toggle('on', k === id))
    if (id !== 'play') player.pause()
    if (id === 'timeline') renderTimeline()
    else if (id === 'blame') renderBlame()
    else { body.replaceChildren(player.el); player.start() }
  }

  // ------------------------------------------------------------------ versions
  const list = h('div.history-list', { testid: 'history-list' })
  const versionPane = h('div.history-main', { testid: 'history-version' })

  async function loadTimeline () {
    const t = await client.ask('timeline', { limit: 300 })
    timeline = t
    authors = { ...authors, ...t.authors }
    return t
  }

  async function renderTimeline () {
    body.replaceChildren(list, versionPane)
    list.replaceChildren(h('p.muted', 'Loading…'))
    versionPane.replaceChildren(h('p.muted', { style: 'padding:10px' }, 'Pick a version on the left to see the document as it was.'))
    try {
      const t = await loadTimeline()
      drawList(t)
    } catch (err) {
      list.replaceChildren(h('p.muted', 'No history to show.'))
      fail(err)
    }
  }

  function drawList (t) {
    const role = getRole()
    const rows = []
    const nameInput = h('input', { testid: 'history-name-input', placeholder: 'Name this version', maxlength: 100 })
    const nameSave = h('button', { testid: 'history-name-save' }, 'Save')
    nameSave.addEventListener('click', async () => {
      try {
        const got = await client.ask('checkpoint', { name: nameInput.value })
        authors = { ...authors, ...got.authors }
        msg.show(`Named this version “${got.checkpoint.name}”.`, 'ok')
        nameInput.value = ''
        drawList(await loadTimeline())
      } catch (err) { fail(err) }
    })
    if (mayWriteLocal(role)) rows.push(h('div.share-row', { style: 'display:flex;gap:4px;margin-bottom:6px' }, nameInput, nameSave))
    if (role === 'owner') rows.push(ownerControls(t))
    const checkpoints = [...(t.checkpoints || [])]
    const sessions = [...(t.sessions || [])].reverse() // newest first
    if (!sessions.length && !checkpoints.length) rows.push(h('p.muted', 'No edits stored yet.'))
    for (const s of sessions) {
      const names = [...new Set(s.bursts.map(b => authorName(authors, b.author)))].join(', ')
      rows.push(h('div.session', `${fmtTime(s.start_at)} · ${names}`))
      for (const b of [...s.bursts].reverse()) {
        // named versions inside this burst's span come first (newest first)
        for (const c of checkpoints.filter(c => c.seq >= b.start_seq && c.seq <= b.end_seq + 0).reverse()) rows.push(checkpointRow(c))
        rows.push(h('div.item', { testid: 'history-item', 'data-seq': b.end_seq, on: { click: (ev) => openVersion(b.end_seq, ev.currentTarget, `${authorName(authors, b.author)}, ${fmtShort(b.end_at)}`) } },
          h('span.dot.small', { style: `background:${authorColor(authors, b.author)}` }),
          h('span', `${fmtShort(b.start_at)}–${fmtShort(b.end_at)}`),
          h('span.muted', `${authorName(authors, b.author)} · ${b.updates} edit${b.updates === 1 ? '' : 's'}`)))
      }
    }
    // named versions outside every listed burst (e.g. after the history was pruned)
    const inBursts = (c) => sessions.some(s => s.bursts.some(b => c.seq >= b.start_seq && c.seq <= b.end_seq))
    for (const c of checkpoints.filter(c => !inBursts(c)).reverse()) rows.push(checkpointRow(c))
    if (t.more) rows.push(h('p.muted', 'Older history is not listed.'))
    list.replaceChildren(...rows)
  }

  function checkpointRow (c) {
    return h('div.item.checkpoint', { testid: 'history-checkpoint', 'data-seq': c.seq, on: { click: (ev) => openVersion(c.seq, ev.currentTarget, `“${c.name}”`) } },
      h('span', '★'), h('span', c.name), h('span.muted', `${authorName(authors, c.author)} · ${fmtShort(c.at)}`))
  }

  function ownerControls (t) {
    const policy = h('input', { type: 'checkbox', testid: 'history-policy' })
    policy.checked = !!(t.policy && t.policy.viewers_read)
    policy.addEventListener('change', async () => {
      try {
        await client.ask('policy', { viewers_read: policy.checked })
        msg.show(policy.checked ? 'Viewers may now read this room’s history.' : 'Viewers may no longer read this room’s history.', 'ok')
      } catch (err) { policy.checked = !policy.checked; fail(err) }
    })
    const exportBtn = h('button.link', { testid: 'history-export' }, 'Export')
    exportBtn.addEventListener('click', () => exportHistory().catch(fail))
    const del = h('button.link', { testid: 'history-delete' }, 'Delete history…')
    const confirm = h('button', { testid: 'history-delete-confirm', style: 'display:none;background:var(--bad);border-color:var(--bad)' }, 'Delete every earlier version')
    del.addEventListener('click', () => { confirm.style.display = confirm.style.display === 'none' ? '' : 'none' })
    confirm.addEventListener('click', async () => {
      confirm.style.display = 'none'
      try {
        const got = await client.ask('delete', { confirm: true })
        msg.show(`The history is deleted (up to #${got.deleted.upto_seq}); the document itself stays.`, 'ok')
        drawList(await loadTimeline())
      } catch (err) { fail(err) }
    })
    return h('div', { style: 'display:flex;flex-direction:column;gap:2px;margin-bottom:6px' },
      h('label', { style: 'flex-direction:row;align-items:center;gap:4px;color:var(--fg)' }, policy, 'Viewers may read the history'),
      h('div', exportBtn, ' · ', del), confirm)
  }

  async function exportHistory () {
    const parts = []
    let cursor = null
    let lines = 0
    do {
      const page = await client.ask('export', cursor ? { cursor } : {})
      parts.push(page.lines)
      lines += page.lines ? page.lines.split('\n').length - 1 : 0
      cursor = page.next
    } while (cursor)
    const blob = new Blob(parts, { type: 'application/x-ndjson' })
    const a = h('a', { href: URL.createObjectURL(blob), download: `codesync-history-${provider.roomId || 'room'}.jsonl` })
    document.body.appendChild(a)
    a.click()
    a.remove()
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000)
    msg.show(`Exported ${lines} lines.`, 'ok')
  }

  async function openVersion (seq, row, label) {
    list.querySelectorAll('.item.on').forEach(el => el.classList.remove('on'))
    if (row) row.classList.add('on')
    versionPane.replaceChildren(h('p.muted', { style: 'padding:10px' }, 'Opening…'))
    const file = fileInView()
    try {
      const answer = await client.ask('version', { seq, format: 'text', file: file.id }) // one file's code: small
      drawVersion(answer, answer.text, label, file)
    } catch (err) {
      versionPane.replaceChildren()
      fail(err)
    }
  }

  function drawVersion (answer, text, label, file) {
    const now = doc.getText(file.text)
    const pre = h('pre', { testid: 'history-version-text' })
    let diffing = false
    const diffBtn = h('button.link', { testid: 'history-diff' }, 'Diff against now')
    const draw = () => {
      if (!diffing) {
        pre.className = ''
        pre.textContent = text
        diffBtn.textContent = 'Diff against now'
        return
      }
      pre.className = 'diff'
      pre.replaceChildren(...diffLines(text, now.toString()).map(d => d.op === ' '
        ? document.createTextNode(`  ${d.line}\n`)
        : h(`span.${d.op === '+' ? 'add' : 'del'}`, { 'data-op': d.op }, `${d.op} ${d.line}`)))
      diffBtn.textContent = 'Show the version'
    }
    diffBtn.addEventListener('click', () => { diffing = !diffing; draw() })
    const bar = h('div.bar', h('strong', label || `#${answer.seq}`), h('span.muted', `${fmtTime(answer.at)}${fileLabel(file)}`),
      answer.exact ? null : h('span.tag', 'daily snapshot'),
      answer.exists === false ? h('span.tag', { testid: 'history-file-absent' }, 'the file did not exist then') : null, diffBtn)
    if (mayWriteLocal(getRole()) && answer.exists !== false) {
      const restore = h('button', { testid: 'history-restore' }, 'Restore this version')
      restore.addEventListener('click', () => {
        if (!mayWriteLocal(getRole())) return fail(new HistoryError('forbidden', 'only editors and the owner may restore'))
        const n = restoreInto(now, text)
        msg.show(n ? `Restored ${label || 'the version'} as a new edit (everyone gets it; the history keeps what it replaced).` : 'The document already is this version.', 'ok')
        if (diffing) draw()
      })
      bar.appendChild(restore)
    }
    versionPane.replaceChildren(bar, pre)
    draw()
  }

  // ------------------------------------------------------------------ blame
  async function renderBlame () {
    const pane = h('div.history-main')
    const rows = h('div.blame', { testid: 'blame' })
    const refresh = h('button.link', { testid: 'blame-refresh', on: { click: () => renderBlame() } }, 'refresh')
    const file = fileInView()
    const ytext = doc.getText(file.text)
    pane.replaceChildren(h('div.bar', h('strong', `Who wrote each line${fileLabel(file)}`), refresh), rows)
    body.replaceChildren(pane)
    const text = ytext.toString()
    const runs = blameRuns(ytext)
    const lines = lineClients(text, runs)
    const clients = [...new Set(runs.map(r => r.client))].slice(0, 5000)
    let owners = {}
    try {
      if (clients.length) {
        const got = await client.ask('authors', { clients })
        owners = got.clients || {}
        authors = { ...authors, ...got.authors }
      }
    } catch (err) { fail(err) }
    rows.replaceChildren(...lines.map(l => {
      const num = l.client === null ? null : owners[String(l.client)]
      const who = l.client === null ? '' : (num === undefined ? 'unknown' : authorName(authors, num))
      return h('div', { testid: 'blame-line' },
        h('span.who', { testid: 'blame-author', style: l.client === null ? '' : `border-left:4px solid ${num === undefined ? '#bbb' : authorColor(authors, num)}` }, who),
        h('span', l.text || ' '))
    }))
  }

  // ------------------------------------------------------------------ player
  function createPlayer () {
    const text = h('pre', { testid: 'player-text' })
    const playBtn = h('button', { testid: 'player-play' }, '▶ Play')
    const speed = h('select', { testid: 'player-speed' }, SPEEDS.map(s => h('option', { value: s }, `${s}×`)))
    const scrub = h('input', { type: 'range', testid: 'player-scrub', min: 0, max: 0, value: 0, style: 'flex:1;min-width:120px' })
    const timeLabel = h('span.muted', { testid: 'player-time' }, '—')
    const typing = h('span', { testid: 'player-typing' })
    const runsBox = h('div.player-runs', { testid: 'player-runs' })
    const el = h('div.history-main', h('div.bar', playBtn, speed, scrub, timeLabel, typing), text, runsBox)
    let state = null // {docs, queue, after, more, clock, seq}
    let playing = false
    let timer = null
    let lastTick = 0
    let fetching = null
    let lastAuthor = null
    let lastAt = 0
    let epoch = 0 // bumps on every seek: answers of an older seek are dropped

    playBtn.addEventListener('click', () => playing ? pause() : play())
    scrub.addEventListener('change', () => seek(Number(scrub.value)).catch(fail))

    async function start () {
      try {
        const t = await loadTimeline() // fresh bounds: the room may have changed since
        if (state) {
          scrub.max = String(t.bounds.last_seq)
          return draw()
        }
        const b = t.bounds
        scrub.min = String(Math.max(b.first_seq - 1, b.detail_from ? b.detail_from - 1 : 0))
        scrub.max = String(b.last_seq)
        // start at the beginning of the newest session
        const sessions = t.sessions || []
        const from = sessions.length ? sessions[sessions.length - 1].start_seq - 1 : Number(scrub.min)
        await seek(Math.max(Number(scrub.min), from))
      } catch (err) { fail(err) }
    }

    async function seek (seq) {
      const mine = ++epoch
      const wasPlaying = playing
      pause()
      // the version and the first page of what follows it, asked at once (2 may be in flight)
      const [answer, page] = await Promise.all([
        client.ask('version', { seq, encoding: 'deflate' }),
        client.ask('updates', { after: seq, limit: PAGE }).catch(() => null)
      ])
      if (mine !== epoch) return
      const docs = await versionDocs(answer)
      if (mine !== epoch) return
      if (state) Object.values(state.docs).forEach(d => d.destroy())
      state = { docs, queue: [], after: answer.seq, more: true, clock: answer.at, seq: answer.seq }
      if (!state.docs.runs) state.docs.runs = new Y.Doc()
      lastAuthor = null
      if (page && answer.seq === seq) takePage(state, page)
      else await fetchMore(mine) // an older daily snapshot stood in for that point: play on from it
      if (state.queue.length && (!state.clock || state.clock < state.queue[0].at - 1000)) state.clock = state.queue[0].at - 200
      draw()
      if (wasPlaying) play()
    }

    function fetchMore (mine = epoch) {
      if (fetching || !state || !state.more) return fetching
      const s = state
      fetching = client.ask('updates', { after: s.after, limit: PAGE }).then((page) => {
        if (mine !== epoch || s !== state) return
        takePage(s, page)
      }).catch(fail).finally(() => { fetching = null })
      return fetching
    }

    function takePage (s, page) {
      authors = { ...authors, ...page.authors }
      for (const [seq, at, name, author, data] of page.updates) s.queue.push({ seq, at, name, author, data })
      if (page.updates.length) s.after = page.updates[page.updates.length - 1][0]
      s.more = page.more
    }

    function play () {
      if (!state || playing) return
      if (!state.queue.length && !state.more) { state.more = true; fetchMore() } // the room may have moved on
      playing = true
      playBtn.textContent = 'Pause'
      lastTick = performance.now()
      timer = setInterval(tick, TICK_MS)
    }

    function pause () {
      playing = false
      playBtn.textContent = '▶ Play'
      if (timer) clearInterval(timer)
      timer = null
    }

    function tick () {
      if (!state) return
      const now = performance.now()
      const elapsed = now - lastTick
      lastTick = now
      const { count, at } = dueUpdates(state.queue, state.clock, elapsed, Number(speed.value))
      for (const u of state.queue.splice(0, count)) {
        const target = u.name === 'main' ? state.docs.main : (state.docs[u.name] || (state.docs[u.name] = new Y.Doc()))
        Y.applyUpdate(target, decodeUpdate(u.data))
        state.seq = u.seq
        if (u.name === 'main') { lastAuthor = u.author; lastAt = u.at }
      }
      state.clock = at
      if (state.queue.length < PAGE / 2 && state.more) fetchMore()
      if (!state.queue.length && !state.more && !fetching) pause()
      if (count || !playing) draw()
      else drawClock()
    }

    function drawClock () {
      timeLabel.textContent = state ? fmtTime(Math.round(state.clock)) : '—'
      const active = lastAuthor !== null && state && state.clock - lastAt < 2000 * Number(speed.value)
      typing.textContent = active ? `✎ ${authorName(authors, lastAuthor)} is typing` : ''
      if (active) typing.style.color = authorColor(authors, lastAuthor)
    }

    function draw () {
      if (!state) return
      const file = fileInView() // follows the file opened in the tree while it plays
      text.textContent = state.docs.main.getText(file.text).toString()
      text.title = file.path || ''
      scrub.value = String(state.seq)
      drawClock()
      const runs = listRuns(state.docs.runs)
      runsBox.replaceChildren(...(runs.length ? [h('strong', 'Runs')] : []), ...runs.slice(0, 20).map(r => h('div', { testid: 'player-run' },
        h('span.tag', r.status), ' ', h('span.muted', `${r.language} · ${r.requestedBy || ''}`),
        h('pre', r.segments.map(s => s.text).join('').slice(0, 2000)))))
    }

    return {
      el,
      start,
      pause,
      seek,
      get state () { return state },
      destroy () { pause(); epoch++; if (state) Object.values(state.docs).forEach(d => d.destroy()); state = null }
    }
  }

  const unsubscribe = client.onChanged((notice) => {
    if (!open) return
    if (current === 'timeline') renderTimeline()
    if (notice.what === 'deleted' && current === 'play') player.destroy()
  })

  return {
    button,
    overlay,
    client,
    player,
    setRole () { if (open && current === 'timeline' && timeline) drawList(timeline) },
    destroy () {
      destroyed = true
      unsubscribe()
      player.destroy()
      client.destroy()
    }
  }
}
