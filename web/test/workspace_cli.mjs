// Test harness: web/src/workspace.js for tests/test_workspace_schema.py (the same trees resolved by
// peer/workspace.py and here must give the same paths). One JSON request per line on stdin:
// {op: 'resolve', raw} -> {entries: {id: {name, parent, path, kind, language, text}}};
// {op: 'init'} -> {update: base64 of INIT_UPDATE}; {op: 'apply', updates: [base64]} -> the resolved tree
// of a Y.Doc the updates were applied to.
import { createInterface } from 'node:readline'
import * as Y from 'yjs'
import { INIT_UPDATE, readTree, resolveTree } from '../src/workspace.js'

const plain = (entries) => Object.fromEntries(Array.from(entries.values(), e => [e.id, {
  name: e.name, parent: e.parent, path: e.path, kind: e.kind, language: e.language, text: e.text
}]))

function handle (req) {
  switch (req.op) {
    case 'resolve':
      return { entries: plain(resolveTree(req.raw)) }
    case 'init':
      return { update: Buffer.from(INIT_UPDATE).toString('base64') }
    case 'apply': {
      const doc = new Y.Doc()
      for (const u of req.updates) Y.applyUpdate(doc, new Uint8Array(Buffer.from(u, 'base64')))
      const tree = readTree(doc)
      const texts = {}
      tree.files().forEach(e => { texts[e.path] = doc.getText(e.text).toString() })
      return { entries: plain(tree.entries), texts }
    }
    default:
      throw new Error('unknown op ' + req.op)
  }
}

const rl = createInterface({ input: process.stdin })
rl.on('line', (line) => {
  let out
  try { out = handle(JSON.parse(line)) } catch (err) { out = { error: String(err && err.stack || err) } }
  process.stdout.write(JSON.stringify(out) + '\n')
})
