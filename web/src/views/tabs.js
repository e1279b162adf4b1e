// Tabs of the open files and the one editor: CodeMirror on the active file's Y.Text. One editor
// at a time (made anew on a tab switch): y-codemirror's awareness `cursor` then always belongs to
// the file in view, and the awareness field `file` (its id) tells the others which file that is,
// so remote cursors show in the right file and the people list says where everyone is.
// A tab closes when its file is deleted (with a message); renames and language changes follow.
import { createEditor } from '../editor.js'
import { LIMITS, fileText, readTree } from '../workspace.js'
import { h, notice } from '../ui.js'

/**
 * @param {{doc: any, awareness: any, readOnly: boolean, onRun: () => void,
 *   onActive: (entry: object|null) => void}} opts
 */
export function createTabs ({ doc, awareness, readOnly, onRun, onActive }) {
  const bar = h('div.tabs', { testid: 'tabs' })
  const host = h('div.editor', { testid: 'editor' })
  const msg = notice('editor-message')
  const el = h('div.tabbed', bar, msg.el, host)
  const files = doc.getMap('files')
  let open = [] // ids, in tab order
  let active = null
  let editor = null
  let ro = !!readOnly
  let lastLanguage = null
  let lastName = null

  function mount (entry) {
    if (editor) { editor.destroy(); editor = null }
    host.replaceChildren()
    awareness.setLocalStateField('cursor', null)
    awareness.setLocalStateField('file', entry ? entry.id : null)
    lastLanguage = entry ? entry.language : null
    if (!entry) {
      host.append(h('div.muted.no-file', { testid: 'no-file' }, 'No file open. Pick one in the file tree.'))
      return
    }
    editor = createEditor(host, {
      ytext: fileText(doc, entry),
      awareness,
      language: entry.language,
      readOnly: ro,
      onRun,
      maxBytes: LIMITS.fileBytes,
      onLimit: () => msg.show(`${entry.name} has reached the size limit of a file (${LIMITS.fileBytes / (1024 * 1024)} MiB); that change was not made.`, 'error')
    })
  }

  function render () {
    const tree = readTree(doc)
    const gone = open.filter(id => !tree.entries.has(id) || tree.entries.get(id).kind !== 'file')
    if (gone.length) {
      open = open.filter(id => !gone.includes(id))
      if (gone.includes(active)) {
        msg.show(`${lastName || 'The file'} was deleted.`, 'warn')
        active = null
      }
    }
    if (!active && open.length) active = open[open.length - 1]
    const entry = active ? tree.entries.get(active) : null
    if (editor && (!entry || editor.ytext !== fileText(doc, entry))) mount(entry)
    else if (!editor && (entry || host.childElementCount === 0)) mount(entry)
    else if (entry && entry.language !== lastLanguage) { lastLanguage = entry.language; editor.setLanguage(entry.language) }
    lastName = entry ? entry.name : null
    bar.replaceChildren(...open.map((id) => {
      const e = tree.entries.get(id)
      const close = h('button.link.tab-close', { testid: 'tab-close', title: 'Close' }, '×')
      close.addEventListener('click', (ev) => { ev.stopPropagation(); closeTab(id) })
      const tab = h('span.tab', { testid: 'tab', 'data-path': e.path, class: `tab ${id === active ? 'active' : ''}`, title: e.path }, e.name, close)
      tab.addEventListener('click', () => openTab(id))
      return tab
    }))
    onActive(entry || null)
  }

  function openTab (id) {
    msg.clear()
    if (!open.includes(id)) open.push(id)
    active = id
    render()
  }

  function closeTab (id) {
    open = open.filter(x => x !== id)
    if (active === id) active = open.length ? open[open.length - 1] : null
    render()
  }

  let timer = null
  const later = () => { if (!timer) timer = setTimeout(() => { timer = null; render() }, 20) }
  files.observeDeep(later)

  return {
    el,
    open: openTab,
    close: closeTab,
    activeId: () => active,
    editor: () => editor,
    render,
    setReadOnly (value) { ro = !!value; if (editor) editor.setReadOnly(ro) },
    destroy () {
      clearTimeout(timer)
      files.unobserveDeep(later)
      if (editor) editor.destroy()
    }
  }
}
