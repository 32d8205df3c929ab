// The recent log lines, in memory, for the technician's log page and the diagnostics bundle: the
// same JSON lines that went to stdout (after redaction), bounded by count and by bytes, oldest
// dropped first. It is a tap on the logger (LoggerOptions.tap), never a second logger: what
// stdout shows does not change.
export const LOG_RING_LINES = 2_000
export const LOG_RING_BYTES = 1 << 20

interface Entry {
  level: number
  line: string
}

export class LogRing {
  private readonly entries: Entry[] = []
  // The oldest entry still kept: a moving start, so dropping one is O(1) (compacted now and then).
  private head = 0
  private bytes = 0
  private readonly listeners = new Set<(line: string, level: number) => void>()

  constructor(
    private readonly maxLines = LOG_RING_LINES,
    private readonly maxBytes = LOG_RING_BYTES,
  ) {}

  /** The logger's tap (LoggerOptions.tap). */
  readonly push = (line: string, level: number): void => {
    const text = line.endsWith('\n') ? line.slice(0, -1) : line
    this.entries.push({ level, line: text })
    this.bytes += text.length
    while (this.entries.length - this.head > this.maxLines || (this.bytes > this.maxBytes && this.entries.length - this.head > 1)) {
      this.bytes -= this.entries[this.head].line.length
      this.head++
    }
    if (this.head > 1024 && this.head * 2 > this.entries.length) {
      this.entries.splice(0, this.head)
      this.head = 0
    }
    for (const l of this.listeners) l(text, level)
  }

  /** Told each line after it is kept (the live stream, the per-device error counts); returns the function that stops it. */
  onLine(listener: (line: string, level: number) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  get size(): number {
    return this.entries.length - this.head
  }

  /** The newest `limit` lines at `minLevel` or above, oldest first, as the JSON text they were logged as. */
  lines(minLevel = 0, limit = this.maxLines): string[] {
    const out: string[] = []
    for (let i = this.entries.length - 1; i >= this.head && out.length < limit; i--) {
      const e = this.entries[i]
      if (e.level >= minLevel) out.push(e.line)
    }
    return out.reverse()
  }
}
