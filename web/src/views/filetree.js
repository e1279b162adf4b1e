// The file tree panel: the room's files and folders (workspace.js reads them with the shared
// rules), open a file, and — for owners and editors — create, rename, move (drag a row onto a
// folder, or "Move to"), delete, set the entry file, upload files or a zip, download the project
// as a zip. Every change is one Yjs transaction; limits and name rules are checked first and a
// refusal is a message, never a half-done change. Viewers get the tree and Download only.
import {
  LIMITS, createEntry, deleteEntry, entryFile, importFiles, moveEntry, projectFiles, readTree, renameEntry,
  setEntryFile
} from '../workspace.js'
import { MAX_UPLOAD_BYTES, decodeText, makeZip, readZip, uploadPathProblem } from '../zip.js'
import { h, notice } from '../ui.js'

/**
 * @param {{doc: any, canEdit: boolean, onOpen: (id: string) => void, activeId: () => string|null,
 *   zipName: () => string, peopleIn: () => Map<string, string[]>}} opts
 *   `peopleIn()`: file id -> names of the others whose view is in it (shown as dots).
 */
export function createFileTree ({ doc, canEdit, onOpen, activeId, zipName, peopleIn = () => new Map() }) {
  const msg = notice('tree-message')
  const list = h('ul.tree', { testid: 'file-tree' })
  const newFile = h('button.small', { testid: 'tree-new-file', title: 'New file' }, '+ File')
  const newFolder = h('button.small', { testid: 'tree-new-folder', title: 'New folder' }, '+ Folder')
  const upload = h('input', { type: 'file', multiple: true, testid: 'tree-upload-input', hidden: true })
  const uploadBtn = h('button.small', { testid: 'tree-upload', title: 'Upload files or a .zip' }, 'Upload')
  const download = h('button.small', { testid: 'tree-download', title: 'Download the project as a zip' }, 'Download')
  const editTools = h('span.tree-edit-tools', newFile, newFolder, uploadBtn)
  const el = h('section.panel.files', { testid: 'files-panel' },
    h('div.tree-head', h('h2', 'Files'), editTools, download), msg.el, list, upload)
  const files = doc.getMap('files')
  const meta = doc.getMap('meta')
  let allowed = !!canEdit
  let folder = '' // where "+ File" / "+ Folder" / uploads go: the clicked folder, else the active file's
  let editing = null // {mode: 'new-file'|'new-folder'|'rename', id?, parent}
  let armed = null // id whose delete button asks for confirmation
  const collapsed = new Set()
  let timer = null

  const fail = (err) => msg.show(err.message || String(err), 'error')
  const act = (fn) => { msg.clear(); try { fn() } catch (err) { fail(err) } }

  function targetFolder (tree) {
    if (folder && tree.entries.get(folder)?.kind === 'folder') return folder
    const active = tree.entries.get(activeId())
    return active ? active.parent : ''
  }

  function nameInput (value, commit) {
    // One element per name being typed (render() may run again before it has the focus).
    if (editing && editing.input) return editing.input
    const input = h('input.tree-name', { testid: 'tree-name-input', value, spellcheck: 'false' })
    if (editing) editing.input = input
    let done = false
    const finish = (ok) => {
      if (done) return
      done = true
      editing = null
      if (ok && input.value.trim() !== '') act(() => commit(input.value.trim()))
      render()
    }
    input.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter') { ev.preventDefault(); finish(true) } else if (ev.key === 'Escape') finish(false)
    })
    input.addEventListener('blur', () => finish(true))
    setTimeout(() => { input.focus(); const dot = value.lastIndexOf('.'); input.setSelectionRange(0, dot > 0 ? dot : value.length) }, 0)
    return input
  }

  function row (tree, e, depth, entryId, people) {
    const isFolder = e.kind === 'folder'
    const label = h('span.tree-label', { title: e.path }, isFolder ? `${collapsed.has(e.id) ? '▸' : '▾'} ${e.name}` : e.name)
    const li = h('li.tree-row', {
      testid: 'tree-row',
      'data-path': e.path,
      'data-kind': e.kind,
      class: `tree-row ${e.id === activeId() ? 'active' : ''} ${isFolder && e.id === folder ? 'folder-selected' : ''}`,
      style: `padding-left:${6 + depth * 14}px`,
      draggable: allowed ? 'true' : null
    })
    if (editing && editing.mode === 'rename' && editing.id === e.id) {
      li.append(nameInput(e.name, (name) => renameEntry(doc, e.id, name)))
      return li
    }
    li.append(label)
    if (e.id === entryId) li.append(h('span.tag.entry', { testid: 'tree-entry-mark', title: 'Run runs this file' }, 'entry'))
    if (e.name !== e.storedName && typeof e.storedName === 'string') li.append(h('span.tag.warn', { title: `stored as "${e.storedName}": two names clashed; rename one` }, 'renamed'))
    for (const name of people.get(e.id) || []) li.append(h('span.tree-person', { title: `${name} is here` }, name.slice(0, 1)))
    li.addEventListener('click', (ev) => {
      if (ev.target.closest('.tree-actions')) return
      if (isFolder) {
        folder = e.id
        if (collapsed.has(e.id)) collapsed.delete(e.id)
        else collapsed.add(e.id)
        render()
      } else {
        folder = ''
        onOpen(e.id)
      }
    })
    if (allowed) {
      const rename = h('button.link', { testid: 'tree-rename', title: 'Rename' }, 'rename')
      rename.addEventListener('click', () => { editing = { mode: 'rename', id: e.id }; render() })
      const del = h('button.link.tree-del', { testid: 'tree-delete', title: 'Delete' }, armed === e.id ? 'confirm delete' : 'delete')
      del.addEventListener('click', () => {
        if (armed !== e.id) { armed = e.id; render(); return }
        armed = null
        act(() => deleteEntry(doc, e.id))
      })
      const move = h('select.tree-move', { testid: 'tree-move', title: 'Move to folder' },
        h('option', { value: '\u0000' }, 'move to…'),
        h('option', { value: '' }, '(top level)'),
        Array.from(tree.entries.values()).filter(f => f.kind === 'folder' && f.id !== e.id && !f.path.startsWith(e.path + '/'))
          .sort((a, b) => a.path.localeCompare(b.path)).map(f => h('option', { value: f.id }, f.path)))
      move.addEventListener('change', () => { if (move.value !== '\u0000') act(() => moveEntry(doc, e.id, move.value)) })
      const actions = h('span.tree-actions', rename, move, del)
      if (!isFolder) {
        const entry = h('button.link', { testid: 'tree-set-entry', title: 'Run runs this file (for everyone)' }, e.id === entryId ? 'unset entry' : 'set entry')
        entry.addEventListener('click', () => act(() => setEntryFile(doc, e.id === entryId ? null : e.id)))
        actions.prepend(entry)
      }
      li.append(actions)
      li.addEventListener('dragstart', (ev) => { ev.dataTransfer.setData('text/x-codesync-entry', e.id) })
      if (isFolder) dropTarget(li, e.id)
    }
    return li
  }

  function dropTarget (node, parentId) {
    node.addEventListener('dragover', (ev) => { if (ev.dataTransfer.types.includes('text/x-codesync-entry')) ev.preventDefault() })
    node.addEventListener('drop', (ev) => {
      const id = ev.dataTransfer.getData('text/x-codesync-entry')
      if (!id) return
      ev.preventDefault()
      ev.stopPropagation()
      act(() => moveEntry(doc, id, parentId))
    })
  }
  dropTarget(list, '')

  function render () {
    timer = null
    // Someone is typing a name: moving its input would blur it, and a blur commits the name
    // half-typed. The tree is drawn again when the name is done (finish() renders).
    if (editing && editing.input && editing.input.isConnected && document.activeElement === editing.input) return
    const tree = readTree(doc)
    const entry = entryFile(doc, tree)
    const people = peopleIn()
    const rows = []
    const walk = (parent, depth) => {
      if (editing && editing.mode !== 'rename' && editing.parent === parent) {
        const kind = editing.mode === 'new-folder' ? 'folder' : 'file'
        rows.push(h('li.tree-row', { style: `padding-left:${6 + depth * 14}px` },
          nameInput(kind === 'file' ? 'untitled.py' : 'folder', (name) => {
            const id = createEntry(doc, kind, name, parent)
            if (kind === 'file') onOpen(id)
            else folder = id
          })))
      }
      for (const e of tree.children(parent)) {
        rows.push(row(tree, e, depth, entry && entry.id, people))
        if (e.kind === 'folder' && !collapsed.has(e.id)) walk(e.id, depth + 1)
      }
    }
    walk('', 0)
    if (!rows.length) rows.push(h('li.muted.tree-empty', allowed ? 'No files yet: make one with + File.' : 'No files yet.'))
    list.replaceChildren(...rows)
  }
  const later = () => { if (!timer) timer = setTimeout(render, 20) }

  newFile.addEventListener('click', () => { editing = { mode: 'new-file', parent: targetFolder(readTree(doc)) }; collapsed.delete(editing.parent); render() })
  newFolder.addEventListener('click', () => { editing = { mode: 'new-folder', parent: targetFolder(readTree(doc)) }; collapsed.delete(editing.parent); render() })
  uploadBtn.addEventListener('click', () => upload.click())
  upload.addEventListener('change', async () => {
    const chosen = Array.from(upload.files || [])
    upload.value = ''
    msg.clear()
    try {
      const done = await uploadFiles(chosen)
      msg.show(`Uploaded: ${done.added} new file${done.added === 1 ? '' : 's'}${done.replaced ? `, ${done.replaced} replaced` : ''}.`, 'ok')
    } catch (err) { fail(err) }
  })

  /** Everything is read and checked before the one transaction that adds it. */
  async function uploadFiles (chosen) {
    if (!allowed) throw new Error('Viewers cannot add files.')
    const tree = readTree(doc)
    const base = targetFolder(tree)
    const prefix = base ? tree.entries.get(base).path + '/' : ''
    const out = []
    let total = 0
    for (const file of chosen) {
      total += file.size
      if (total > MAX_UPLOAD_BYTES) throw new Error(`the upload is larger than ${MAX_UPLOAD_BYTES / (1024 * 1024)} MiB`)
      const bytes = new Uint8Array(await file.arrayBuffer())
      const isZip = /\.zip$/i.test(file.name) || (bytes[0] === 0x50 && bytes[1] === 0x4b && bytes[2] === 3 && bytes[3] === 4)
      if (isZip) {
        for (const f of readZip(bytes)) out.push({ path: prefix + f.path, text: f.text })
        continue
      }
      const problem = uploadPathProblem(file.name)
      if (problem) throw new Error(`${JSON.stringify(file.name)} is refused: ${problem}`)
      if (file.size > LIMITS.fileBytes) throw new Error(`${file.name} is larger than ${LIMITS.fileBytes / (1024 * 1024)} MiB`)
      out.push({ path: prefix + file.name, text: decodeText(file.name, bytes) })
    }
    for (const f of out) {
      const problem = uploadPathProblem(f.path)
      if (problem) throw new Error(`${JSON.stringify(f.path)} is refused: ${problem}`)
    }
    return importFiles(doc, out)
  }

  download.addEventListener('click', () => {
    const zip = makeZip(projectFiles(doc))
    const a = h('a', { href: URL.createObjectURL(new Blob([zip], { type: 'application/zip' })), download: zipName() })
    document.body.append(a)
    a.click()
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove() }, 1000)
  })

  const onEsc = (ev) => { if (ev.key === 'Escape' && armed) { armed = null; render() } }
  el.addEventListener('keydown', onEsc)
  files.observeDeep(later)
  meta.observe(later)

  function setCanEdit (value) {
    allowed = !!value
    editTools.hidden = !allowed
    if (!allowed) { editing = null; armed = null }
    render()
  }
  setCanEdit(canEdit)

  return {
    el,
    render: later,
    setCanEdit,
    uploadFiles,
    destroy () {
      clearTimeout(timer)
      files.unobserveDeep(later)
      meta.unobserve(later)
    }
  }
}
