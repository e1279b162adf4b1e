// CodeMirror 6 bound to the room's Y.Text with remote cursors (y-codemirror.next), a language
// compartment (the shared language picker reconfigures it) and a read-only compartment (viewers).
import { EditorView, basicSetup } from 'codemirror'
import { Compartment, EditorState } from '@codemirror/state'
import { keymap } from '@codemirror/view'
import { StreamLanguage } from '@codemirror/language'
import { python } from '@codemirror/lang-python'
import { javascript } from '@codemirror/lang-javascript'
import { cpp } from '@codemirror/lang-cpp'
import { shell } from '@codemirror/legacy-modes/mode/shell'
import { yCollab } from 'y-codemirror.next'
import * as Y from 'yjs'

function languageSupport (id) {
  switch (id) {
    case 'python': return python()
    case 'javascript': return javascript()
    case 'c': return cpp()
    case 'bash': return StreamLanguage.define(shell)
    default: return []
  }
}

/**
 * @param {HTMLElement} parent
 * @param {{ytext: Y.Text, awareness: any, language: string, readOnly: boolean, onRun: () => void}} opts
 */
export function createEditor (parent, { ytext, awareness, language, readOnly, onRun }) {
  const lang = new Compartment()
  const ro = new Compartment()
  const undoManager = new Y.UndoManager(ytext)
  const runKeys = keymap.of([{ key: 'Mod-Enter', preventDefault: true, run: () => { onRun(); return true } }])
  const view = new EditorView({
    parent,
    state: EditorState.create({
      doc: ytext.toString(),
      extensions: [
        runKeys,
        basicSetup,
        lang.of(languageSupport(language)),
        ro.of([EditorState.readOnly.of(readOnly), EditorView.editable.of(!readOnly)]),
        yCollab(ytext, awareness, { undoManager }),
        EditorView.theme({ '&': { height: '100%' }, '.cm-scroller': { fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, monospace' } })
      ]
    })
  })
  return {
    view,
    setLanguage (id) { view.dispatch({ effects: lang.reconfigure(languageSupport(id)) }) },
    setReadOnly (value) { view.dispatch({ effects: ro.reconfigure([EditorState.readOnly.of(value), EditorView.editable.of(!value)]) }) },
    destroy () { view.destroy(); undoManager.destroy() }
  }
}
