// Test harness: exposes web/src/wire.js to the Python interop tests (tests/test_web_wire.py).
// Reads one JSON request per line on stdin, answers one JSON line each.
import { createInterface } from 'node:readline'
import * as decoding from 'lib0/decoding'
import { MSG_APP, MSG_CHUNK, Reassembler, decodeApp, encodeApp, encodeChunks } from '../src/wire.js'

const hex = (u8) => Buffer.from(u8).toString('hex')
const bytes = (h) => new Uint8Array(Buffer.from(h, 'hex'))

function handle (req) {
  switch (req.op) {
    case 'chunk':
      return { frames: encodeChunks(bytes(req.hex), req.id, req.part).map(hex) }
    case 'reassemble': {
      const r = new Reassembler(req.limits || {})
      const out = []
      for (const f of req.frames) {
        const d = decoding.createDecoder(bytes(f))
        if (decoding.readVarUint(d) !== MSG_CHUNK) throw new Error('not a chunk frame')
        const whole = r.feed(d)
        if (whole) out.push(hex(whole))
      }
      return { messages: out }
    }
    case 'app':
      return { hex: hex(encodeApp(req.obj)) }
    case 'decode_app': {
      const d = decoding.createDecoder(bytes(req.hex))
      if (decoding.readVarUint(d) !== MSG_APP) throw new Error('not an app frame')
      return { obj: decodeApp(d) }
    }
    default:
      throw new Error('unknown op ' + req.op)
  }
}

const rl = createInterface({ input: process.stdin })
rl.on('line', (line) => {
  let res
  try {
    res = handle(JSON.parse(line))
  } catch (e) {
    res = { error: String(e.message || e) }
  }
  process.stdout.write(JSON.stringify(res) + '\n')
})
