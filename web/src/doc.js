// The room documents (docs/protocol.md, "The room documents"). Main document, schema v2: the file
// tree (`files`, each file its own root Y.Text; workspace.js) and `meta` {language, title, schema,
// entry}; its v1 `runs` map is ignored (any editor could write it). Named document `runs` (type 102,
// written only by the runner and served by the persistence peer): `runs` Y.Map run id -> Y.Map
// {status, language, requested_by, requested_by_name, started_at, finished_at, exit_code, reason,
// truncated, output: Y.Text (stderr spans carry {stream: "stderr"}, echoed console input
// {stream: "stdin"})}.
import * as Y from 'yjs'
import { LANGUAGES as ALL_LANGUAGES, SCHEMA as TREE_SCHEMA } from './workspace.js'

export const SCHEMA = TREE_SCHEMA
export const LANGUAGES = ALL_LANGUAGES
export const FINAL_STATUSES = new Set(['finished', 'failed', 'timeout', 'killed', 'refused'])

/** The v1 parts: `source` (now the first file's text; docs/workspace.md) and `meta`. */
export function roomParts (doc) {
  return { source: doc.getText('source'), meta: doc.getMap('meta') }
}

/** The run records: the `runs` map of the named document `runs` (never the main document's). */
export function runsMap (runsDoc) {
  return runsDoc.getMap('runs')
}

/** A plain snapshot of one run for rendering: output as [{text, stderr}] segments. */
export function runSnapshot (id, run) {
  const get = (k) => run instanceof Y.Map ? run.get(k) : undefined
  const output = get('output')
  let segments = []
  if (output instanceof Y.Text) {
    segments = output.toDelta().map(op => {
      const stream = op.attributes && (op.attributes.stream === 'stderr' || op.attributes.stream === 'stdin') ? op.attributes.stream : 'stdout'
      return { text: typeof op.insert === 'string' ? op.insert : '', stream, stderr: stream === 'stderr' }
    })
  } else if (typeof output === 'string') {
    segments = [{ text: output, stream: 'stdout', stderr: false }]
  }
  return {
    id,
    status: get('status') || 'queued',
    language: get('language') || '',
    requestedBy: get('requested_by_name') || get('requested_by'),
    requestedAt: get('requested_at'),
    startedAt: get('started_at'),
    finishedAt: get('finished_at'),
    exitCode: get('exit_code'),
    reason: get('reason'),
    truncated: get('truncated') === true,
    runnerInstance: get('runner_instance') || null, // which runner runs it (runner/identity.py)
    runnerSession: get('runner_session') || null,
    segments
  }
}

/** Runs of the named document `runs`, newest first (by requested_at, else started_at; undated ones first). */
export function listRuns (runsDoc) {
  const all = []
  runsMap(runsDoc).forEach((run, id) => all.push(runSnapshot(id, run)))
  const t = (r) => toMillis(r.requestedAt) ?? toMillis(r.startedAt) ?? Infinity
  all.sort((a, b) => t(b) - t(a))
  return all
}

/** started_at/finished_at may be seconds, milliseconds or ISO strings; normalise to ms. */
export function toMillis (v) {
  if (v === undefined || v === null || v === '') return null
  if (typeof v === 'number') return v < 1e11 ? v * 1000 : v
  const n = Date.parse(v)
  return Number.isNaN(n) ? null : n
}

export function runDuration (run) {
  const a = toMillis(run.startedAt)
  const b = toMillis(run.finishedAt)
  if (a === null || b === null) return null
  return Math.max(0, b - a)
}
