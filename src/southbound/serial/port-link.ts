// One serial port kept open: opened at start, reopened with backoff when it is missing or goes
// away (a USB-serial adapter unplugged), never throwing into the gateway. Its state and counters
// feed the diagnostics routes and the metrics; its traffic goes to the line monitor.
import { EventEmitter } from 'node:events'
import { SerialPort } from 'serialport'
import type { Logger } from '../../core/log.js'
import { silentIntervalMs } from './modbus-frame.js'
import { PortMonitor } from './port-monitor.js'
import type { PortConfig } from './schema.js'

export type PortState = 'opening' | 'open' | 'waiting' | 'stopped'

export interface PortCounters {
  opens: number
  openFailures: number
  /** The port went away while open (unplugged, read error). */
  lost: number
  bytesIn: number
  bytesOut: number
  /** Writes that went out whole (a Modbus request, a command or acknowledgement line). */
  writes: number
  /** Writes that failed (the port closed under them, an I/O error, or stuck past their deadline). */
  failedWrites: number
}

export interface PortLinkEvents {
  data: [Buffer]
  open: []
  close: []
  /** An open attempt failed (the port is missing, busy or not permitted). */
  failed: []
}

export class PortLink extends EventEmitter<PortLinkEvents> {
  state: PortState = 'stopped'
  /** Since when the port is in its state (ms since the epoch). */
  stateSince = Date.now()
  lastError: string | null = null
  lastErrorAt: number | null = null
  /** The last byte in or out (ms since the epoch). */
  lastActivityAt: number | null = null
  readonly counters: PortCounters = { opens: 0, openFailures: 0, lost: 0, bytesIn: 0, bytesOut: 0, writes: 0, failedWrites: 0 }
  /** What crosses the line, for a technician watching it. */
  readonly monitor: PortMonitor
  private port?: SerialPort
  private timer?: NodeJS.Timeout
  // The writes in flight on the open port, failed at once when it closes.
  private readonly writing = new Set<(err: Error) => void>()
  private backoffMs: number
  private stopping = false

  constructor(
    readonly cfg: PortConfig,
    private readonly log: Logger,
  ) {
    super()
    this.backoffMs = cfg.reopenMinMs
    // A Modbus frame ends at a silence (3.5 characters; a USB adapter delivers in bursts, so at
    // least 20 ms); a line at its delimiter, or after half a second without more.
    this.monitor = new PortMonitor(cfg.protocol === 'modbus-rtu' ? { gapMs: Math.max(20, 3 * silentIntervalMs(cfg.baudRate)) } : { delimiter: cfg.delimiter, gapMs: 500 })
  }

  get isOpen(): boolean {
    return this.state === 'open'
  }

  start(): void {
    this.stopping = false
    this.open()
  }

  async stop(): Promise<void> {
    this.stopping = true
    this.setState('stopped')
    clearTimeout(this.timer)
    this.failWrites('stopped')
    const port = this.port
    this.port = undefined
    if (port?.isOpen) await new Promise<void>((resolve) => port.close(() => resolve()))
  }

  /**
   * Write bytes; resolves once they are out, rejects when the port is not open, closes under the
   * write or the write fails. It always settles: serialport holds a write (or drain) issued while
   * the port is closing until that same object opens again, which never happens here (a reopen is a
   * new object), and a Modbus bus waiting on that write would never poll again (the replug test
   * that failed in CI). A write stuck past its deadline counts as the port lost.
   */
  async write(bytes: Buffer): Promise<void> {
    const port = this.port
    if (!port || this.state !== 'open' || !port.isOpen) throw new Error(`port ${this.cfg.name} (${this.cfg.path}) is not open`)
    this.monitor.record('tx', bytes)
    this.lastActivityAt = Date.now()
    const deadlineMs = 2_000 + Math.ceil((bytes.length * 11 * 2_000) / this.cfg.baudRate)
    try {
      await new Promise<void>((resolve, reject) => {
        let settled = false
        const finish = (err?: Error | null): void => {
          if (settled) return
          settled = true
          clearTimeout(timer)
          this.writing.delete(finish)
          if (err) reject(err)
          else resolve()
        }
        const timer = setTimeout(() => {
          const err = new Error(`a write to port ${this.cfg.name} did not finish within ${deadlineMs} ms`)
          finish(err)
          this.lose(port, err)
        }, deadlineMs)
        this.writing.add(finish)
        port.write(bytes, (err) => {
          if (err) finish(err)
          else port.drain((e) => finish(e))
        })
      })
    } catch (err) {
      this.counters.failedWrites++
      throw err
    }
    this.counters.writes++
    this.counters.bytesOut += bytes.length
  }

  private open(): void {
    if (this.stopping) return
    this.setState('opening')
    const c = this.cfg
    const port = new SerialPort({ path: c.path, baudRate: c.baudRate, dataBits: c.dataBits, parity: c.parity, stopBits: c.stopBits, autoOpen: false })
    this.port = port
    port.open((err) => {
      if (this.stopping || this.port !== port) {
        if (!err) port.close()
        return
      }
      if (err) {
        this.counters.openFailures++
        // Logged once per outage, not on every retry.
        if (this.lastError !== err.message) this.log.warn({ port: c.name, path: c.path, err, retryInMs: this.backoffMs }, 'serial port cannot be opened; retrying with backoff')
        this.noteError(err.message)
        this.retryLater()
        this.emit('failed')
        return
      }
      this.counters.opens++
      this.backoffMs = c.reopenMinMs
      this.setState('open')
      this.log.info({ port: c.name, path: c.path }, 'serial port open')
      this.emit('open')
    })
    port.on('data', (chunk: Buffer) => {
      this.counters.bytesIn += chunk.length
      this.lastActivityAt = Date.now()
      this.monitor.record('rx', chunk)
      this.emit('data', chunk)
    })
    port.on('error', (err) => {
      if (this.port === port) this.noteError(err.message)
    })
    port.on('close', (err?: Error | null) => this.lose(port, err))
  }

  /** The open port went away (closed under us, or a write stuck): counted, logged, reopened. */
  private lose(port: SerialPort, err?: Error | null): void {
    if (this.stopping || this.port !== port || this.state !== 'open') return
    this.counters.lost++
    this.noteError(err?.message ?? 'port closed')
    this.log.warn({ port: this.cfg.name, path: this.cfg.path, err }, 'serial port lost; reopening with backoff')
    this.emit('close')
    this.retryLater()
  }

  private failWrites(why: string): void {
    for (const fail of [...this.writing]) fail(new Error(`port ${this.cfg.name} ${why}`))
  }

  private noteError(message: string): void {
    this.lastError = message
    this.lastErrorAt = Date.now()
  }

  private setState(state: PortState): void {
    if (state !== this.state) this.stateSince = Date.now()
    this.state = state
  }

  private retryLater(): void {
    if (this.stopping) return
    this.setState('waiting')
    this.failWrites('closed during the write')
    const port = this.port
    this.port = undefined
    if (port?.isOpen) port.close()
    clearTimeout(this.timer)
    this.timer = setTimeout(() => this.open(), this.backoffMs)
    this.backoffMs = Math.min(this.backoffMs * 2, this.cfg.reopenMaxMs)
  }
}
