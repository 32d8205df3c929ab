// One MQTT connection to the cloud hub that drains (part of) the outbox. The outbox is the only
// source of truth: every connection starts empty (hub-connection.ts keeps no store), and the link
// resends every row the hub has not acknowledged, with its original topic and MessageId
// (at-least-once; the hub's duplicate filter does the rest).
import type { Logger } from '../core/log.js'
import type { Metrics } from '../core/metrics.js'
import type { Outbox, OutboxRow, Priority } from '../store/outbox.js'
import { PRIORITIES } from '../store/outbox.js'
import { ErrorCodes } from '../core/errors.js'
import { redactUrls } from '../core/log.js'
import type { LinkError } from '../core/link-types.js'
import { HubConnection, type HubConnectionHandler } from './hub-connection.js'

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
  heldSubscriptions?: HeldSubscriptions
  /** Called once per connection after the subscriptions are in place. */
  onConnected?: () => void
}

/** The durable record of the filters a link holds on the hub: all of them, or a change. */
export interface HeldSubscriptions {
  load: () => string[]
  save: (filters: Iterable<string>) => void
  update: (add: readonly string[], remove: readonly string[]) => void
}

const READ_BATCH = 512
// Bytes of topic filters per SUBSCRIBE / UNSUBSCRIBE: a gateway with thousands of children holds
// three filters each, which in one packet would pass a hub's packet size limit (EMQX's
// mqtt.max_packet_size is 1 MB by default; the hub closes the connection on a larger packet) and
// would be one large buffer at every connection.
export const SUBSCRIBE_BYTES_MAX = 32 * 1024
const BACKOFF_MIN_MS = 1_000
const BACKOFF_MAX_MS = 60_000
const STABLE_AFTER_MS = 60_000
const ERROR_TEXT_MAX = 300
const CONNECT_TIMEOUT_MS = 15_000
// Packet ids are 16 bits: what the window may use, leaving some for subscriptions and direct publishes.
const WINDOW_MAX = 65_000
// What the window may hold in bytes (topics and payloads), whatever its count: a window of large
// messages neither piles up in memory behind a slow link nor is all sent again after a reconnect.
// At least one message is always in flight, however large.
export const WINDOW_BYTES_MAX = 4 * 1024 * 1024

export class HubLink {
  private client?: HubConnection
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
  // The rows in flight to the hub, with their size.
  private readonly inflight = new Map<number, number>()
  private inflightBytes = 0
  private readonly window: number
  // Filters of each SUBSCRIBE waiting for its SUBACK, by packet id.
  private readonly subscribing = new Map<number, string[]>()
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
  ) {
    this.window = Math.min(opts.inflight, WINDOW_MAX)
  }

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
    const current = (): boolean => gen === this.generation
    const handler: HubConnectionHandler = {
      connected: () => current() && this.onUp(),
      acked: (id) => {
        if (!current() || !id) return // 0: a direct publish
        const bytes = this.inflight.get(id)
        if (bytes !== undefined) {
          this.inflightBytes -= bytes
          this.inflight.delete(id)
        }
        this.outbox.ack(id)
        this.acked++
      },
      // All the PUBACKs of one read are in: one pump refills the window, one write sends it.
      readDone: () => current() && this.pump(),
      // The PUBACK goes out only once the command is durable. A command that cannot be stored is
      // not acknowledged; dropping the connection makes the hub send it again from the persistent
      // session once we are back.
      message: (topic, payload) => {
        if (!current()) return Promise.reject(new Error('stale connection'))
        return this.opts.onMessage(topic, payload).catch((err: Error) => {
          this.log.warn({ err: err.message, topic, code: ErrorCodes.NORTHBOUND }, 'could not store a message from the hub; it will be redelivered')
          throw err
        })
      },
      subscribed: (messageId, granted) => {
        const filters = this.subscribing.get(messageId) ?? []
        this.subscribing.delete(messageId)
        const refused = filters.filter((_, i) => granted[i] === 128)
        if (current() && refused.length && !this.refusedLogged) {
          this.refusedLogged = true
          this.log.info({ topics: refused }, 'hub refused a command subscription (SUBACK 0x80): assuming it subscribes server-side')
        }
      },
      error: (err) => {
        if (!current()) return
        this.noteError(err)
        this.log.warn({ err: err.message, code: ErrorCodes.NORTHBOUND, url: this.opts.url }, 'hub connection error')
      },
      closed: () => {
        if (!current()) return
        if (!this.erredThisAttempt) {
          this.noteError(new Error(this.connected ? 'the hub closed the connection' : 'the connection closed before the hub accepted it'), this.connected ? 'closed' : 'not_accepted')
        }
        this.onDown()
      },
    }
    this.client = new HubConnection(
      {
        url: this.opts.url,
        clientId: this.opts.clientId,
        username: this.opts.username,
        password: this.opts.password,
        keepalive: this.opts.keepalive,
        // A persistent session: commands the hub publishes during a short outage arrive afterwards.
        clean: false,
        connectTimeoutMs: CONNECT_TIMEOUT_MS,
        tls: this.opts.tls,
      },
      handler,
    )
  }

  private onUp(): void {
    const client = this.client!
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
    const held = this.loadHeld()
    const stale = held.filter((f) => !wanted.has(f))
    if (stale.length) {
      this.log.info({ filters: stale.length > 20 ? [...stale.slice(0, 20), `... ${stale.length - 20} more`] : stale }, 'dropping hub subscriptions that are no longer wanted')
      for (const part of packetsOf(stale)) client.unsubscribe(part)
    }
    this.subscribed.clear()
    this.syncSubscriptions(wanted)
    this.opts.onConnected?.()
    this.pump()
  }

  private onDown(): void {
    const wasUp = this.connected
    if (wasUp && Date.now() - this.connectedSince >= STABLE_AFTER_MS) this.attempts = 0
    this.connected = false
    this.metrics.northboundConnected.set(0)
    if (wasUp) this.downAt = Date.now()
    // Forget everything in flight: it is all still in the outbox and is sent again from the start.
    this.generation++
    this.client?.destroy()
    this.client = undefined
    this.forgetInflight()
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
  syncSubscriptions(wanted?: ReadonlySet<string>): void {
    const client = this.client
    if (!client || !this.connected) return
    const want = wanted ?? new Set(this.opts.subscriptions())
    const add = [...want].filter((t) => !this.subscribed.has(t))
    const remove = [...this.subscribed].filter((t) => !want.has(t))
    if (remove.length) {
      for (const t of remove) this.subscribed.delete(t)
      for (const part of packetsOf(remove)) client.unsubscribe(part)
    }
    for (const t of add) this.subscribed.add(t)
    this.saveHeld()
    for (const part of packetsOf(add)) {
      const id = client.subscribe(part)
      if (id) this.subscribing.set(id, part)
    }
  }

  // What the durable record holds now (null: not known, after a failed write: written whole next).
  private recorded: Set<string> | null = null

  private loadHeld(): string[] {
    const held = this.opts.heldSubscriptions?.load() ?? []
    this.recorded = new Set(held)
    return held
  }

  // Only the change is written: a gateway with 10,000 children holds 30,000 filters, the same at
  // almost every connection.
  private saveHeld(): void {
    const store = this.opts.heldSubscriptions
    if (!store) return
    try {
      const recorded = this.recorded
      if (!recorded) {
        store.save(this.subscribed)
        this.recorded = new Set(this.subscribed)
        return
      }
      const add = [...this.subscribed].filter((f) => !recorded.has(f))
      const remove = [...recorded].filter((f) => !this.subscribed.has(f))
      if (!add.length && !remove.length) return
      store.update(add, remove)
      for (const f of remove) recorded.delete(f)
      for (const f of add) recorded.add(f)
    } catch (err) {
      // Bookkeeping only (a full disk): the next change writes it whole.
      this.recorded = null
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
    const expired: number[] = []
    while (this.inflight.size < this.window && (this.inflightBytes < WINDOW_BYTES_MAX || this.inflight.size === 0)) {
      if (this.opts.maxRate > 0 && !this.takeToken()) break
      const row = this.next()
      if (!row) break
      if (this.outbox.isRpcRespExpired(row)) {
        expired.push(row.id)
        continue
      }
      if (!client.publish(row.topic, row.payload, row.id)) {
        // Every packet id is taken (subscriptions waiting too): the row is read again later.
        this.bufferPos--
        break
      }
      const bytes = row.topic.length + row.payload.length
      this.inflight.set(row.id, bytes)
      this.inflightBytes += bytes
      this.outbox.sent(row.id)
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
    return this.client.publish(topic, payload) !== 0
  }

  // The rows in flight are all still in the outbox: sent again from the start on the next connection.
  private forgetInflight(): void {
    this.outbox.unsent(this.inflight.keys())
    this.inflight.clear()
    this.inflightBytes = 0
    this.subscribing.clear()
  }

  async stop(): Promise<void> {
    this.stopped = true
    clearTimeout(this.reconnectTimer)
    clearTimeout(this.rateTimer)
    const client = this.client
    this.generation++
    this.connected = false
    this.client = undefined
    this.forgetInflight()
    await client?.end()
  }
}

/** Topic filters in groups of at most SUBSCRIBE_BYTES_MAX bytes (one filter per group at least). */
export function packetsOf(filters: readonly string[]): string[][] {
  const out: string[][] = []
  let part: string[] = []
  let bytes = 0
  for (const f of filters) {
    const size = Buffer.byteLength(f) + 3 // length prefix and the QoS byte
    if (part.length && bytes + size > SUBSCRIBE_BYTES_MAX) {
      out.push(part)
      part = []
      bytes = 0
    }
    part.push(f)
    bytes += size
  }
  if (part.length) out.push(part)
  return out
}
