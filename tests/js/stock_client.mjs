// A STOCK y-webrtc client (the npm package's own WebrtcProvider + SignalingConn, unmodified)
// pointed at a signaling URL. Prints one JSON line per event on stdout for the Python test:
//   {"event":"ready","peerId":...}     the provider's room peer id
//   {"event":"message","message":...}  every frame the stock SignalingConn received
// Usage: node stock_client.mjs WS_URL ROOM
import { WebSocket } from 'ws'

globalThis.WebSocket = WebSocket // Node 20 has no global WebSocket; lib0/websocket needs one

const [url, room] = process.argv.slice(2)
const Y = await import('yjs')
const { WebrtcProvider } = await import('y-webrtc')

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const doc = new Y.Doc()
const provider = new WebrtcProvider(room, doc, { signaling: [url], filterBcConns: true })
const conn = provider.signalingConns[0]
conn.on('message', (message) => out({ event: 'message', message }))
conn.on('connect', () => out({ event: 'connect' }))
conn.on('disconnect', () => out({ event: 'disconnect' }))
await provider.key // the provider opens its room once the (here: no) room key resolves
await Promise.resolve()
out({ event: 'ready', peerId: provider.room.peerId })

process.stdin.on('end', () => { provider.destroy(); process.exit(0) })
process.stdin.resume()
