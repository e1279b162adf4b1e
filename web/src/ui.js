// Tiny DOM helpers: no framework, just elements, a notice area and a router-friendly mount.
import { session } from './api.js'

/** h('div.cls#id', {attrs, on: {click}}, ...children) */
export function h (spec, attrs = {}, ...children) {
  const m = spec.match(/^([a-z0-9]+)?((?:[.#][\w-]+)*)$/i)
  const el = document.createElement((m && m[1]) || 'div')
  if (m && m[2]) {
    for (const part of m[2].match(/[.#][\w-]+/g) || []) {
      if (part[0] === '.') el.classList.add(part.slice(1))
      else el.id = part.slice(1)
    }
  }
  if (attrs === null || typeof attrs !== 'object' || attrs instanceof Node || Array.isArray(attrs)) {
    children.unshift(attrs)
    attrs = {}
  }
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue
    if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn)
    else if (k === 'text') el.textContent = v
    else if (k === 'value') el.value = v
    else if (k === 'testid') el.setAttribute('data-testid', v)
    else el.setAttribute(k, v === true ? '' : v)
  }
  append(el, children)
  return el
}

function append (el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue
    if (Array.isArray(c)) append(el, c)
    else el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)))
  }
}

export function clear (el) {
  while (el.firstChild) el.removeChild(el.firstChild)
  return el
}

/** A message area: `show(text, kind)` with kind in info|error|warn|ok; empty text hides it. */
export function notice (testid = 'notice') {
  const el = h('div.notice', { testid, role: 'status', hidden: true })
  return {
    el,
    show (text, kind = 'info') {
      el.textContent = text || ''
      el.className = `notice ${kind}`
      el.hidden = !text
    },
    clear () { el.hidden = true; el.textContent = '' }
  }
}

export function navigate (hash) {
  if (location.hash === hash) window.dispatchEvent(new HashChangeEvent('hashchange'))
  else location.hash = hash
}

/** Copy text; falls back to execCommand where the async clipboard API is unavailable (plain http). */
export async function copyText (text, input) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text)
      return true
    }
  } catch (e) {}
  if (input) {
    input.focus()
    input.select()
    try { return document.execCommand('copy') } catch (e) {}
  }
  return false
}

export function colorFor (seed) {
  // The signed-in user's own choice (account page) wins for their own id.
  const me = session.user
  if (me && me.color && seed === me.id) return { color: me.color, colorLight: `${me.color}40` }
  let x = 0
  for (const ch of String(seed)) x = (x * 31 + ch.charCodeAt(0)) >>> 0
  const hue = x % 360
  return { color: `hsl(${hue} 70% 45%)`, colorLight: `hsl(${hue} 70% 45% / 0.25)` }
}
