// The workspace part of the room page (docs/workspace.md): the file tree (filetree.js), the tabs
// and editor (tabs.js), the open file's language picker, what Run runs (the entry file, else the
// file in view), and the room's first file. room.js only mounts the elements this returns.
import { Rooms } from '../api.js'
import { mayWriteLocal } from '../rights.js'
import * as ws from '../workspace.js'
import { h } from '../ui.js'
import { createFileTree } from './filetree.js'
import { createTabs } from './tabs.js'

/**
 * @param {{doc: any, awareness: any, provider: any, idb: any, room: object, roomId: string,
 *   role: () => string|null, onRun: () => void, onChange: () => void}} opts
 *   `role()`: the local user's live role; `onChange()`: who-is-where or the file in view changed
 *   (the people list says which file each person is in).
 */
export function createWorkspace ({ doc, awareness, provider, idb, room, roomId, role, onRun, onChange }) {
  const meta = doc.getMap('meta')
  const files = doc.getMap('files')
  const canEdit = () => mayWriteLocal(role())
  // The resolved tree, read again only after the tree changed: presence and cursor moves (every
  // remote keystroke) re-render the people list and the toolbar, which only look it up.
  let treeCache = null
  const dropTree = () => { treeCache = null }
  files.observeDeep(dropTree)
  const currentTree = () => treeCache || (treeCache = ws.readTree(doc))
  const roomLanguage = () => meta.get('language') || room.language || 'python'

  const langSelect = h('select', { testid: 'language', title: "The open file's language (shared with everyone in the room)" })
  const runTarget = h('span.muted.run-target', { testid: 'run-target' })
  let active = null // the resolved tree entry of the file in view
  const tabs = createTabs({
    doc, awareness, readOnly: !canEdit(), onRun,
    onActive: (entry) => { active = entry; renderToolbar(); onChange() }
  })
  const fileTree = createFileTree({
    doc, canEdit: canEdit(), onOpen: (id) => tabs.open(id), activeId: () => tabs.activeId(),
    zipName: () => `${(meta.get('title') || room.name || 'project').replace(/[^\w.-]+/g, '_')}.zip`,
    peopleIn
  })

  /** What Run runs: the room's entry file, else the file in view. */
  function target () {
    const tree = currentTree()
    const entry = ws.entryFile(doc, tree) || (active && tree.entries.get(active.id))
    if (!entry) return { error: 'Open a file to run it (or set an entry file in the file tree).' }
    if (entry.language === ws.PLAINTEXT) return { error: `${entry.path} is plain text: give it a language's extension or pick its language.` }
    return { language: entry.language, entry: entry.id, entry_path: entry.path }
  }

  let shownChoices = ''
  function renderToolbar () {
    // What the runner advertises (plus plain text), else every language we know (workspace.js).
    const choices = ws.languageChoices(provider.serviceStates('runner'), active ? active.language : null)
    const key = choices.map(l => l.id).join()
    if (key !== shownChoices) {
      shownChoices = key
      langSelect.replaceChildren(...choices.map(l => h('option', { value: l.id }, l.label)))
    }
    langSelect.value = active ? active.language : roomLanguage()
    langSelect.disabled = !canEdit() || !active
    const entry = ws.entryFile(doc, currentTree())
    runTarget.textContent = entry ? `Run: ${entry.path} (entry)` : active ? `Run: ${active.path} (in view)` : 'Run: the file in view'
  }
  langSelect.addEventListener('change', () => {
    if (!canEdit() || !active) return
    const chosen = langSelect.value
    doc.transact(() => {
      ws.setLanguage(doc, active.id, chosen === ws.languageOf(active.name) ? null : chosen)
      // The first file is v1's `source`: older clients read its language from meta.language.
      if (active.id === ws.SOURCE_ID && chosen !== ws.PLAINTEXT) meta.set('language', chosen)
    })
    if (active.id === ws.SOURCE_ID && chosen !== ws.PLAINTEXT) Rooms.update(roomId, { language: chosen }).catch(() => {})
  })

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

  /** User id -> the path of the file their view is in. */
  function whereIs () {
    const tree = currentTree()
    const where = new Map()
    awareness.getStates().forEach((s) => {
      if (s && s.user && typeof s.file === 'string' && tree.entries.has(s.file)) where.set(String(s.user.id), tree.entries.get(s.file).path)
    })
    return where
  }

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
  function openDefault () {
    if (tabs.activeId()) return
    const tree = currentTree()
    const pick = ws.entryFile(doc, tree) || tree.entries.get(ws.SOURCE_ID) || tree.files()[0]
    if (pick && pick.kind === 'file') tabs.open(pick.id)
  }
  /** A room without a tree (new, or v1 not yet migrated): the first file, the same on every peer. */
  function ensureFiles () {
    if (!canEdit() || ws.isV2(doc) || meta.get('schema') === ws.SCHEMA) return
    ws.ensureFirstFile(doc, ws.LANGUAGE_EXTENSION[roomLanguage()] ? roomLanguage() : 'python')
  }
  let settled = false
  const settle = () => { if (!settled) { settled = true; ensureFiles(); openDefault() } }
  idb.once('synced', () => { if (ws.isV2(doc) || doc.getText('source').length) settle() })
  provider.on('synced', settle)
  const settleTimer = setTimeout(settle, 2500) // alone in the room: nobody to sync with
  const onFiles = () => { dropTree(); if (settled) openDefault() } // shallow observers run before deep ones: drop the cache here too
  files.observe(onFiles)

  return {
    langSelect,
    runTarget,
    filesEl: fileTree.el,
    editorEl: tabs.el,
    tabs,
    fileTree,
    target,
    whereIs,
    tree: currentTree,
    /** The resolved tree entry of the file in view (`id`, `text`, `path`, ...), or null. */
    active: () => active,
    /** The live role changed: editable, file changes, language picker. */
    setCanEdit (value) {
      tabs.setReadOnly(!value)
      fileTree.setCanEdit(value)
      renderToolbar()
    },
    destroy () {
      meta.unobserve(onMeta)
      awareness.off('change', onAwareness)
      provider.off('synced', settle)
      clearTimeout(settleTimer)
      files.unobserve(onFiles)
      files.unobserveDeep(dropTree)
      fileTree.destroy()
      tabs.destroy()
    }
  }
}
