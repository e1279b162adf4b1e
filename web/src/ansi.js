// ANSI escape sequences (SGR colours and styles) in run output, parsed into plain spans. The
// output is never put into the page as HTML: callers make text nodes, and a span's style is
// chosen from these fields only (a closed set of colour classes or an rgb() we build), so a
// program cannot inject markup. Every other escape sequence (cursor moves, titles, …) is dropped.

const BASIC = ['black', 'red', 'green', 'yellow', 'blue', 'magenta', 'cyan', 'white']
// xterm's 16 colours, then the 6×6×6 cube and the grey ramp of the 256-colour palette.
const PALETTE16 = ['#000000', '#cd3131', '#0dbc79', '#e5e510', '#2472c8', '#bc3fbc', '#11a8cd', '#e5e5e5',
  '#666666', '#f14c4c', '#23d18b', '#f5f543', '#3b8eea', '#d670d6', '#29b8db', '#ffffff']

function color256 (n) {
  if (n < 16) return PALETTE16[n]
  if (n < 232) {
    const i = n - 16
    const v = (x) => (x === 0 ? 0 : 55 + x * 40)
    return `rgb(${v(Math.floor(i / 36))}, ${v(Math.floor(i / 6) % 6)}, ${v(i % 6)})`
  }
  const g = 8 + (n - 232) * 10
  return `rgb(${g}, ${g}, ${g})`
}

const clamp = (x) => Math.max(0, Math.min(255, x | 0))

function applySgr (style, params) {
  const p = params.length ? params : [0]
  for (let i = 0; i < p.length; i++) {
    const c = p[i]
    if (c === 0) { for (const k of Object.keys(style)) delete style[k] } else if (c === 1) style.bold = true
    else if (c === 2) style.dim = true
    else if (c === 3) style.italic = true
    else if (c === 4) style.underline = true
    else if (c === 22) { delete style.bold; delete style.dim } else if (c === 23) delete style.italic
    else if (c === 24) delete style.underline
    else if (c >= 30 && c <= 37) style.fg = PALETTE16[c - 30]
    else if (c >= 90 && c <= 97) style.fg = PALETTE16[c - 90 + 8]
    else if (c >= 40 && c <= 47) style.bg = PALETTE16[c - 40]
    else if (c >= 100 && c <= 107) style.bg = PALETTE16[c - 100 + 8]
    else if (c === 39) delete style.fg
    else if (c === 49) delete style.bg
    else if ((c === 38 || c === 48) && p[i + 1] === 5 && p[i + 2] !== undefined) {
      style[c === 38 ? 'fg' : 'bg'] = color256(clamp(p[i + 2])); i += 2
    } else if ((c === 38 || c === 48) && p[i + 1] === 2 && p[i + 4] !== undefined) {
      style[c === 38 ? 'fg' : 'bg'] = `rgb(${clamp(p[i + 2])}, ${clamp(p[i + 3])}, ${clamp(p[i + 4])})`; i += 4
    }
  }
}

// CSI (ESC [ params intermediates final), OSC (ESC ] … BEL or ESC \), other two-character escapes.
// eslint-disable-next-line no-control-regex
const ESCAPE = /\x1b\[([0-9;:?]*)[ -/]*([@-~])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?/g

/**
 * Parse `text` (which may hold escape sequences) starting in `state` (a style object, changed in
 * place so the next chunk continues with it). Returns [{text, style}] with `style` a fresh copy.
 */
export function parseAnsi (text, state = {}) {
  const out = []
  let last = 0
  const push = (s) => { if (s) out.push({ text: s, style: { ...state } }) }
  ESCAPE.lastIndex = 0
  let m
  while ((m = ESCAPE.exec(text)) !== null) {
    push(text.slice(last, m.index))
    last = ESCAPE.lastIndex
    if (m[2] === 'm' && m[1] !== undefined && !m[1].includes('?')) {
      applySgr(state, m[1] === '' ? [] : m[1].split(/[;:]/).map(x => (x === '' ? 0 : parseInt(x, 10))))
    }
  }
  push(text.slice(last))
  return out
}

/** The inline style for a span (built from parsed numbers only, never from program text). */
export function styleText (style) {
  const parts = []
  if (style.fg) parts.push(`color:${style.fg}`)
  if (style.bg) parts.push(`background:${style.bg}`)
  if (style.bold) parts.push('font-weight:bold')
  if (style.dim) parts.push('opacity:.7')
  if (style.italic) parts.push('font-style:italic')
  if (style.underline) parts.push('text-decoration:underline')
  return parts.join(';')
}

export { BASIC }
