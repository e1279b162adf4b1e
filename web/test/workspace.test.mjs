// Unit tests of the browser's tree edits (web/src/workspace.js): `node --test web/test/workspace.test.mjs`
// (run by tests/test_web_workspace_units.py). The read-time rules are checked against Python's in
// tests/test_workspace_schema.py.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import {
  LANGUAGES, LIMITS, PLAINTEXT, createEntry, deleteEntry, ensureFirstFile, entryFile, importFiles, moveEntry, projectFiles, readTree,
  languageChoices, renameEntry, setEntryFile
} from '../src/workspace.js'

const paths = (doc) => Array.from(readTree(doc).entries.values()).map(e => e.path).sort()

test('create, rename, move, delete, entry file', () => {
  const doc = new Y.Doc()
  ensureFirstFile(doc, 'go')
  assert.deepEqual(paths(doc), ['main.go'])
  assert.equal(doc.getMap('meta').get('schema'), 2)
  const lib = createEntry(doc, 'folder', 'lib')
  const f = createEntry(doc, 'file', 'util.go', lib, { content: 'package lib\n' })
  assert.throws(() => createEntry(doc, 'file', 'util.go', lib), /already exists/)
  assert.throws(() => createEntry(doc, 'file', '../x', ''), /cannot contain/)
  assert.throws(() => moveEntry(doc, lib, lib), /into itself/)
  renameEntry(doc, f, 'u.go')
  moveEntry(doc, f, '')
  assert.deepEqual(paths(doc), ['lib', 'main.go', 'u.go'])
  setEntryFile(doc, f)
  assert.equal(entryFile(doc, readTree(doc)).path, 'u.go')
  moveEntry(doc, f, lib)
  deleteEntry(doc, lib)
  assert.deepEqual(paths(doc), ['main.go'])
  assert.equal(entryFile(doc, readTree(doc)), null) // the deleted entry file is no longer the entry
  assert.equal(doc.getText('file:' + f).toString(), '') // a deleted file's text is cleared
})

test('upload import: all or nothing, folders made, same path replaced, limits', () => {
  const doc = new Y.Doc()
  ensureFirstFile(doc)
  const done = importFiles(doc, [{ path: 'a/b/c.py', text: 'x' }, { path: 'main.py', text: 'print(2)\n' }])
  assert.deepEqual(done, { added: 1, replaced: 1 })
  assert.deepEqual(paths(doc), ['a', 'a/b', 'a/b/c.py', 'main.py'])
  assert.deepEqual(projectFiles(doc), [{ path: 'a/b/c.py', text: 'x' }, { path: 'main.py', text: 'print(2)\n' }])
  const before = Y.encodeStateVector(doc)
  assert.throws(() => importFiles(doc, [{ path: 'ok.py', text: '' }, { path: 'a/b', text: 'clash' }]), /is a folder/)
  assert.throws(() => importFiles(doc, [{ path: 'x/../y.py', text: '' }]), /not names/)
  const many = Array.from({ length: LIMITS.files }, (_, i) => ({ path: `f${i}.py`, text: '' }))
  assert.throws(() => importFiles(doc, many), /at most 500 files/)
  assert.deepEqual(Y.encodeStateVector(doc), before) // nothing written by a refused upload
})

test('language picker: what the runner advertises, plain text, the open file kept; all as the fallback', () => {
  const ids = (list) => list.map(l => l.id)
  // No runner in the room yet (or one that advertises nothing): every language the client knows.
  assert.deepEqual(ids(languageChoices([])), ids(LANGUAGES))
  assert.deepEqual(ids(languageChoices([{ service: 'runner' }, null])), ids(LANGUAGES))
  // A runner offering two: those two (in the client's order) and plain text.
  assert.deepEqual(ids(languageChoices([{ service: 'runner', languages: ['ruby', 'python', 42] }])), ['python', 'ruby', PLAINTEXT])
  // Two runners: the union. Unknown ids are not listed (the client has no label for them).
  assert.deepEqual(ids(languageChoices([{ languages: ['go'] }, { languages: ['c', 'cobol'] }])), ['c', 'go', PLAINTEXT])
  // The open file's language stays listed although no runner offers it; an unknown one is not invented.
  assert.deepEqual(ids(languageChoices([{ languages: ['python'] }], 'rust')), ['python', PLAINTEXT, 'rust'])
  assert.deepEqual(ids(languageChoices([{ languages: ['python'] }], 'python')), ['python', PLAINTEXT])
  assert.deepEqual(ids(languageChoices([{ languages: ['python'] }], 'klingon')), ['python', PLAINTEXT])
})
