// What crosses one serial line, for a technician watching it (the monitor route): the bytes in
// (rx) and out (tx), cut into frames the way the line is read (a line port at its delimiter, a
// Modbus bus at the silence between frames), the last RING of them kept. Cheap when nobody
// watches: a copy of each frame (at most MAX_FRAME_BYTES) into a fixed ring, no text, no events, no timers; the hex and text
// are made only for a watcher or a snapshot.

export type Direction = 'rx' | 'tx'

export interface MonitorFrame {
  /** When its first byte was seen (ms since the epoch). */
  ts: number
  dir: Direction
  bytes: Buffer
}

/** A frame as the route sends it. */
export interface MonitorLine {
  ts: number
  dir: Direction
  hex: string
  /** The bytes as text: printable ASCII as is, every other byte as `.` (the hex says which). */
  text: string
}

/** Frames kept for a snapshot. */
export const RING = 100
/** The most one frame holds; a longer run of bytes is cut into several. */
export const MAX_FRAME_BYTES = 1024

export function toLine(f: MonitorFrame): MonitorLine {
  return { ts: f.ts, dir: f.dir, hex: f.bytes.toString('hex'), text: f.bytes.toString('latin1').replace(/[^\x20-\x7e]/g, '.') }
}

export interface MonitorOptions {
  /** A line port's delimiter: each line is one frame. */
  delimiter?: string
  /** Bytes in that follow the previous ones after more than this are a new frame. */
  gapMs: number
}

export class PortMonitor {
  private readonly ring: MonitorFrame[] = []
  private head = 0
  private readonly delimiter?: Buffer
  // The frame coming in, not finished yet (no delimiter, no silence, no write since).
  private pending: Buffer[] = []
  private pendingBytes = 0
  private pendingTs = 0
  private lastRxAt = 0
  private readonly watchers = new Set<(f: MonitorFrame) => void>()
  private timer?: NodeJS.Timeout
  /** Frames a watcher too slow to take them missed (counted by the route that serves it). */
  dropped = 0

  constructor(private readonly opts: MonitorOptions) {
    if (opts.delimiter) this.delimiter = Buffer.from(opts.delimiter, 'utf8')
  }

  get watching(): number {
    return this.watchers.size
  }

  /** Bytes that crossed the line. */
  record(dir: Direction, bytes: Buffer, now = Date.now()): void {
    if (bytes.length === 0) return
    if (dir === 'tx') {
      // A write ends what came in before it (a Modbus answer, a partial line).
      this.flushPending()
      for (let at = 0; at < bytes.length; at += MAX_FRAME_BYTES) this.push({ ts: now, dir, bytes: Buffer.from(bytes.subarray(at, at + MAX_FRAME_BYTES)) })
      return
    }
    if (this.pendingBytes > 0 && now - this.lastRxAt > this.opts.gapMs) this.flushPending()
    this.lastRxAt = now
    if (this.pendingBytes === 0) this.pendingTs = now
    this.pending.push(bytes)
    this.pendingBytes += bytes.length
    if (this.delimiter) this.cutLines()
    while (this.pendingBytes >= MAX_FRAME_BYTES) this.cut(MAX_FRAME_BYTES)
    // Only a watcher needs the last frame before a silence at once; a snapshot looks at it anyway.
    if (this.watchers.size > 0 && this.pendingBytes > 0) this.armTimer()
  }

  /** The frames kept, oldest first, with the one still coming in. */
  recent(): MonitorFrame[] {
    const kept = [...this.ring.slice(this.head), ...this.ring.slice(0, this.head)]
    if (this.pendingBytes > 0) kept.push({ ts: this.pendingTs, dir: 'rx', bytes: Buffer.concat(this.pending) })
    return kept
  }

  /** Each frame from now on, until the returned function is called. */
  watch(listener: (f: MonitorFrame) => void): () => void {
    this.watchers.add(listener)
    return () => {
      this.watchers.delete(listener)
      if (this.watchers.size === 0) clearTimeout(this.timer)
    }
  }

  private armTimer(): void {
    if (this.timer) this.timer.refresh()
    else {
      this.timer = setTimeout(() => {
        this.timer = undefined
        if (Date.now() - this.lastRxAt >= this.opts.gapMs) this.flushPending()
        else if (this.pendingBytes > 0 && this.watchers.size > 0) this.armTimer()
      }, this.opts.gapMs)
      this.timer.unref()
    }
  }

  private cutLines(): void {
    const all = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending)
    let start = 0
    let at: number
    while ((at = all.indexOf(this.delimiter!, start)) >= 0) {
      const end = at + this.delimiter!.length
      this.push({ ts: this.pendingTs, dir: 'rx', bytes: Buffer.from(all.subarray(start, end)) })
      start = end
      this.pendingTs = this.lastRxAt
    }
    this.pending = start < all.length ? [all.subarray(start)] : []
    this.pendingBytes = all.length - start
  }

  private cut(n: number): void {
    const all = Buffer.concat(this.pending)
    this.push({ ts: this.pendingTs, dir: 'rx', bytes: Buffer.from(all.subarray(0, n)) })
    this.pending = all.length > n ? [all.subarray(n)] : []
    this.pendingBytes = all.length - n
    this.pendingTs = this.lastRxAt
  }

  private flushPending(): void {
    if (this.pendingBytes === 0) return
    this.cut(this.pendingBytes)
  }

  private push(f: MonitorFrame): void {
    if (this.ring.length < RING) this.ring.push(f)
    else {
      this.ring[this.head] = f
      this.head = (this.head + 1) % RING
    }
    for (const w of this.watchers) w(f)
  }
}
