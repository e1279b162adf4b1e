// CodeMirror 6 bound to one file's Y.Text with remote cursors (y-codemirror.next: a remote cursor
// is a relative position in some root Y.Text, so it shows only in the editor of that file), the
// file's language (compartment), read-only for viewers (compartment), and the per-file size limit
// (a transaction that would make the file larger than the limit is refused; `onLimit` says so).
import { EditorView, basicSetup } from 'codemirror'
import { Compartment, EditorState } from '@codemirror/state'
import { keymap } from '@codemirror/view'
import { StreamLanguage } from '@codemirror/language'
import { python } from '@codemirror/lang-python'
import { javascript } from '@codemirror/lang-javascript'
import { cpp } from '@codemirror/lang-cpp'
import { java } from '@codemirror/lang-java'
import { go } from '@codemirror/lang-go'
import { rust } from '@codemirror/lang-rust'
import { shell } from '@codemirror/legacy-modes/mode/shell'
import { ruby } from '@codemirror/legacy-modes/mode/ruby'
import { yCollab } from 'y-codemirror.next'
import * as Y from 'yjs'

export function languageSupport (id) {
  switch (id) {
    case 'python': return python()
    case 'javascript': return javascript()
    case 'typescript': return javascript({ typescript: true })
    case 'c': case 'cpp': return cpp()
    case 'java': return java()
    case 'go': return go()
    case 'rust': return rust()
    case 'bash': return StreamLanguage.define(shell)
    case 'ruby': return StreamLanguage.define(ruby)
    default: return [] // plain text
  }
}

/** UTF-8 bytes of a CodeMirror document; cheap when it cannot be near the limit. */
function docBytes (doc, limit) {
  if (doc.length * 3 <= limit) return doc.length // an upper bound below the limit is enough
  let n = 0
  for (const line of doc.iterLines()) n += new TextEncoder().encode(line).length + 1
  return n - 1
}

/**
 * @param {HTMLElement} parent
 * @param {{ytext: Y.Text, awareness: any, language: string, readOnly: boolean, onRun: () => void,
 *   maxBytes?: number, onLimit?: () => void}} opts
 */
export function createEditor (parent, { ytext, awareness, language, readOnly, onRun, maxBytes = Infinity, onLimit = () => {} }) {
  const lang = new Compartment()
  const ro = new Compartment()
  const undoManager = new Y.UndoManager(ytext)
  const runKeys = keymap.of([{ key: 'Mod-Enter', preventDefault: true, run: () => { onRun(); return true } }])
  // Local typing and pasting only: remote changes (annotated by y-codemirror) always apply.
  const sizeLimit = EditorState.transactionFilter.of(tr => {
    if (!tr.docChanged || !tr.isUserEvent('input') && !tr.isUserEvent('paste') && !tr.isUserEvent('drop')) return tr
    if (tr.newDoc.length <= tr.startState.doc.length) return tr
    if (docBytes(tr.newDoc, maxBytes) <= maxBytes) return tr
    setTimeout(onLimit, 0)
    return []
  })
  const view = new EditorView({
    parent,
    state: EditorState.create({
      doc: ytext.toString(),
      extensions: [
        runKeys,
        basicSetup,
        sizeLimit,
        lang.of(languageSupport(language)),
        ro.of([EditorState.readOnly.of(readOnly), EditorView.editable.of(!readOnly)]),
        yCollab(ytext, awareness, { undoManager }),
        EditorView.theme({ '&': { height: '100%' }, '.cm-scroller': { fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, monospace' } })
      ]
    })
  })
  return {
    view,
    ytext,
    setLanguage (id) { view.dispatch({ effects: lang.reconfigure(languageSupport(id)) }) },
    setReadOnly (value) { view.dispatch({ effects: ro.reconfigure([EditorState.readOnly.of(value), EditorView.editable.of(!value)]) }) },
    destroy () { view.destroy(); undoManager.destroy() }
  }
}
