// The room's file tree (main document, schema v2; docs/workspace.md). The same rules are in
// peer/workspace.py (the runner builds a run's project from its own copy of the tree with them);
// tests/test_workspace_schema.py checks that both resolve the same trees to the same paths.
//
//   files: Y.Map id -> Y.Map {name, parent, kind: 'file'|'folder', language?, text}
//   <text>: the root Y.Text of a file: 'source' for id 'source', 'file:<id>' for every other file
//   meta:  {schema: 2, language, title, entry?}   entry: the id of the file Run runs
//
// Reading is deterministic (every peer shows the same tree): bad entries are ignored, bad names
// read as 'unnamed', orphans (parent gone or not a folder) go to the top level, a parent cycle is
// cut at its smallest id, clashing names in one folder get ' (2)', ' (3)'… (the smallest id keeps
// the bare name). No DOM here: Node tests it (web/test/workspace.test.mjs).
import * as Y from 'yjs'

export const SCHEMA = 2
export const SOURCE_ID = 'source'
export const FILES = 'files'

// The first file's entry as one fixed update (client id 0; see peer/workspace.py INIT_UPDATE).
const INIT_B64 = 'AQQAACcBBWZpbGVzBnNvdXJjZQEoAAAABGtpbmQBdwRmaWxlKAAAAAZwYXJlbnQBdwAoAAAABHRleHQBdwZzb3VyY2UA'
export const INIT_UPDATE = Uint8Array.from(atob(INIT_B64), c => c.charCodeAt(0))

export const LIMITS = Object.freeze({
  files: 500, folders: 500, fileBytes: 2 * 1024 * 1024, totalBytes: 8 * 1024 * 1024,
  depth: 16, nameBytes: 100, pathBytes: 240
})

export const EXTENSIONS = Object.freeze({
  '.py': 'python', '.js': 'javascript', '.mjs': 'javascript', '.cjs': 'javascript',
  '.ts': 'typescript', '.sh': 'bash', '.bash': 'bash', '.c': 'c', '.h': 'c',
  '.cpp': 'cpp', '.cc': 'cpp', '.cxx': 'cpp', '.c++': 'cpp', '.hpp': 'cpp', '.hh': 'cpp',
  '.go': 'go', '.rs': 'rust', '.java': 'java', '.rb': 'ruby'
})
export const LANGUAGE_EXTENSION = Object.freeze({
  python: '.py', javascript: '.js', typescript: '.ts', bash: '.sh', c: '.c', cpp: '.cpp',
  go: '.go', rust: '.rs', java: '.java', ruby: '.rb'
})
export const PLAINTEXT = 'plaintext'
/** Every language the client knows (the runner advertises which of them it can run). */
export const LANGUAGES = Object.freeze([
  { id: 'python', label: 'Python' },
  { id: 'javascript', label: 'JavaScript (Node)' },
  { id: 'typescript', label: 'TypeScript' },
  { id: 'bash', label: 'Bash' },
  { id: 'c', label: 'C' },
  { id: 'cpp', label: 'C++' },
  { id: 'go', label: 'Go' },
  { id: 'rust', label: 'Rust' },
  { id: 'java', label: 'Java' },
  { id: 'ruby', label: 'Ruby' },
  { id: PLAINTEXT, label: 'Plain text' }
])
const KNOWN = new Set(LANGUAGES.map(l => l.id))

/**
 * The language picker's list: what the room's runner peers advertise (the `languages` of their
 * awareness states), plus plain text, in the client's order; every language the client knows
 * when no runner advertises any (none joined yet, or it says nothing). The open file's language
 * stays listed even when no runner offers it: it is still that file's language.
 * @param {Array<any>} runnerStates @param {string|null} [current]
 */
export function languageChoices (runnerStates, current = null) {
  const offered = new Set(runnerStates.flatMap(s => s && Array.isArray(s.languages) ? s.languages.filter(l => typeof l === 'string') : []))
  const list = offered.size ? LANGUAGES.filter(l => offered.has(l.id) || l.id === PLAINTEXT) : [...LANGUAGES]
  const kept = current && !list.some(l => l.id === current) ? LANGUAGES.find(l => l.id === current) : undefined
  return kept ? [...list, kept] : list
}

const ID = /^[A-Za-z0-9_-]{1,64}$/
const CONTROL = /[\x00-\x1f\x7f]/ // eslint-disable-line no-control-regex
const DEVICE = /^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³]|conin\$|conout\$)(\..*)?$/i
export const UNNAMED = 'unnamed'
const enc = new TextEncoder()

export function byteLength (s) { return enc.encode(s).length }

/** Why `name` cannot be a file or folder name, or null (the runner's rules for one path part). */
export function nameProblem (name, limits = LIMITS) {
  if (typeof name !== 'string' || !name) return 'a name cannot be empty'
  if (name === '.' || name === '..') return "'.' and '..' are not names"
  if (name.includes('/') || name.includes('\\')) return 'a name cannot contain / or \\ (make folders instead)'
  if (CONTROL.test(name)) return 'a name cannot contain control characters'
  if (byteLength(name) > limits.nameBytes) return `a name is at most ${limits.nameBytes} bytes`
  if (DEVICE.test(name) || name.endsWith(' ') || name.endsWith('.')) return 'reserved name (a Windows device name, or ending in a space or dot)'
  if (name === '.codesync') return ".codesync is reserved for the runner's build output"
  return null
}

export function suffixed (name, n) {
  const dot = name.lastIndexOf('.')
  return dot > 0 ? `${name.slice(0, dot)} (${n})${name.slice(dot)}` : `${name} (${n})`
}

export function languageOf (name, override = null) {
  if (typeof override === 'string' && KNOWN.has(override)) return override
  const dot = name.lastIndexOf('.')
  return dot > 0 ? (EXTENSIONS[name.slice(dot).toLowerCase()] || PLAINTEXT) : PLAINTEXT
}

export function textName (id) { return id === SOURCE_ID ? 'source' : `file:${id}` }

export function newId () {
  const stamp = Date.now().toString(36).padStart(9, '0')
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789'
  const r = crypto.getRandomValues(new Uint8Array(8))
  return stamp + Array.from(r, b => alphabet[b % 36]).join('')
}

const cmp = (a, b) => (a < b ? -1 : a > b ? 1 : 0)

/**
 * Resolve raw entries (id -> {name, parent, kind, language}) into the tree every peer shows:
 * Map id -> {id, kind, name, parent, path, language, text, storedName, override}.
 */
export function resolveTree (raw) {
  const valid = new Map()
  for (const [id, f] of Object.entries(raw)) {
    if (ID.test(id) && f && typeof f === 'object' && (f.kind === 'file' || f.kind === 'folder')) valid.set(id, f)
  }
  const ids = Array.from(valid.keys()).sort(cmp)
  const parent = new Map()
  for (const id of ids) {
    const p = valid.get(id).parent
    const ok = typeof p === 'string' && p !== id && valid.has(p) && valid.get(p).kind === 'folder'
    parent.set(id, ok ? p : '')
  }
  const done = new Set()
  for (const id of ids) {
    const path = []
    const onPath = new Set()
    let cur = id
    while (cur && !done.has(cur)) {
      if (onPath.has(cur)) {
        const cycle = path.slice(path.indexOf(cur))
        parent.set(cycle.reduce((a, b) => (b < a ? b : a)), '')
        break
      }
      onPath.add(cur)
      path.push(cur)
      cur = parent.get(cur)
    }
    path.forEach(x => done.add(x))
  }
  const children = new Map()
  for (const id of ids) {
    const p = parent.get(id)
    if (!children.has(p)) children.set(p, [])
    children.get(p).push(id)
  }
  const shown = new Map()
  for (const siblings of children.values()) {
    const wanted = new Map()
    for (const id of siblings) {
      const stored = valid.get(id).name
      wanted.set(id, nameProblem(stored) === null ? stored : UNNAMED)
    }
    const taken = new Set(wanted.values())
    const first = new Map()
    for (const id of siblings) if (!first.has(wanted.get(id))) first.set(wanted.get(id), id)
    for (const id of siblings) {
      const name = wanted.get(id)
      if (first.get(name) === id) { shown.set(id, name); continue }
      let n = 2
      while (taken.has(suffixed(name, n))) n++
      shown.set(id, suffixed(name, n))
      taken.add(shown.get(id))
    }
  }
  const paths = new Map()
  const pathOf = (id) => {
    const chain = []
    let cur = id
    while (cur && !paths.has(cur)) { chain.push(cur); cur = parent.get(cur) }
    for (let i = chain.length - 1; i >= 0; i--) {
      const x = chain[i]
      const p = parent.get(x)
      paths.set(x, p ? `${paths.get(p)}/${shown.get(x)}` : shown.get(x))
    }
    return paths.get(id)
  }
  const out = new Map()
  for (const id of ids) {
    const f = valid.get(id)
    const override = typeof f.language === 'string' && KNOWN.has(f.language) ? f.language : null
    const isFile = f.kind === 'file'
    out.set(id, {
      id,
      kind: f.kind,
      name: shown.get(id),
      parent: parent.get(id),
      path: pathOf(id),
      language: isFile ? languageOf(shown.get(id), override) : '',
      text: isFile ? textName(id) : '',
      storedName: f.name,
      override: isFile ? override : null
    })
  }
  return out
}

export function filesMap (doc) { return doc.getMap(FILES) }

/** The `files` map as plain objects (Y.Map values, or plain objects a stock client wrote). */
export function rawEntries (doc) {
  const out = {}
  filesMap(doc).forEach((v, k) => {
    if (v instanceof Y.Map) out[k] = { name: v.get('name'), parent: v.get('parent'), kind: v.get('kind'), language: v.get('language') }
    else if (v && typeof v === 'object' && !(v instanceof Y.AbstractType)) out[k] = v
  })
  return out
}

/** The resolved tree plus lookups: {entries, byPath, children(parentId), files}. */
export function readTree (doc) {
  const entries = resolveTree(rawEntries(doc))
  const byPath = new Map()
  const kids = new Map()
  entries.forEach(e => {
    byPath.set(e.path, e)
    if (!kids.has(e.parent)) kids.set(e.parent, [])
    kids.get(e.parent).push(e)
  })
  kids.forEach(list => list.sort((a, b) => (a.kind === b.kind ? a.name.localeCompare(b.name) : a.kind === 'folder' ? -1 : 1)))
  return {
    entries,
    byPath,
    children: (parentId = '') => kids.get(parentId) || [],
    files: () => Array.from(entries.values()).filter(e => e.kind === 'file')
  }
}

export function fileText (doc, entry) { return doc.getText(entry.text) }

export function isV2 (doc) { return filesMap(doc).size > 0 }

/**
 * The first file: the fixed update (identical on every peer: no conflict when two apply it at
 * once; a deleted first file stays deleted) and, if unnamed, `main` + the language's extension.
 */
export function ensureFirstFile (doc, language = 'python') {
  Y.applyUpdate(doc, INIT_UPDATE)
  doc.transact(() => {
    const first = filesMap(doc).get(SOURCE_ID)
    if (first instanceof Y.Map && typeof first.get('name') !== 'string') {
      first.set('name', 'main' + (LANGUAGE_EXTENSION[language] || '.txt'))
    }
    const meta = doc.getMap('meta')
    if (meta.get('schema') !== SCHEMA) meta.set('schema', SCHEMA)
  })
}

export function descendants (tree, id) {
  const out = []
  const frontier = [id]
  while (frontier.length) {
    for (const c of tree.children(frontier.pop())) { out.push(c.id); frontier.push(c.id) }
  }
  return out
}

function depthOf (tree, parentId) {
  let d = 0
  let cur = parentId
  while (cur) { d++; cur = tree.entries.get(cur).parent }
  return d
}

/** Why adding `files` files / `folders` folders / `bytes` bytes would break a limit, or null. */
export function limitProblem (doc, tree, { files = 0, folders = 0, bytes = 0 } = {}, limits = LIMITS) {
  const all = Array.from(tree.entries.values())
  const nFiles = all.filter(e => e.kind === 'file').length
  const nFolders = all.length - nFiles
  if (nFiles + files > limits.files) return `a room holds at most ${limits.files} files (it has ${nFiles})`
  if (nFolders + folders > limits.folders) return `a room holds at most ${limits.folders} folders (it has ${nFolders})`
  if (bytes) {
    const total = totalBytes(doc, tree)
    if (total + bytes > limits.totalBytes) return `a room holds at most ${limits.totalBytes / (1024 * 1024)} MiB of files (it has ${(total / (1024 * 1024)).toFixed(1)} MiB)`
  }
  return null
}

export function totalBytes (doc, tree) {
  let total = 0
  for (const e of tree.entries.values()) if (e.kind === 'file') total += textBytes(fileText(doc, e))
  return total
}

/** UTF-8 size of a Y.Text; ASCII-only texts cost no encoding. */
export function textBytes (ytext) {
  const s = ytext.toString()
  // eslint-disable-next-line no-control-regex
  return /^[\x00-\x7f]*$/.test(s) ? s.length : byteLength(s)
}

function checkPlace (tree, name, parent, exceptId = null) {
  const problem = nameProblem(name)
  if (problem) throw new Error(problem)
  if (parent && (!tree.entries.has(parent) || tree.entries.get(parent).kind !== 'folder')) throw new Error('that folder no longer exists')
  if (tree.children(parent).some(e => e.name === name && e.id !== exceptId)) throw new Error(`"${name}" already exists in this folder`)
}

/** Add a file or folder in one transaction; throws an Error with a message for the user. */
export function createEntry (doc, kind, name, parent = '', { content = '', language = null, id = null } = {}) {
  const tree = readTree(doc)
  checkPlace(tree, name, parent)
  if (depthOf(tree, parent) + 1 > LIMITS.depth) throw new Error(`folders nest at most ${LIMITS.depth} deep`)
  const parentPath = parent ? tree.entries.get(parent).path + '/' : ''
  if (byteLength(parentPath + name) > LIMITS.pathBytes) throw new Error(`a path is at most ${LIMITS.pathBytes} bytes`)
  const limit = limitProblem(doc, tree, { files: kind === 'file' ? 1 : 0, folders: kind === 'folder' ? 1 : 0, bytes: content ? byteLength(content) : 0 })
  if (limit) throw new Error(limit)
  if (content && byteLength(content) > LIMITS.fileBytes) throw new Error(`a file is at most ${LIMITS.fileBytes / (1024 * 1024)} MiB`)
  id = id || newId()
  doc.transact(() => {
    const m = new Y.Map()
    filesMap(doc).set(id, m)
    m.set('name', name)
    m.set('parent', parent)
    m.set('kind', kind)
    if (kind === 'file') {
      m.set('text', textName(id))
      if (language) m.set('language', language)
      if (content) doc.getText(textName(id)).insert(0, content)
    }
  })
  return id
}

function entryMap (doc, id) {
  const m = filesMap(doc).get(id)
  if (!(m instanceof Y.Map)) throw new Error('that file or folder no longer exists')
  return m
}

export function renameEntry (doc, id, name) {
  const tree = readTree(doc)
  const e = tree.entries.get(id)
  if (!e) throw new Error('that file or folder no longer exists')
  if (name === e.name) return
  checkPlace(tree, name, e.parent, id)
  entryMap(doc, id).set('name', name)
}

export function moveEntry (doc, id, parent) {
  const tree = readTree(doc)
  const e = tree.entries.get(id)
  if (!e) throw new Error('that file or folder no longer exists')
  if (e.parent === parent) return
  for (let cur = parent; cur; cur = tree.entries.get(cur).parent) {
    if (cur === id) throw new Error('a folder cannot move into itself')
  }
  checkPlace(tree, e.name, parent, id)
  entryMap(doc, id).set('parent', parent)
}

/** Delete an entry and everything under it (texts cleared), in one transaction. */
export function deleteEntry (doc, id) {
  const tree = readTree(doc)
  if (!tree.entries.has(id)) throw new Error('that file or folder no longer exists')
  const doomed = [id, ...descendants(tree, id)]
  const files = filesMap(doc)
  doc.transact(() => {
    for (const x of doomed) {
      const e = tree.entries.get(x)
      if (e.kind === 'file') {
        const t = doc.getText(e.text)
        if (t.length) t.delete(0, t.length)
      }
      files.delete(x)
    }
    const meta = doc.getMap('meta')
    if (doomed.includes(meta.get('entry'))) meta.delete('entry')
  })
  return doomed
}

/** Override a file's language (null: back to the extension's). */
export function setLanguage (doc, id, language) {
  const m = entryMap(doc, id)
  if (!language) m.delete('language')
  else m.set('language', language)
}

/** The room's entry file (id), or null: Run then runs the file in view. */
export function setEntryFile (doc, id) {
  const meta = doc.getMap('meta')
  doc.transact(() => {
    if (meta.get('schema') !== SCHEMA) meta.set('schema', SCHEMA)
    if (id) meta.set('entry', id)
    else meta.delete('entry')
  })
}

/** The configured entry file if it is a file in the tree, else null. */
export function entryFile (doc, tree) {
  const id = doc.getMap('meta').get('entry')
  const e = typeof id === 'string' ? tree.entries.get(id) : null
  return e && e.kind === 'file' ? e : null
}

/**
 * Put uploaded files ({path, text}, paths relative to the top level) into the tree in ONE
 * transaction: missing folders are made, a file at an existing path gets the new content.
 * Everything is checked first (names, depth, limits); on any problem nothing is written.
 * Returns {added, replaced}.
 */
export function importFiles (doc, files, limits = LIMITS) {
  const tree = readTree(doc)
  const folderIds = new Map([['', '']]) // folder path -> id ('' = top level)
  tree.entries.forEach(e => { if (e.kind === 'folder') folderIds.set(e.path, e.id) })
  const newFolders = []
  const plan = []
  let bytes = 0
  let added = 0
  const seen = new Set()
  for (const { path, text } of files) {
    const parts = path.split('/')
    for (const part of parts) {
      const problem = nameProblem(part)
      if (problem) throw new Error(`${path}: ${problem}`)
    }
    if (parts.length > limits.depth) throw new Error(`${path}: folders nest at most ${limits.depth} deep`)
    if (byteLength(path) > limits.pathBytes) throw new Error(`${path}: a path is at most ${limits.pathBytes} bytes`)
    const size = byteLength(text)
    if (size > limits.fileBytes) throw new Error(`${path} is larger than ${limits.fileBytes / (1024 * 1024)} MiB`)
    if (seen.has(path)) throw new Error(`${path} appears twice`)
    seen.add(path)
    for (let i = 1; i < parts.length; i++) {
      const folder = parts.slice(0, i).join('/')
      const existing = tree.byPath.get(folder)
      if (existing && existing.kind !== 'folder') throw new Error(`${folder} is a file, not a folder`)
      if (!folderIds.has(folder) && !newFolders.includes(folder)) newFolders.push(folder)
    }
    const existing = tree.byPath.get(path)
    if (existing && existing.kind !== 'file') throw new Error(`${path} is a folder, not a file`)
    if (newFolders.includes(path)) throw new Error(`${path} is both a file and a folder`)
    if (!existing) added++
    bytes += size - (existing ? textBytes(fileText(doc, existing)) : 0)
    plan.push({ path, text, existing, parentPath: parts.slice(0, -1).join('/'), name: parts[parts.length - 1] })
  }
  const limit = limitProblem(doc, tree, { files: added, folders: newFolders.length, bytes: Math.max(0, bytes) }, limits)
  if (limit) throw new Error(limit)
  doc.transact(() => {
    for (const folder of newFolders) {
      const cut = folder.lastIndexOf('/')
      const id = newId()
      const m = new Y.Map()
      filesMap(doc).set(id, m)
      m.set('name', folder.slice(cut + 1))
      m.set('parent', folderIds.get(cut < 0 ? '' : folder.slice(0, cut)))
      m.set('kind', 'folder')
      folderIds.set(folder, id)
    }
    for (const f of plan) {
      if (f.existing) {
        const t = fileText(doc, f.existing)
        if (t.toString() !== f.text) { t.delete(0, t.length); t.insert(0, f.text) }
        continue
      }
      const id = newId()
      const m = new Y.Map()
      filesMap(doc).set(id, m)
      m.set('name', f.name)
      m.set('parent', folderIds.get(f.parentPath))
      m.set('kind', 'file')
      m.set('text', textName(id))
      if (f.text) doc.getText(textName(id)).insert(0, f.text)
    }
  })
  return { added, replaced: plan.length - added }
}

/** Every file as {path, text} (download). */
export function projectFiles (doc, tree = readTree(doc)) {
  return tree.files().sort((a, b) => cmp(a.path, b.path)).map(e => ({ path: e.path, text: fileText(doc, e).toString() }))
}
