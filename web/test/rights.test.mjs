// Unit tests of web/src/rights.js (the browser's trust rules) in Node: `node --test web/test/rights.test.mjs`.
// Run by tests/test_web_rights.py. The same rules are exercised end to end in headless Chromium
// by tests/test_trust_web.py.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import {
  RateBucket, indexPresence, linkRights, mayReceiveApp, mayWriteLocal, mayWriteMain, mayWriteNamed,
  presenceChanges, principalOf, samePrincipal, sanitizeAwareness
} from '../src/rights.js'
import { decodeAwarenessEntries, decodeDocSync, encodeAwarenessEntries, encodeDocSync, CAPS } from '../src/wire.js'
import * as decoding from 'lib0/decoding'

const alice = { user_id: 'a1', name: 'Alice', role: 'owner' }
const bob = { user_id: 'b2', name: 'Bob', role: 'editor' }
const carol = { user_id: 'c3', name: 'Carol', role: 'viewer' }

test('principals come from stamps only', () => {
  assert.deepEqual(principalOf(bob), { userId: 'b2', name: 'Bob', role: 'editor' })
  assert.deepEqual(principalOf({ service: 'runner' }), { service: 'runner' })
  assert.equal(principalOf(null), null)
  assert.equal(principalOf({ name: 'no id' }), null)
  assert.ok(samePrincipal(principalOf(bob), principalOf({ ...bob, role: 'viewer', name: 'Robert' })))
  assert.ok(!samePrincipal(principalOf(bob), principalOf(carol)))
  assert.ok(!samePrincipal(principalOf({ service: 'runner' }), principalOf({ service: 'persistence' })))
  assert.ok(!samePrincipal(null, null))
})

test('writers of the main document: owner, editor, persistence; presence role wins over the stamp', () => {
  const none = new Map()
  assert.ok(mayWriteMain(linkRights(principalOf(alice), none)))
  assert.ok(mayWriteMain(linkRights(principalOf(bob), none)))
  assert.ok(!mayWriteMain(linkRights(principalOf(carol), none)))
  assert.ok(mayWriteMain(linkRights(principalOf({ service: 'persistence' }), none)))
  assert.ok(!mayWriteMain(linkRights(principalOf({ service: 'runner' }), none)))
  assert.ok(!mayWriteMain(linkRights(null, none)))
  // Bob demoted: presence says viewer while his last stamp still says editor.
  const demoted = indexPresence([{ user_id: 'b2', name: 'Bob', role: 'viewer', peer_ids: ['p'] }])
  assert.ok(!mayWriteMain(linkRights(principalOf(bob), demoted)))
  // Carol promoted.
  const promoted = indexPresence([{ user_id: 'c3', name: 'Carol', role: 'editor', peer_ids: [] }])
  assert.ok(mayWriteMain(linkRights(principalOf(carol), promoted)))
  // Gone from presence: no rights until listed again.
  assert.ok(!mayWriteMain(linkRights(principalOf(bob), none, new Set(['b2']))))
  assert.ok(mayWriteLocal('editor') && mayWriteLocal('owner') && !mayWriteLocal('viewer') && !mayWriteLocal(null))
})

test('named document runs: runner and persistence only', () => {
  assert.ok(mayWriteNamed('runs', { service: 'runner' }))
  assert.ok(mayWriteNamed('runs', { service: 'persistence' }))
  assert.ok(!mayWriteNamed('runs', { userId: 'a1', role: 'owner' }))
  assert.ok(!mayWriteNamed('other', { service: 'runner' }))
  assert.ok(!mayWriteNamed('__proto__', { service: 'runner' }))
})

test('presence changes: gone users stay gone until listed again', () => {
  const both = indexPresence([{ user_id: 'a1', role: 'owner' }, { user_id: 'b2', role: 'editor' }])
  const onlyA = indexPresence([{ user_id: 'a1', role: 'owner' }])
  let r = presenceChanges(both, onlyA, new Set())
  assert.deepEqual([...r.gone], ['b2'])
  r = presenceChanges(onlyA, onlyA, r.gone)
  assert.deepEqual([...r.gone], ['b2'])
  r = presenceChanges(onlyA, both, r.gone)
  assert.deepEqual([...r.gone], [])
  assert.deepEqual([...r.returned], ['b2'])
  // A linked user never listed and absent from a presence frame is gone too.
  r = presenceChanges(new Map(), onlyA, new Set(), ['c3'])
  assert.deepEqual([...r.gone], ['c3'])
  assert.equal(indexPresence('junk').size, 0)
})

test('awareness from a person: stamped id, stamped name, no service or saved', () => {
  const rights = linkRights(principalOf(bob), new Map())
  const ok = sanitizeAwareness({ user: { id: 'b2', name: 'Mallory', color: 'red' }, cursor: null }, rights)
  assert.deepEqual(ok.state, { user: { id: 'b2', name: 'Bob', color: 'red' }, cursor: null })
  assert.ok(sanitizeAwareness({ user: { id: 'a1', name: 'Alice' } }, rights).drop)
  assert.ok(sanitizeAwareness({ cursor: 1 }, rights).drop)
  assert.ok(sanitizeAwareness({ user: { id: 'b2' }, saved: { status: 'saved' } }, rights).drop)
  assert.ok(sanitizeAwareness({ user: { id: 'b2' }, service: 'persistence' }, rights).drop)
  assert.ok(sanitizeAwareness({ user: { id: 'b2' } }, rights, 100_000).drop)
  assert.ok(sanitizeAwareness([1], rights).drop)
  assert.deepEqual(sanitizeAwareness(null, rights), { state: null })
  assert.ok(sanitizeAwareness({ user: { id: 'b2' } }, null).drop)
})

test('awareness from a service: only its own service', () => {
  const persistence = { service: 'persistence' }
  assert.ok(!sanitizeAwareness({ service: 'persistence', saved: { status: 'saved' } }, persistence).drop)
  assert.ok(sanitizeAwareness({ service: 'runner', languages: [] }, persistence).drop)
  assert.ok(sanitizeAwareness({ saved: { status: 'saved' } }, persistence).drop)
})

test('app messages: run replies only from the runner', () => {
  assert.ok(mayReceiveApp({ op: 'run-accepted', run_id: 'r' }, { service: 'runner' }))
  assert.ok(!mayReceiveApp({ op: 'run-accepted', run_id: 'r' }, { service: 'persistence' }))
  assert.ok(!mayReceiveApp({ op: 'run-refused', run_id: 'r' }, { userId: 'a1', role: 'owner' }))
  assert.ok(!mayReceiveApp({ op: 'run', run_id: 'r' }, { service: 'runner' }))
  assert.ok(mayReceiveApp({ op: 'input-refused', run_id: 'r' }, { service: 'runner' }))
  assert.ok(!mayReceiveApp({ op: 'input-accepted', run_id: 'r' }, { userId: 'b2', role: 'editor' }))
  assert.ok(!mayReceiveApp({ op: 'input', run_id: 'r' }, { service: 'runner' }))
  assert.ok(!mayReceiveApp({}, { service: 'runner' }))
})

test('rate bucket', () => {
  const b = new RateBucket(10, 3, 0)
  assert.deepEqual([b.take(0), b.take(0), b.take(0), b.take(0)], [true, true, true, false])
  assert.ok(b.take(100)) // one token back after 100 ms at 10/s
  assert.ok(!b.take(100))
})

test('wire: named-document sync and awareness entries round-trip; caps', () => {
  const msg = encodeDocSync('runs', 2, new Uint8Array([0, 0]))
  const d = decoding.createDecoder(msg)
  assert.equal(decoding.readVarUint(d), 102)
  assert.deepEqual(decodeDocSync(d), { name: 'runs', syncType: 2, payload: new Uint8Array([0, 0]) })
  const bad = decoding.createDecoder(encodeDocSync('runs', 7, new Uint8Array([0, 0])))
  decoding.readVarUint(bad)
  assert.throws(() => decodeDocSync(bad))
  const entries = [{ clientID: 5, clock: 2, state: { user: { id: 'b2', name: 'Bøb' } } }, { clientID: 6, clock: 1, state: null }]
  const back = decodeAwarenessEntries(encodeAwarenessEntries(entries))
  assert.deepEqual(back.map(({ clientID, clock, state }) => ({ clientID, clock, state })), entries)
  assert.throws(() => decodeAwarenessEntries(encodeAwarenessEntries(entries), 1))
  assert.deepEqual(CAPS, ['chunk', 'app', 'docs', 'roles', 'mesh', 'relayed'])
})
