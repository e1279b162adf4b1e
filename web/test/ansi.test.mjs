// Unit tests of web/src/ansi.js: `node --test web/test/ansi.test.mjs` (run by tests/test_web_workspace_units.py).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { parseAnsi, styleText } from '../src/ansi.js'

test('colours and styles become spans; reset ends them', () => {
  const out = parseAnsi('a\x1b[31mred\x1b[1;4mbold\x1b[0m plain')
  assert.deepEqual(out.map(s => s.text), ['a', 'red', 'bold', ' plain'])
  assert.equal(out[1].style.fg, '#cd3131')
  assert.ok(out[2].style.bold && out[2].style.underline && out[2].style.fg)
  assert.deepEqual(out[3].style, {})
})

test('256 colours, truecolour, state carried into the next chunk', () => {
  const state = {}
  parseAnsi('\x1b[38;5;196mx', state)
  assert.equal(state.fg, 'rgb(255, 0, 0)')
  const next = parseAnsi('still red\x1b[48;2;1;2;300mbg', state)
  assert.equal(next[0].style.fg, 'rgb(255, 0, 0)')
  assert.equal(next[1].style.bg, 'rgb(1, 2, 255)')
})

test('other escapes vanish and nothing becomes markup', () => {
  const out = parseAnsi('\x1b]0;title\x07<b>hi</b>\x1b[2J\x1b[Hend\x1b')
  assert.deepEqual(out.map(s => s.text).join(''), '<b>hi</b>end')
  assert.equal(styleText({ fg: '#fff', bold: true }), 'color:#fff;font-weight:bold')
  assert.equal(styleText({}), '')
})
