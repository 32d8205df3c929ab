// The text formats of line-protocol sensors, one line in, named values out (or why not).
// json: {"id":"s1","t":21.5}; kv: id=s1;t=21.5;h=40; csv: s1,21.5,40 with configured columns;
// regex: a JavaScript regular expression whose named groups are the values.
import type { PortConfig } from './schema.js'

export type Fields = Record<string, unknown>
export type ParseResult = { ok: true; fields: Fields } | { ok: false; reason: 'garbage'; detail: string }

const NUMBER = /^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/

/** Numbers in text formats become numbers; the rest stays text. */
function scalar(s: string): string | number {
  const t = s.trim()
  return NUMBER.test(t) ? Number(t) : t
}

export function lineParser(cfg: PortConfig): (line: string) => ParseResult {
  const bad = (detail: string): ParseResult => ({ ok: false, reason: 'garbage', detail })
  switch (cfg.format) {
    case 'json':
      return (line) => {
        let v: unknown
        try {
          v = JSON.parse(line)
        } catch {
          return bad('not JSON')
        }
        if (typeof v !== 'object' || v === null || Array.isArray(v)) return bad('not a JSON object')
        return { ok: true, fields: v as Fields }
      }
    case 'kv': {
      const sep = cfg.separator ?? ';'
      return (line) => {
        const fields: Fields = {}
        for (const pair of line.split(sep)) {
          if (pair.trim() === '') continue
          const eq = pair.indexOf('=')
          if (eq <= 0) return bad(`"${pair}" is not key=value`)
          fields[pair.slice(0, eq).trim()] = scalar(pair.slice(eq + 1))
        }
        return Object.keys(fields).length > 0 ? { ok: true, fields } : bad('no key=value pairs')
      }
    }
    case 'csv': {
      const sep = cfg.separator ?? ','
      return (line) => {
        const cells = line.split(sep)
        if (cells.length !== cfg.columns.length) return bad(`${cells.length} columns, expected ${cfg.columns.length}`)
        const fields: Fields = {}
        cfg.columns.forEach((c, i) => (fields[c] = scalar(cells[i]!)))
        return { ok: true, fields }
      }
    }
    case 'regex': {
      const re = new RegExp(cfg.pattern!)
      return (line) => {
        const m = re.exec(line)
        if (!m?.groups) return bad('does not match the pattern')
        const fields: Fields = {}
        for (const [k, v] of Object.entries(m.groups)) if (v !== undefined) fields[k] = scalar(v)
        return { ok: true, fields }
      }
    }
    default:
      throw new Error(`serial port ${cfg.name}: no line format configured`)
  }
}

/**
 * Splits a byte stream into lines on the delimiter, with a bounded buffer: a line longer than
 * `maxBytes` is reported once as too long and skipped up to its delimiter. Bytes that are not
 * UTF-8 are reported as such. A trailing `\r` is dropped.
 */
export class LineFramer {
  private buf: Buffer = Buffer.alloc(0)
  private skipping = false
  private readonly delim: Buffer
  private readonly utf8 = new TextDecoder('utf-8', { fatal: true })

  constructor(
    delimiter: string,
    private readonly maxBytes: number,
    private readonly on: { line: (text: string) => void; reject: (reason: 'too_long' | 'not_utf8', detail: string) => void },
  ) {
    this.delim = Buffer.from(delimiter, 'utf8')
  }

  push(chunk: Buffer): void {
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk])
    for (;;) {
      const at = this.buf.indexOf(this.delim)
      if (at < 0) break
      const raw = this.buf.subarray(0, at)
      this.buf = this.buf.subarray(at + this.delim.length)
      if (this.skipping) {
        this.skipping = false
        continue
      }
      if (raw.length > this.maxBytes) {
        this.on.reject('too_long', `${raw.length} bytes`)
        continue
      }
      this.emitLine(raw)
    }
    if (this.buf.length > this.maxBytes) {
      if (!this.skipping) this.on.reject('too_long', `over ${this.maxBytes} bytes without a delimiter`)
      this.skipping = true
      this.buf = Buffer.alloc(0)
    }
  }

  /** What is left unterminated (at a disconnect): dropped; returns how many bytes that was. */
  reset(): number {
    const n = this.buf.length
    this.buf = Buffer.alloc(0)
    this.skipping = false
    return n
  }

  private emitLine(raw: Buffer): void {
    let text: string
    try {
      text = this.utf8.decode(raw)
    } catch {
      this.on.reject('not_utf8', raw.subarray(0, 32).toString('hex'))
      return
    }
    if (text.endsWith('\r')) text = text.slice(0, -1)
    if (text.trim() === '') return
    this.on.line(text)
  }
}
