// Unit tests of web/src/zip.js: `node --test web/test/zip.test.mjs` (run by tests/test_web_workspace_units.py).
// Archives with links and bad paths are made by Python's zipfile in tests/test_web_workspace_units.py;
// here: round trips and hand-made refusals.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { zipSync } from 'fflate'
import { makeZip, readZip, uploadPathProblem } from '../src/zip.js'

test('download zip reads back', () => {
  const files = [{ path: 'main.py', text: 'print(1)\n' }, { path: 'pkg/ü.py', text: 'x = "ü"\n' }]
  assert.deepEqual(readZip(makeZip(files)), files)
})

test('bad paths are refused', () => {
  for (const p of ['../x', '/etc/passwd', 'a/../b', 'C:/x', 'a\\b', 'a//b', 'con.txt', './a']) {
    assert.ok(uploadPathProblem(p), p)
  }
  assert.equal(uploadPathProblem('src/main.c'), null)
  assert.throws(() => readZip(zipSync({ '../evil.py': new TextEncoder().encode('x') })), /refused/)
  assert.throws(() => readZip(zipSync({ 'bin.dat': new Uint8Array([0, 1, 2, 255]) })), /not a text file|binary/)
  assert.throws(() => readZip(new Uint8Array([1, 2, 3])), /not a zip/)
})

test('limits before inflating', () => {
  const big = new Uint8Array(3 * 1024 * 1024).fill(65)
  assert.throws(() => readZip(zipSync({ 'big.txt': big })), /larger than/)
})
