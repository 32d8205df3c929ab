// One MQTT connection to the cloud hub that drains (part of) the outbox. The outbox is the only
// source of truth: every connection starts from a fresh MQTT.js client whose own in-memory store is
// empty, and the link resends every row the hub has not acknowledged, with its original topic and
// MessageId (at-least-once; the hub's duplicate filter does the rest).
import mqtt, { type MqttClient, type IClientOptions } from 'mqtt'
import type { Socket } from 'node:net'
import type { Logger } from '../core/log.js'
import type { Metrics } from '../core/metrics.js'
import type { Outbox, OutboxRow, Priority } from '../store/outbox.js'
import { PRIORITIES } from '../store/outbox.js'
import { ErrorCodes } from '../core/errors.js'
import { redactUrls } from '../core/log.js'
import type { LinkError } from '../core/link-types.js'

export type { LinkError } from '../core/link-types.js'

export interface HubLinkOptions {
  url: string
  clientId: string
  username?: string
  password?: string
  keepalive: number
  inflight: number
  maxRate: number
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer; rejectUnauthorized: boolean }
  /** Drain only this device's rows (northbound `devices` mode); all rows when absent. */
  device?: string
  /** Topic filters to hold on the hub (command topics). */
  subscriptions: () => string[]
  /** A message from the hub; it is PUBACKed only once this resolves (the command is durable). */
  onMessage: (topic: string, payload: Buffer) => Promise<void>
  /** What this link held on the hub in an earlier connection or run (persistent session). */
  heldSubscriptions?: { load: () => string[]; save: (filters: string[]) => void }
  /** Called once per connection after the subscriptions are in place. */
  onConnected?: () => void
}

const READ_BATCH = 512
const BACKOFF_MIN_MS = 1_000
const BACKOFF_MAX_MS = 60_000
const STABLE_AFTER_MS = 60_000
const ERROR_TEXT_MAX = 300

export class HubLink {
  private client?: MqttClient
  private generation = 0
  private connected = false
  private connectedSince = 0
  // Since when the hub is out of reach: the start, or the loss of the last connection; null while up.
  private downAt: number | null = null
  // The backlog found at (re)connect, until it has all reached the hub: for the "drained" line.
  private backlog: { messages: number; since: number } | null = null
  private attempts = 0
  private reconnectTimer?: NodeJS.Timeout
  private rateTimer?: NodeJS.Timeout
  private stopped = true
  private readonly inflight = new Set<number>()
  private buffer: OutboxRow[] = []
  private bufferPos = 0
  private cursors: Record<Priority, number> = { 0: 0, 1: 0, 2: 0 }
  private readonly subscribed = new Set<string>()
  private refusedLogged = false
  // Whether the outbox may hold rows past our cursors: set on every commit, cleared when a read
  // finds nothing. Without it every acknowledgement would cost three empty queries.
  private maybeMore = true
  private tokens = 0
  private lastRefill = 0
  private error: LinkError | null = null
  // Whether this connection attempt has reported an error yet (else its close is described).
  private erredThisAttempt = false
  private retryAt: number | null = null
  /** Rows the hub acknowledged since the start (the drain rate is sampled from it). */
  acked = 0
  // How many of `acked` the metric has been told about.
  private metered = 0

  constructor(
    private readonly outbox: Outbox,
    private readonly opts: HubLinkOptions,
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {}

  get isConnected(): boolean {
    return this.connected
  }

  get since(): number | null {
    return this.connected ? this.connectedSince : null
  }

  get downSince(): number | null {
    return this.connected ? null : this.downAt
  }

  /** The last failure of this link (kept after it is up again, with its time). */
  get lastError(): LinkError | null {
    return this.error
  }

  /** When the next connection attempt is due (ms); null while connected or while an attempt runs. */
  get nextRetryAt(): number | null {
    return this.connected || this.stopped ? null : this.retryAt
  }

  private noteError(err: Error & { code?: unknown }, reason?: string): void {
    this.erredThisAttempt = true
    const code = reason ?? (typeof err.code === 'number' ? `connack:${err.code}` : typeof err.code === 'string' ? err.code : null)
    let message = redactUrls(err.message)
    if (this.opts.password) message = message.split(this.opts.password).join('[redacted]')
    this.error = { at: Date.now(), code: ErrorCodes.NORTHBOUND, reason: code, message: message.slice(0, ERROR_TEXT_MAX) }
  }

  start(): void {
    this.stopped = false
    this.downAt = Date.now()
    this.connect()
  }

  private connect(): void {
    const gen = ++this.generation
    this.retryAt = null
    this.erredThisAttempt = false
    const o: IClientOptions = {
      clientId: this.opts.clientId,
      username: this.opts.username,
      password: this.opts.password,
      keepalive: this.opts.keepalive,
      // A persistent session: commands the hub publishes during a short outage arrive afterwards.
      clean: false,
      protocolVersion: 4,
      reconnectPeriod: 0, // our own backoff with jitter, below
      connectTimeout: 15_000,
      ...(this.opts.tls ?? {}),
    }
    const client = mqtt.connect(this.opts.url, o)
    this.client = client
    client.on('connect', () => {
      if (gen !== this.generation) return
      // Nagle + delayed ACK collapse a window of small QoS 1 publishes to ~1k msg/s.
      ;(client.stream as Socket).setNoDelay?.(true)
      this.connected = true
      this.connectedSince = Date.now()
      this.metrics.northboundConnected.set(1)
      const outageS = this.downAt === null ? null : Math.round((this.connectedSince - this.downAt) / 1000)
      this.downAt = null
      const waiting = this.waiting()
      this.backlog = waiting > 0 && this.opts.device === undefined ? { messages: waiting, since: this.connectedSince } : null
      this.log.info(
        { url: this.opts.url, clientId: this.opts.clientId, outageS, waiting },
        `connected to hub${outageS === null ? '' : ` after ${outageS} s without it`}; ${waiting} message(s) waiting in the outbox are sent now`,
      )
      // The hub may still hold subscriptions of our persistent session from before (an earlier run
      // included): what is no longer wanted is unsubscribed; what is wanted is subscribed again.
      const wanted = new Set(this.opts.subscriptions())
      const stale = (this.opts.heldSubscriptions?.load() ?? []).filter((f) => !wanted.has(f))
      if (stale.length) {
        this.log.info({ filters: stale }, 'dropping hub subscriptions that are no longer wanted')
        client.unsubscribe(stale)
      }
      this.subscribed.clear()
      this.syncSubscriptions()
      this.opts.onConnected?.()
      this.pump()
    })
    // MQTT.js sends the PUBACK when handleMessage calls back: only after the command is durable.
    // A command that cannot be stored is not acknowledged; dropping the connection makes the hub
    // send it again from the persistent session once we are back.
    client.handleMessage = (packet, done) => {
      if (gen !== this.generation) return done(new Error('stale connection'))
      this.opts.onMessage(packet.topic, packet.payload as Buffer).then(
        () => done(),
        (err: Error) => {
          this.log.warn({ err: err.message, topic: packet.topic, code: ErrorCodes.NORTHBOUND }, 'could not store a message from the hub; it will be redelivered')
          done(err)
          client.end(true)
        },
      )
    }
    client.on('error', (err) => {
      if (gen !== this.generation) return
      this.noteError(err)
      this.log.warn({ err: err.message, code: ErrorCodes.NORTHBOUND, url: this.opts.url }, 'hub connection error')
    })
    client.on('close', () => {
      if (gen !== this.generation) return
      if (!this.erredThisAttempt) {
        this.noteError(new Error(this.connected ? 'the hub closed the connection' : 'the connection closed before the hub accepted it'), this.connected ? 'closed' : 'not_accepted')
      }
      this.onDown()
    })
  }

  private onDown(): void {
    const wasUp = this.connected
    if (wasUp && Date.now() - this.connectedSince >= STABLE_AFTER_MS) this.attempts = 0
    this.connected = false
    this.metrics.northboundConnected.set(0)
    if (wasUp) this.downAt = Date.now()
    // Forget everything in flight: it is all still in the outbox and is sent again from the start.
    this.generation++
    this.client?.end(true)
    this.client = undefined
    this.outbox.unsent(this.inflight)
    this.inflight.clear()
    this.buffer = []
    this.bufferPos = 0
    this.cursors = { 0: 0, 1: 0, 2: 0 }
    this.maybeMore = true
    if (this.stopped) return
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempts++)
    const delay = Math.round(base / 2 + (Math.random() * base) / 2)
    const nextAttemptS = Math.round(delay / 100) / 10
    const waiting = this.waiting()
    if (wasUp) {
      this.log.warn({ url: this.opts.url, waiting, nextAttemptS, code: ErrorCodes.NORTHBOUND }, `hub connection lost; ${waiting} message(s) wait in the outbox; next attempt in ${nextAttemptS} s`)
    } else {
      const downForS = this.downAt === null ? null : Math.round((Date.now() - this.downAt) / 1000)
      this.log.info({ url: this.opts.url, waiting, downForS, nextAttemptS }, `hub still unreachable (${downForS} s); ${waiting} message(s) wait in the outbox; next attempt in ${nextAttemptS} s`)
    }
    this.metrics.northboundReconnects.inc()
    this.retryAt = Date.now() + delay
    this.reconnectTimer = setTimeout(() => this.connect(), delay)
  }

  /** Messages in the outbox this link drains (all of them in gateway mode). */
  private waiting(): number {
    try {
      return this.outbox.stats().messages
    } catch {
      return -1 // a count is not worth failing the link over
    }
  }

  /** Subscribe what is wanted and not held; unsubscribe what is held and no longer wanted. */
  syncSubscriptions(): void {
    const client = this.client
    if (!client || !this.connected) return
    const want = new Set(this.opts.subscriptions())
    const add = [...want].filter((t) => !this.subscribed.has(t))
    const remove = [...this.subscribed].filter((t) => !want.has(t))
    if (remove.length) {
      for (const t of remove) this.subscribed.delete(t)
      client.unsubscribe(remove)
    }
    for (const t of add) this.subscribed.add(t)
    if (add.length || remove.length || this.heldDirty) this.saveHeld()
    if (!add.length) return
    client.subscribe(add, { qos: 1 }, (err, granted) => {
      if (err) return this.log.warn({ err: err.message }, 'hub subscription failed')
      const refused = (granted ?? []).filter((g) => g.qos === 128)
      if (refused.length && !this.refusedLogged) {
        this.refusedLogged = true
        this.log.info({ topics: refused.map((g) => g.topic) }, 'hub refused a command subscription (SUBACK 0x80): assuming it subscribes server-side')
      }
    })
  }

  private heldDirty = true

  private saveHeld(): void {
    try {
      this.opts.heldSubscriptions?.save([...this.subscribed])
      this.heldDirty = false
    } catch (err) {
      // Bookkeeping only (a full disk): the next change tries again.
      this.heldDirty = true
      this.log.warn({ err: (err as Error).message }, 'could not record the hub subscriptions')
    }
  }

  /** Rows the quota evicted: never publish them from the read-ahead buffer. */
  forget(ids: ReadonlySet<number>): void {
    if (this.bufferPos < this.buffer.length) {
      this.buffer = this.buffer.slice(this.bufferPos).filter((r) => !ids.has(r.id))
      this.bufferPos = 0
    }
  }

  /** New rows were committed. A link that has read everything before them takes them as they are. */
  wake(rows?: readonly OutboxRow[]): void {
    const pending = this.buffer.length - this.bufferPos
    // Only while caught up, and only a read-ahead's worth: when intake outpaces the hub, the rows
    // wait in the outbox (not in memory) and are read in order from there.
    if (rows && this.connected && !this.maybeMore && pending + rows.length <= READ_BATCH) {
      const mine = this.opts.device === undefined ? rows : rows.filter((r) => r.device === this.opts.device)
      if (mine.length) {
        for (const r of mine) this.cursors[r.prio] = Math.max(this.cursors[r.prio], r.id)
        // Highest priority first, in id order within a priority: what refill() would have read.
        this.buffer = this.buffer.slice(this.bufferPos).concat(mine).sort((a, b) => a.prio - b.prio || a.id - b.id)
        this.bufferPos = 0
      }
    } else {
      this.maybeMore = true
    }
    this.pump()
  }

  private pump(): void {
    const client = this.client
    if (!client || !this.connected) return
    const gen = this.generation
    const expired: number[] = []
    while (this.inflight.size < this.opts.inflight) {
      if (this.opts.maxRate > 0 && !this.takeToken()) break
      const row = this.next()
      if (!row) break
      if (this.outbox.isRpcRespExpired(row)) {
        expired.push(row.id)
        continue
      }
      this.inflight.add(row.id)
      this.outbox.sent(row.id)
      client.publish(row.topic, row.payload, { qos: 1 }, (err) => {
        if (gen !== this.generation) return
        this.inflight.delete(row.id)
        if (err) {
          this.outbox.unsent([row.id])
          return // the connection is going down; the row is sent again after reconnect
        }
        this.outbox.ack(row.id)
        this.acked++
        this.pump()
      })
    }
    if (expired.length) void this.outbox.drop(expired, 'rpc_resp_expired')
    // Counted here, once per pump, rather than once per acknowledgement.
    if (this.acked !== this.metered) {
      this.metrics.northboundPublished.inc(this.acked - this.metered)
      this.metered = this.acked
    }
    if (this.backlog && this.inflight.size === 0 && !this.maybeMore && this.bufferPos >= this.buffer.length) {
      const { messages, since } = this.backlog
      this.backlog = null
      this.log.info({ messages, tookS: Math.round((Date.now() - since) / 100) / 10 }, `outbox drained: the ${messages} message(s) that waited reached the hub`)
    }
  }

  private next(): OutboxRow | undefined {
    if (this.bufferPos >= this.buffer.length) this.refill()
    return this.buffer[this.bufferPos++]
  }

  // Highest priority first; within a priority, in id order (which keeps each device's order).
  private refill(): void {
    if (!this.maybeMore) return
    for (const prio of PRIORITIES) {
      const rows = this.outbox.read(prio, this.cursors[prio], READ_BATCH, this.opts.device)
      if (rows.length) {
        this.cursors[prio] = rows[rows.length - 1].id
        this.buffer = rows
        this.bufferPos = 0
        return
      }
    }
    this.maybeMore = false
  }

  private takeToken(): boolean {
    const now = Date.now()
    this.tokens = Math.min(this.opts.maxRate, this.tokens + ((now - this.lastRefill) / 1000) * this.opts.maxRate)
    this.lastRefill = now
    if (this.tokens >= 1) {
      this.tokens -= 1
      return true
    }
    if (!this.rateTimer) {
      this.rateTimer = setTimeout(() => {
        this.rateTimer = undefined
        this.pump()
      }, Math.ceil(1000 / this.opts.maxRate))
    }
    return false
  }

  /** Publish directly, outside the outbox (time-critical control traffic such as our own `$ntp` probe). */
  publishDirect(topic: string, payload: Buffer): boolean {
    if (!this.client || !this.connected) return false
    this.client.publish(topic, payload, { qos: 1 })
    return true
  }

  async stop(): Promise<void> {
    this.stopped = true
    clearTimeout(this.reconnectTimer)
    clearTimeout(this.rateTimer)
    const client = this.client
    this.generation++
    this.connected = false
    this.client = undefined
    this.outbox.unsent(this.inflight)
    this.inflight.clear()
    if (client) await new Promise<void>((r) => client.end(false, {}, () => r()))
  }
}
