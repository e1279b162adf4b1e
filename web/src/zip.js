// Download the room's files as a zip, and read an uploaded zip — checked in the browser before
// anything enters the document (docs/workspace.md, "Upload and download"). The central directory
// is read here (names, sizes, file types, flags); fflate only inflates. An archive is refused
// whole when any entry is a symbolic link or another non-regular file, has an absolute path, a
// drive letter, a backslash, an empty/./.. part or a name the tree does not allow, is encrypted
// or zip64, declares or inflates to more than the limits, or fails its CRC; binary files (not
// UTF-8, or holding NUL) are refused by name. `__MACOSX/` and `.DS_Store` entries are skipped.
import { inflateSync, zipSync } from 'fflate'
import { LIMITS, nameProblem } from './workspace.js'

export const MAX_UPLOAD_BYTES = 16 * 1024 * 1024 // the archive itself

const enc = new TextEncoder()
const utf8 = new TextDecoder('utf-8', { fatal: true })
const loose = new TextDecoder('utf-8')

/** A zip of `files` ([{path, text}]) as a Uint8Array. */
export function makeZip (files) {
  const tree = {}
  for (const f of files) tree[f.path] = [enc.encode(f.text), { level: 6 }]
  return zipSync(tree)
}

/** Why an uploaded path cannot go into the tree, or null. */
export function uploadPathProblem (path) {
  if (typeof path !== 'string' || !path) return 'an empty path'
  if (path.startsWith('/')) return 'an absolute path'
  if (/^[A-Za-z]:/.test(path)) return 'a drive letter'
  if (path.includes('\\')) return 'a backslash in the path'
  for (const part of path.split('/')) {
    if (part === '' || part === '.' || part === '..') return `a "${part || '(empty)'}" part in the path`
    const problem = nameProblem(part)
    if (problem) return problem
  }
  if (path.split('/').length > LIMITS.depth) return `folders nested deeper than ${LIMITS.depth}`
  if (enc.encode(path).length > LIMITS.pathBytes) return `a path longer than ${LIMITS.pathBytes} bytes`
  return null
}

function skipped (path) {
  return path.startsWith('__MACOSX/') || path === '.DS_Store' || path.endsWith('/.DS_Store')
}

/** Text of an uploaded file, or an Error naming it (binary files cannot be edited in a room). */
export function decodeText (path, bytes) {
  let text
  try { text = utf8.decode(bytes) } catch (e) { throw new Error(`${path} is refused: it is not a text file (not UTF-8); only text files can go into a room`) }
  if (text.includes('\u0000')) throw new Error(`${path} is refused: it is a binary file; only text files can go into a room`)
  return text.startsWith('\ufeff') ? text.slice(1) : text
}

const CRC_TABLE = (() => {
  const t = new Uint32Array(256)
  for (let n = 0; n < 256; n++) {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    t[n] = c >>> 0
  }
  return t
})()

export function crc32 (bytes) {
  let c = 0xffffffff
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8)
  return (c ^ 0xffffffff) >>> 0
}

/**
 * The files of a zip archive as [{path, text}], or an Error saying which entry is refused and why.
 * Nothing is returned unless every entry passed.
 */
export function readZip (data, limits = LIMITS) {
  if (!(data instanceof Uint8Array)) data = new Uint8Array(data)
  if (data.length > MAX_UPLOAD_BYTES) throw new Error(`the archive is larger than ${MAX_UPLOAD_BYTES / (1024 * 1024)} MiB`)
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength)
  // End of central directory: the last signature within the last 64 KiB + 22 bytes.
  let eocd = -1
  for (let i = data.length - 22; i >= Math.max(0, data.length - 22 - 0xffff); i--) {
    if (view.getUint32(i, true) === 0x06054b50) { eocd = i; break }
  }
  if (eocd < 0) throw new Error('not a zip archive')
  const count = view.getUint16(eocd + 10, true)
  const cdSize = view.getUint32(eocd + 12, true)
  const cdOffset = view.getUint32(eocd + 16, true)
  if (count === 0xffff || cdOffset === 0xffffffff) throw new Error('zip64 archives are not supported')
  if (cdOffset + cdSize > eocd) throw new Error('the archive is damaged (central directory)')
  if (count > limits.files * 2) throw new Error(`the archive has ${count} entries; a room holds at most ${limits.files} files`)
  const entries = []
  let p = cdOffset
  let declared = 0
  for (let n = 0; n < count; n++) {
    if (p + 46 > eocd || view.getUint32(p, true) !== 0x02014b50) throw new Error('the archive is damaged (entry header)')
    const madeBy = view.getUint16(p + 4, true)
    const flags = view.getUint16(p + 8, true)
    const method = view.getUint16(p + 10, true)
    const crc = view.getUint32(p + 16, true)
    const csize = view.getUint32(p + 20, true)
    const usize = view.getUint32(p + 24, true)
    const nameLen = view.getUint16(p + 28, true)
    const extraLen = view.getUint16(p + 30, true)
    const commentLen = view.getUint16(p + 32, true)
    const external = view.getUint32(p + 38, true)
    const local = view.getUint32(p + 42, true)
    const path = loose.decode(data.subarray(p + 46, p + 46 + nameLen))
    p += 46 + nameLen + extraLen + commentLen
    const shown = JSON.stringify(path.slice(0, 80))
    const unixMode = (madeBy >> 8) === 3 ? (external >>> 16) & 0o170000 : 0
    if (unixMode === 0o120000) throw new Error(`${shown} is refused: it is a symbolic link (only files and folders are accepted)`)
    const isDir = path.endsWith('/') || unixMode === 0o040000 || (external & 0x10) !== 0
    if (unixMode && unixMode !== 0o100000 && unixMode !== 0o040000) throw new Error(`${shown} is refused: it is not a regular file (only files and folders are accepted)`)
    const clean = isDir ? path.replace(/\/+$/, '') : path
    if (!clean && isDir) continue
    if (skipped(path)) continue
    const problem = uploadPathProblem(clean)
    if (problem) throw new Error(`${shown} is refused: ${problem}`)
    if (isDir) continue
    if (flags & 1) throw new Error(`${shown} is encrypted`)
    if (method !== 0 && method !== 8) throw new Error(`${shown} uses an unsupported compression method (${method})`)
    if (usize === 0xffffffff || csize === 0xffffffff) throw new Error('zip64 archives are not supported')
    if (usize > limits.fileBytes) throw new Error(`${shown} is larger than ${limits.fileBytes / (1024 * 1024)} MiB`)
    declared += usize
    if (declared > limits.totalBytes) throw new Error(`the archive's files are larger than ${limits.totalBytes / (1024 * 1024)} MiB`)
    entries.push({ path: clean, method, crc, csize, usize, local })
  }
  if (entries.length > limits.files) throw new Error(`the archive has ${entries.length} files; a room holds at most ${limits.files}`)
  const files = []
  for (const e of entries) {
    const shown = JSON.stringify(e.path.slice(0, 80))
    if (e.local + 30 > data.length || view.getUint32(e.local, true) !== 0x04034b50) throw new Error(`${shown}: the archive is damaged (local header)`)
    const start = e.local + 30 + view.getUint16(e.local + 26, true) + view.getUint16(e.local + 28, true)
    if (start + e.csize > data.length) throw new Error(`${shown}: the archive is truncated`)
    const raw = data.subarray(start, start + e.csize)
    let bytes
    try {
      bytes = e.method === 0 ? raw : inflateSync(raw, { out: new Uint8Array(e.usize) })
    } catch (err) {
      throw new Error(`${shown} cannot be unpacked: ${err.message}`)
    }
    if (bytes.length !== e.usize || crc32(bytes) !== e.crc) throw new Error(`${shown} does not match its declared size or checksum`)
    files.push({ path: e.path, text: decodeText(e.path, bytes) })
  }
  return files
}
