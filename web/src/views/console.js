// The run console: a run's output as the runner wrote it (stdout, stderr in red, what someone
// typed — echoed by the runner as {stream: "stdin"} spans), ANSI colours rendered as text spans
// (ansi.js; no HTML from the program ever reaches the page), long output capped in the view with
// a marker, the runner's own truncation shown clearly, a Clear button that clears the view of
// the person who pressed it only, and — while the run is going — an input line for owners and
// editors: Enter sends the line (app operation `input`), Ctrl-D ends the program's input.
// Viewers see the console read-only; the runner refuses their input anyway.
import { parseAnsi, styleText } from '../ansi.js'
import { h, notice } from '../ui.js'

export const MAX_SHOWN = 200_000 // characters of one run's output rendered at once (the runner caps at 64 KiB by default)

/**
 * @param {{provider: any, canType: boolean}} opts
 * @returns {{el: HTMLElement, output: HTMLElement, show: (run: object|null) => void, setCanType: (b: boolean) => void, destroy: () => void}}
 */
export function createConsole ({ provider, canType }) {
  const output = h('pre.output', { testid: 'output' })
  const clearBtn = h('button.link', { testid: 'output-clear', title: 'Clear the output (only for you)' }, 'clear')
  const input = h('input.console-input', { testid: 'console-input', placeholder: 'Type input for the program, Enter sends it', spellcheck: 'false', autocomplete: 'off' })
  const eofBtn = h('button.small', { testid: 'console-eof', title: 'End of input (Ctrl-D)' }, 'Ctrl-D')
  const inputRow = h('div.console-row', input, eofBtn)
  const msg = notice('console-message')
  const el = h('div.console', h('div.console-tools', clearBtn), output, inputRow, msg.el)
  const cleared = new Map() // run id -> output characters hidden by Clear (this browser only)
  let run = null
  let allowed = !!canType

  function render () {
    const segments = run ? run.segments : []
    const total = segments.reduce((n, s) => n + s.text.length, 0)
    let skip = run ? Math.min(cleared.get(run.id) || 0, total) : 0
    const hiddenByCap = Math.max(0, total - skip - MAX_SHOWN)
    skip += hiddenByCap
    const nodes = []
    if (hiddenByCap) nodes.push(h('span.output-note', { testid: 'output-capped' }, `… ${hiddenByCap.toLocaleString()} earlier characters not shown …\n`))
    const state = {}
    for (const seg of segments) {
      let text = seg.text
      if (skip >= text.length) { skip -= text.length; continue }
      if (skip) { text = text.slice(skip); skip = 0 }
      if (seg.stream === 'stdin') {
        nodes.push(h('span.stdin', text))
        continue
      }
      for (const part of parseAnsi(text, state)) {
        const css = styleText(part.style)
        const cls = seg.stream === 'stderr' ? 'stderr' : ''
        if (!css && !cls) nodes.push(document.createTextNode(part.text))
        else nodes.push(h('span', { class: cls || null, style: css || null }, part.text))
      }
    }
    if (run && run.truncated) nodes.push(h('span.output-note', { testid: 'output-truncated' }, '\n[output truncated: the program wrote more than the runner keeps]'))
    const atBottom = output.scrollTop + output.clientHeight >= output.scrollHeight - 4
    output.replaceChildren(...nodes)
    if (atBottom) output.scrollTop = output.scrollHeight
    const live = !!run && run.status === 'running'
    inputRow.hidden = !live
    input.disabled = !allowed
    eofBtn.disabled = !allowed
    input.placeholder = allowed ? 'Type input for the program, Enter sends it (Ctrl-D ends it)' : 'Read-only: only owners and editors can type into the program'
    if (!live) msg.clear()
  }

  function send (obj) {
    if (!allowed || !run || run.status !== 'running') return false
    const runner = provider.runnerPeer(run)
    if (!runner) { msg.show('The runner is not connected, so the input cannot be sent.', 'warn'); return false }
    provider.sendApp(runner.remotePeerId, { op: 'input', run_id: run.id, ...obj })
    return true
  }

  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'Enter') {
      ev.preventDefault()
      if (send({ data: input.value + '\n' })) input.value = ''
    } else if (ev.key === 'd' && ev.ctrlKey) {
      ev.preventDefault()
      if (input.value && send({ data: input.value })) input.value = ''
      send({ eof: true })
    }
  })
  eofBtn.addEventListener('click', () => send({ eof: true }))
  clearBtn.addEventListener('click', () => {
    if (!run) return
    cleared.set(run.id, run.segments.reduce((n, s) => n + s.text.length, 0))
    render()
  })

  // The provider passes on only the runner-stamped link's replies (rights.js mayReceiveApp).
  const onApp = (m, peerId, sender) => {
    if (!sender || sender.service !== 'runner' || m.op !== 'input-refused' || !run || m.run_id !== run.id) return
    msg.show(`The runner did not take that input: ${m.reason || 'no reason given'}.`, 'error')
  }
  provider.on('app', onApp)

  return {
    el,
    output,
    show (next) { run = next; render() },
    setCanType (value) { allowed = !!value; render() },
    destroy () { provider.off('app', onApp) }
  }
}
