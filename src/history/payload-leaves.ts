// What of a payload becomes a series: the numeric and boolean leaves of its JSON, each named by its
// path (`{"env": {"temp": 21.5}}` -> `env.temp`; array items by index, `cells.0`). A payload that
// is a bare number is one leaf with an empty path. Anything else (text, binary) has no leaves.

// Bounds per message: a history is for values over time, not for documents.
const MAX_LEAVES = 256
const MAX_DEPTH = 8

export interface Leaf {
  path: string
  value: number
}

export function payloadLeaves(text: string): Leaf[] {
  if (!mayHaveLeaves(text)) return []
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch {
    return []
  }
  const out: Leaf[] = []
  walk(doc, '', 0, out)
  return out
}

/**
 * Whether the text can be JSON with leaves at all: an object, an array, a number or true/false. A
 * payload that is not (plain text, binary, a JSON string) is passed over without JSON.parse, whose
 * SyntaxError costs the writer thread tens of microseconds per payload.
 */
function mayHaveLeaves(text: string): boolean {
  let i = 0
  while (i < text.length && isJsonSpace(text.charCodeAt(i))) i++
  if (i === text.length) return false
  const c = text.charCodeAt(i)
  // { [ - 0-9
  if (c === 0x7b || c === 0x5b || c === 0x2d || (c >= 0x30 && c <= 0x39)) return true
  // true / false, alone (with JSON whitespace around)
  if (c === 0x74 || c === 0x66) {
    const word = text.trim()
    return word === 'true' || word === 'false'
  }
  return false
}

const isJsonSpace = (c: number): boolean => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09

function walk(v: unknown, path: string, depth: number, out: Leaf[]): void {
  if (out.length >= MAX_LEAVES) return
  if (typeof v === 'number') {
    if (Number.isFinite(v)) out.push({ path, value: v })
  } else if (typeof v === 'boolean') {
    out.push({ path, value: v ? 1 : 0 })
  } else if (v !== null && typeof v === 'object' && depth < MAX_DEPTH) {
    const entries = Array.isArray(v) ? v.map((x, i) => [String(i), x] as const) : Object.entries(v)
    for (const [k, x] of entries) walk(x, path ? `${path}.${k}` : k, depth + 1, out)
  }
}
