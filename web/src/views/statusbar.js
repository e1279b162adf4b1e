// The status line (signaling, direct peers, saved status, runner) and the connection notice.
// Service status is read only from what the services' own links said: the saved status from
// awareness that arrived on the persistence-stamped link, the runner's languages from the
// runner-stamped link (provider.serviceStates); a browser's awareness can claim neither.
import * as Y from 'yjs'
import { h, notice } from '../ui.js'

/**
 * The persistence peer's save status from its awareness `saved: {status, state_vector, …}`
 * (peer/persistence/writer.py). "saved" only when the stored state vector covers everything this
 * browser has, so a fresh local edit shows "saving…" until the persistence peer has it.
 */
export function savedStatus (provider, doc) {
  for (const state of provider.serviceStates('persistence')) {
    const saved = state.saved
    if (!saved || typeof saved !== 'object') continue
    if (saved.status === 'error') return `not saved: ${saved.error || 'storage error'}`
    if (saved.status !== 'saved') return saved.status === 'loading' ? 'loading…' : 'saving…'
    if (typeof saved.state_vector === 'string') {
      try {
        const stored = Y.decodeStateVector(Uint8Array.from(atob(saved.state_vector), c => c.charCodeAt(0)))
        const mine = Y.decodeStateVector(Y.encodeStateVector(doc))
        for (const [client, clock] of mine) {
          if ((stored.get(client) || 0) < clock) return 'saving…'
        }
      } catch (e) {}
    }
    return 'saved'
  }
  return null
}

/**
 * @param {{provider: any, doc: Y.Doc, awareness: any, offline: boolean}} opts
 * @returns {{footer: HTMLElement, message: HTMLElement, render: () => void, destroy: () => void}}
 */
export function createStatusBar ({ provider, doc, awareness, offline }) {
  const status = {
    signaling: h('span', { testid: 'status-signaling' }, 'connecting'),
    peers: h('span', { testid: 'status-peers' }, '0'),
    saved: h('span', { testid: 'status-saved' }, '—'),
    runner: h('span', { testid: 'status-runner' }, '—')
  }
  const connMsg = notice('conn-message')
  const footer = h('footer.status', { testid: 'status' },
    h('span', 'Signaling: ', status.signaling), ' · ',
    h('span', 'Peers: ', status.peers), ' · ',
    h('span', 'Document: ', status.saved), ' · ',
    h('span', 'Runner: ', status.runner))

  let everConnected = false
  const render = () => {
    const st = provider.state
    status.signaling.textContent = st
    status.signaling.className = st === 'connected' ? 'ok' : 'bad'
    const direct = provider.connectedPeers().length
    status.peers.textContent = `${direct} direct`
    const saved = savedStatus(provider, doc)
    status.saved.textContent = saved || (direct ? 'not saved on the server (no persistence peer connected)' : 'local only')
    status.saved.className = saved === 'saved' ? 'ok' : ''
    if (st === 'connected') {
      everConnected = true
      connMsg.clear()
    } else if (st === 'forbidden') {
      connMsg.show("You don't have access to this room any more.", 'error')
    } else if (st === 'unauthorized') {
      connMsg.show('The signaling server does not accept your session. Please sign in again.', 'error')
    } else if (everConnected || st === 'disconnected') {
      connMsg.show(direct
        ? `Signaling server unreachable — editing continues peer to peer with ${direct} connected peer${direct === 1 ? '' : 's'}. Reconnecting…`
        : `${offline ? 'Working offline from this browser\'s copy. ' : ''}Signaling server unreachable — your edits are kept in this browser and merge when the connection returns. Reconnecting…`, 'warn')
    }
    const runner = provider.runnerPeer()
    const languages = runner ? provider.serviceStates('runner').flatMap(s => Array.isArray(s.languages) ? s.languages.filter(l => typeof l === 'string') : []) : []
    status.runner.textContent = runner ? 'ready' : 'not connected'
    status.runner.className = runner ? 'ok' : ''
    status.runner.title = languages.length ? `Languages: ${languages.join(', ')}` : ''
  }

  let timer = null
  const later = () => { if (!timer) timer = setTimeout(() => { timer = null; render() }, 100) }
  const onError = (e) => {
    if (e.code === 'session_expired') connMsg.show('Your session has expired. Please sign in again.', 'error')
    else if (e.code === 'unauthorized' || e.code === 'too_many_connections') connMsg.show(e.message, 'error')
    else if (e.code === 'forbidden') connMsg.show("You don't have access to this room any more.", 'error')
  }
  doc.on('update', later)
  awareness.on('change', render)
  provider.on('status', render)
  provider.on('peers', render)
  provider.on('error', onError)
  render()

  return {
    footer,
    message: connMsg.el,
    render,
    destroy () {
      clearTimeout(timer)
      doc.off('update', later)
      awareness.off('change', render)
      provider.off('status', render)
      provider.off('peers', render)
      provider.off('error', onError)
    }
  }
}
