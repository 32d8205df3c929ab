// One serial port kept open: opened at start, reopened with backoff when it is missing or goes
// away (a USB-serial adapter unplugged), never throwing into the gateway. Its state and counters
// feed the diagnostics routes and the metrics; its recent traffic is kept for the monitor route.
import { EventEmitter } from 'node:events'
import { SerialPort } from 'serialport'
import type { Logger } from '../../core/log.js'
import type { PortConfig } from './schema.js'

export type PortState = 'opening' | 'open' | 'waiting' | 'stopped'

export interface PortCounters {
  opens: number
  openFailures: number
  /** The port went away while open (unplugged, read error). */
  lost: number
  bytesIn: number
  bytesOut: number
}

export interface TrafficFrame {
  at: number
  dir: 'in' | 'out'
  hex: string
}

const MONITOR_FRAMES = 100

export interface PortLinkEvents {
  data: [Buffer]
  open: []
  close: []
  /** An open attempt failed (the port is missing, busy or not permitted). */
  failed: []
  /** Bytes went in or out (for the live monitor). */
  traffic: [TrafficFrame]
}

export class PortLink extends EventEmitter<PortLinkEvents> {
  state: PortState = 'stopped'
  lastError: string | null = null
  readonly counters: PortCounters = { opens: 0, openFailures: 0, lost: 0, bytesIn: 0, bytesOut: 0 }
  /** The last frames in and out, for a technician watching the line. */
  readonly recent: TrafficFrame[] = []
  private port?: SerialPort
  private timer?: NodeJS.Timeout
  private backoffMs: number
  private stopping = false

  constructor(
    readonly cfg: PortConfig,
    private readonly log: Logger,
  ) {
    super()
    this.backoffMs = cfg.reopenMinMs
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
    this.state = 'stopped'
    clearTimeout(this.timer)
    const port = this.port
    this.port = undefined
    if (port?.isOpen) await new Promise<void>((resolve) => port.close(() => resolve()))
  }

  /** Write bytes; rejects when the port is not open or the write fails. */
  async write(bytes: Buffer): Promise<void> {
    const port = this.port
    if (!port || this.state !== 'open') throw new Error(`port ${this.cfg.name} (${this.cfg.path}) is not open`)
    await new Promise<void>((resolve, reject) => {
      port.write(bytes, (err) => (err ? reject(err) : resolve()))
    })
    await new Promise<void>((resolve, reject) => port.drain((err) => (err ? reject(err) : resolve())))
    this.counters.bytesOut += bytes.length
    this.remember('out', bytes)
  }

  private open(): void {
    if (this.stopping) return
    this.state = 'opening'
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
        this.lastError = err.message
        this.retryLater()
        this.emit('failed')
        return
      }
      this.counters.opens++
      this.backoffMs = c.reopenMinMs
      this.state = 'open'
      this.log.info({ port: c.name, path: c.path }, 'serial port open')
      this.emit('open')
    })
    port.on('data', (chunk: Buffer) => {
      this.counters.bytesIn += chunk.length
      this.remember('in', chunk)
      this.emit('data', chunk)
    })
    port.on('error', (err) => {
      this.lastError = err.message
    })
    port.on('close', (err?: Error | null) => {
      if (this.stopping || this.port !== port) return
      if (this.state !== 'open') return
      this.counters.lost++
      this.lastError = err?.message ?? 'port closed'
      this.log.warn({ port: c.name, path: c.path, err }, 'serial port lost; reopening with backoff')
      this.emit('close')
      this.retryLater()
    })
  }

  private retryLater(): void {
    if (this.stopping) return
    this.state = 'waiting'
    const port = this.port
    this.port = undefined
    if (port?.isOpen) port.close()
    clearTimeout(this.timer)
    this.timer = setTimeout(() => this.open(), this.backoffMs)
    this.backoffMs = Math.min(this.backoffMs * 2, this.cfg.reopenMaxMs)
  }

  private remember(dir: 'in' | 'out', bytes: Buffer): void {
    const frame: TrafficFrame = { at: Date.now(), dir, hex: bytes.toString('hex') }
    this.recent.push(frame)
    if (this.recent.length > MONITOR_FRAMES) this.recent.splice(0, this.recent.length - MONITOR_FRAMES)
    this.emit('traffic', frame)
  }
}
