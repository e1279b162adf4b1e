// Which runner gets Stop and console input (provider.runnerPeer): the one whose awareness names
// the instance and session the run's entry carries, when a room has several runners.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { CodeSyncProvider } from '../src/provider.js'

function fakeProvider (peers) {
  const states = new Map()
  const awarenessOwner = new Map()
  peers.forEach((p, i) => {
    if (p.state) { states.set(100 + i, p.state); awarenessOwner.set(100 + i, p) }
  })
  return { connectedPeers: () => peers, awareness: { getStates: () => states }, awarenessOwner }
}

const runner = (id, state, extra = {}) => ({ remotePeerId: id, principal: { service: 'runner' }, caps: ['app'], state, ...extra })
const pick = (provider, run) => CodeSyncProvider.prototype.runnerPeer.call(provider, run)

test('the run names its runner: Stop and input go there, not to the first runner linked', () => {
  const a = runner('a', { service: 'runner', instance: 'host-a', session: 's1' })
  const b = runner('b', { service: 'runner', instance: 'host-b', session: 's2' })
  const p = fakeProvider([a, b])
  assert.equal(pick(p, { runnerInstance: 'host-b', runnerSession: 's2' }).remotePeerId, 'b')
  assert.equal(pick(p, { runnerInstance: 'host-a', runnerSession: 's1' }).remotePeerId, 'a')
  assert.equal(pick(p, null).remotePeerId, 'a') // a new run: any runner
  assert.equal(pick(p, { runnerInstance: 'host-b', runnerSession: 'old' }).remotePeerId, 'a') // gone: any
})

test('a member cannot pose as the runner: only runner-stamped links with app count', () => {
  const impostor = { remotePeerId: 'x', principal: { user_id: 'u', role: 'editor' }, caps: ['app'], state: { service: 'runner', instance: 'host-b', session: 's2' } }
  const noApp = runner('n', { service: 'runner', instance: 'host-b', session: 's2' }, { caps: [] })
  const a = runner('a', { service: 'runner', instance: 'host-a', session: 's1' })
  const p = fakeProvider([impostor, noApp, a])
  assert.equal(pick(p, { runnerInstance: 'host-b', runnerSession: 's2' }).remotePeerId, 'a')
  assert.equal(pick(fakeProvider([impostor]), null), null)
})
