// A STOCK y-webrtc client (the unmodified npm package), bundled by the test at run time.
// It joins a CodeSync room through /signal?token=… and exposes its document to the test.
import * as Y from 'yjs'
import { WebrtcProvider } from 'y-webrtc'

const params = new URLSearchParams(location.hash.slice(1))
const doc = new Y.Doc()
const provider = new WebrtcProvider(params.get('room'), doc, {
  signaling: [params.get('signaling')],
  peerOpts: { config: { iceServers: [] } }
})
provider.awareness.setLocalStateField('user', { name: 'stock y-webrtc', color: '#888888' })
window.stock = { doc, provider, Y }
