// The pure parts of the history views (web/src/history.js): blame from Yjs items, line diffs,
// the restore edit, the player's clock; and the rule that history answers come only from the
// persistence peer (web/src/rights.js).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import * as Y from 'yjs'
import { applyPatches, blameRuns, diffLines, dueUpdates, lineClients, MAX_PAUSE_MS, restoreInto, restorePatches, splitLines } from '../src/history.js'
import { mayReceiveApp } from '../src/rights.js'

test('history answers only from the persistence peer', () => {
  assert.ok(mayReceiveApp({ op: 'history-reply', id: 1 }, { service: 'persistence' }))
  assert.ok(mayReceiveApp({ op: 'history-changed', what: 'checkpoint' }, { service: 'persistence' }))
  assert.ok(!mayReceiveApp({ op: 'history-reply', id: 1 }, { service: 'runner' }))
  assert.ok(!mayReceiveApp({ op: 'history-reply', id: 1 }, { userId: 'a', role: 'owner' }))
  assert.ok(!mayReceiveApp({ op: 'history', id: 1 }, { service: 'persistence' }))
  assert.ok(mayReceiveApp({ op: 'run-accepted' }, { service: 'runner' }))
})

test('blame: each character traced to the client that typed it', () => {
  const a = new Y.Doc()
  const b = new Y.Doc()
  const ta = a.getText('source')
  const tb = b.getText('source')
  ta.insert(0, 'alice line\n')
  Y.applyUpdate(b, Y.encodeStateAsUpdate(a))
  tb.insert(tb.length, 'bob line\n')
  tb.insert(0, '😀 ')
  Y.applyUpdate(a, Y.encodeStateAsUpdate(b))
  ta.delete(3, 2) // "alice" -> "ace"... (positions after the emoji: UTF-16)
  Y.applyUpdate(b, Y.encodeStateAsUpdate(a))
  const runs = blameRuns(tb)
  const text = tb.toString()
  assert.equal(runs.map(r => text.slice(r.from, r.to)).join(''), text)
  assert.deepEqual(runs.map(r => r.client === b.clientID ? 'B' : 'A'), ['B', 'A', 'B'])
  const lines = lineClients(text, runs)
  assert.equal(lines[0].client, a.clientID) // "😀 ace line": mostly alice's
  assert.equal(lines[1].client, b.clientID)
  assert.equal(lines[2].client, null)
})

test('line diff and the restore edit', () => {
  const now = 'import os\nprint(1)\nprint(2)\nend'
  const old = 'import os\nimport sys\nprint(2)\nend\n'
  assert.deepEqual(diffLines(now, old).map(d => d.op + d.line), [' import os', '-print(1)', '+import sys', ' print(2)', ' end', '+'])
  for (const [a, b] of [[now, old], [old, now], ['', 'x\ny'], ['x\ny\n', ''], ['same', 'same'], ['a\nb\nc', 'c\nb\na'], ['\n\n', '\n']]) {
    assert.equal(applyPatches(a, restorePatches(a, b)), b, JSON.stringify([a, b]))
  }
  assert.deepEqual(splitLines('a\n\nb'), ['a\n', '\n', 'b'])
  // restoring keeps the shared lines' items (their authors stay)
  const doc = new Y.Doc()
  const t = doc.getText('source')
  t.insert(0, now)
  const keep = blameRuns(t)[0].client
  restoreInto(t, old)
  assert.equal(t.toString(), old)
  assert.equal(lineClients(t.toString(), blameRuns(t))[0].client, keep)
})

test('a random restore always lands on the target', () => {
  let seed = 5
  const rnd = (n) => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n }
  const words = ['a', 'b', 'c\n', '\n', 'def f():\n', '  return 1\n', '😀']
  const make = () => Array.from({ length: rnd(30) }, () => words[rnd(words.length)]).join('')
  for (let i = 0; i < 300; i++) {
    const a = make()
    const b = make()
    assert.equal(applyPatches(a, restorePatches(a, b)), b)
  }
})

test('the player clock: real time at the chosen speed, long pauses shortened', () => {
  const q = [{ at: 1000 }, { at: 1100 }, { at: 1200 }, { at: 100000 }]
  assert.deepEqual(dueUpdates(q, 1000, 50, 1), { count: 1, at: 1050 })
  assert.equal(dueUpdates(q, 1000, 200, 1).count, 3)
  assert.equal(dueUpdates(q, 1000, 10, 32).count, 3) // 320 ms of room time in 10 ms
  // the 98.8 s pause takes MAX_PAUSE_MS of playback, not 98.8 s
  assert.equal(dueUpdates(q.slice(3), 1200, MAX_PAUSE_MS - 10, 1).count, 0)
  assert.equal(dueUpdates(q.slice(3), 1200, MAX_PAUSE_MS + 1, 1).count, 1)
  assert.equal(dueUpdates(q.slice(3), 1200, MAX_PAUSE_MS + 1, 32).count, 1)
})
