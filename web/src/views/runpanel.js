// The run panel: Run / Stop (the runner's app protocol, type 101) and the run records, read only
// from the named document `runs` (type 102), which browsers accept only from the runner's and the
// persistence peer's links. The main document's v1 `runs` map is ignored: any editor could write it.
import * as Y from 'yjs'
import { listRuns, runDuration, runsMap } from '../doc.js'
import { h, notice } from '../ui.js'
import { uuid } from '../wire.js'
import { createConsole } from './console.js'

const RUN_ANSWER_TIMEOUT_MS = 5000

function toBase64 (bytes) {
  let s = ''
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000))
  return btoa(s)
}

function describeRequester (r) {
  if (!r) return ''
  if (typeof r === 'string') return r
  return r.name || r.user_id || r.id || ''
}

/**
 * @param {{provider: any, doc: Y.Doc, runsDoc: Y.Doc, target: () => ({language: string, entry?: string, entry_path?: string}|{error: string}),
 *   canRun: boolean}} opts `target()`: what Run runs now — the entry file (by id and path) and its
 *   language in a v2 room (room.js), or `{error}` when there is nothing to run.
 * @returns {{panel: HTMLElement, controls: HTMLElement, requestRun: () => void, setCanRun: (can: boolean) => void, destroy: () => void}}
 *   `controls` holds Run / Stop for the toolbar; they are in the page only while the user may run.
 */
export function createRunPanel ({ provider, doc, runsDoc, target, canRun }) {
  const runBtn = h('button.run', { testid: 'run', title: 'Run (Ctrl/Cmd-Enter)' }, '▶ Run')
  const stopBtn = h('button.stop', { testid: 'stop', disabled: true }, '■ Stop')
  const controls = h('span.run-controls')
  const runHead = h('div.run-head', { testid: 'run-status' }, 'No runs yet.')
  const term = createConsole({ provider, canType: canRun })
  const recent = h('ul.recent', { testid: 'recent-runs' })
  const runMsg = notice('run-message')
  const panel = h('section.panel.runs', h('h2', 'Output'), runMsg.el, runHead, term.el, h('h3', 'Recent runs'), recent)
  const runs = runsMap(runsDoc)

  let allowed = false
  let selectedRun = null
  let pendingRun = null
  let runTimer = null
  let renderScheduled = false

  function setCanRun (can) {
    allowed = !!can
    controls.replaceChildren(...(allowed ? [runBtn, stopBtn] : []))
    term.setCanType(allowed)
    if (!allowed) runMsg.clear()
  }

  const scheduleRuns = () => {
    if (renderScheduled) return
    renderScheduled = true
    setTimeout(() => { renderScheduled = false; renderRuns() }, 30)
  }

  let knownIds = null // a new run (anyone's) takes the view over from a run picked in the list
  function renderRuns () {
    const all = listRuns(runsDoc)
    if (knownIds && all.some(r => !knownIds.has(r.id))) selectedRun = null
    knownIds = new Set(all.map(r => r.id))
    if (pendingRun && all.some(r => r.id === pendingRun)) {
      clearTimeout(runTimer)
      pendingRun = null
    }
    const current = all.find(r => r.id === selectedRun) || all[0]
    if (!current) {
      runHead.textContent = pendingRun ? 'Waiting for the runner…' : 'No runs yet.'
      term.show(null)
    } else {
      const d = runDuration(current)
      runHead.replaceChildren(...[
        h('span.tag', { testid: 'run-state' }, current.status),
        current.exitCode !== undefined && current.exitCode !== null ? h('span', { testid: 'exit-code' }, ` exit code ${current.exitCode}`) : null,
        d !== null ? h('span', { testid: 'duration' }, ` · ${d < 1000 ? `${Math.round(d)} ms` : `${(d / 1000).toFixed(2)} s`}`) : null,
        current.requestedBy ? h('span.muted', ` · by ${describeRequester(current.requestedBy)}`) : null,
        current.reason && current.status !== 'finished' ? h('span.muted', { testid: 'run-reason' }, ` · ${current.reason}`) : null].filter(Boolean))
      term.show(current)
    }
    recent.replaceChildren(...all.slice(0, 10).map(r => h('li', {
      testid: 'recent-run',
      class: r === current ? 'selected' : '',
      on: { click: () => { selectedRun = r.id; renderRuns() } }
    }, `${r.language || ''} · ${r.status}${r.exitCode !== undefined && r.exitCode !== null ? ` (${r.exitCode})` : ''}`)))
    stopBtn.disabled = !all.some(r => r.status === 'running' || r.status === 'queued')
  }

  function requestRun () {
    if (!allowed) return
    runMsg.clear()
    const runner = provider.runnerPeer()
    if (!runner) {
      runMsg.show('The runner is not available right now, so code cannot be run. Editing still works.', 'warn')
      return
    }
    const what = target()
    if (what.error) {
      runMsg.show(what.error, 'warn')
      return
    }
    const runId = uuid()
    selectedRun = null // follow the newest run: this one, once the runner writes it
    pendingRun = runId
    const { error, ...fields } = what
    provider.sendApp(runner.remotePeerId, {
      op: 'run',
      run_id: runId,
      ...fields,
      state_vector: toBase64(Y.encodeStateVector(doc))
    })
    renderRuns()
    clearTimeout(runTimer)
    runTimer = setTimeout(() => {
      if (pendingRun === runId) {
        pendingRun = null
        runMsg.show('The runner did not answer. Try again in a moment.', 'warn')
        renderRuns()
      }
    }, RUN_ANSWER_TIMEOUT_MS)
  }

  function requestStop () {
    const active = listRuns(runsDoc).find(r => r.status === 'running' || r.status === 'queued')
    const runner = active && provider.runnerPeer(active)
    if (!allowed || !runner || !active) return
    provider.sendApp(runner.remotePeerId, { op: 'stop', run_id: active.id })
  }

  // The provider passes on only the runner-stamped link's replies (rights.js mayReceiveApp).
  const onApp = (m, peerId, sender) => {
    if (!sender || sender.service !== 'runner') return
    if (m.op === 'run-refused') {
      if (m.run_id === pendingRun) { pendingRun = null; clearTimeout(runTimer) }
      runMsg.show(`The runner refused to run this: ${m.reason || 'no reason given'}.`, 'error')
      renderRuns()
    } else if (m.op === 'run-accepted' && m.run_id === pendingRun) {
      clearTimeout(runTimer)
    }
  }

  provider.on('app', onApp)
  runs.observeDeep(scheduleRuns)
  runBtn.addEventListener('click', requestRun)
  stopBtn.addEventListener('click', requestStop)
  setCanRun(canRun)
  renderRuns()

  return {
    panel,
    controls,
    requestRun,
    setCanRun,
    destroy () {
      clearTimeout(runTimer)
      term.destroy()
      runs.unobserveDeep(scheduleRuns)
      provider.off('app', onApp)
    }
  }
}
