// The live stream's fan-out (GET /api/events, Server-Sent Events): each event is serialised once
// and written to every listening client. A client that reads slower than events come gets them
// queued up to a fixed size, then dropped and counted (it is told how many at its next write), so
// a slow or stuck browser never blocks the gateway or grows its memory. While nobody listens the
// sources are told so (`listening`) and do no work at all.
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { HealthReport, LiveStream } from './deps.js'

export type LiveEventType = 'health' | 'device' | 'uplink' | 'alarm' | 'command' | 'log'

export interface LiveHubOptions {
  /** The health report, sent to a new client at once, then on change and at least every `healthEveryMs`. */
  health?: () => HealthReport
  /** Queued bytes per client past what its socket took; beyond it events are dropped. */
  maxQueuedBytes?: number
  maxClients?: number
  pingMs?: number
  healthPollMs?: number
  healthEveryMs?: number
}

export interface LiveHubStats {
  clients: number
  /** Events not written to a client because it was too slow (all clients, since the start). */
  dropped: number
  /** Events written (all clients, since the start). */
  sent: number
}

interface Client {
  res: ServerResponse
  queue: string[]
  queuedBytes: number
  /** The socket's buffer is full: write to the queue until 'drain'. */
  congested: boolean
  /** Dropped since the client was last told. */
  lost: number
  /** Whether the credential that opened the stream still holds (a session that ended, a revoked token: no). */
  valid?: () => boolean
}

// At most 16 clients x 512 KiB queued: 8 MiB however slow the readers are.
const DEFAULTS = { maxQueuedBytes: 512 * 1024, maxClients: 16, pingMs: 15_000, healthPollMs: 1_000, healthEveryMs: 5_000 }

export class LiveHub implements LiveStream {
  private readonly clients = new Set<Client>()
  private readonly o: typeof DEFAULTS & Pick<LiveHubOptions, 'health'>
  private readonly listeners = new Set<(listening: boolean) => void>()
  private pingTimer?: NodeJS.Timeout
  private healthTimer?: NodeJS.Timeout
  private lastHealth = ''
  private lastHealthAt = 0
  private dropped = 0
  private sent = 0

  constructor(options: LiveHubOptions = {}) {
    this.o = { ...DEFAULTS, ...options }
  }

  /** Whether any client listens: the sources check this before building an event. */
  get listening(): boolean {
    return this.clients.size > 0
  }

  /** Told when the first client comes and when the last one goes. */
  onListening(listener: (listening: boolean) => void): void {
    this.listeners.add(listener)
  }

  stats(): LiveHubStats {
    return { clients: this.clients.size, dropped: this.dropped, sent: this.sent }
  }

  /** One event to every client; nothing happens while none listens. */
  publish(type: LiveEventType, data: unknown): void {
    if (this.clients.size === 0) return
    const chunk = `event: ${type}\ndata: ${JSON.stringify(data)}\n\n`
    for (const c of this.clients) this.write(c, chunk)
  }

  /** Whether another client may connect (the cap keeps memory bounded). */
  get full(): boolean {
    return this.clients.size >= this.o.maxClients
  }

  /** Take over an HTTP response (fastify's reply.raw after hijack) as a stream client. */
  attach(req: IncomingMessage, res: ServerResponse, stillValid?: () => boolean): void {
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      // Reverse proxies (nginx) must not buffer the stream.
      'x-accel-buffering': 'no',
    })
    const c: Client = { res, queue: [], queuedBytes: 0, congested: false, lost: 0, valid: stillValid }
    const first = this.clients.size === 0
    this.clients.add(c)
    res.on('drain', () => this.drain(c))
    const gone = (): void => this.detach(c)
    req.on('close', gone)
    res.on('close', gone)
    res.on('error', gone)
    // The browser reconnects after 3 s when the stream breaks.
    this.write(c, 'retry: 3000\n\n')
    if (first) this.started()
    const h = this.o.health?.()
    if (h) this.write(c, `event: health\ndata: ${JSON.stringify(h)}\n\n`)
  }

  /** End every stream (the server is closing: a long-lived response would hold its close). */
  close(): void {
    for (const c of [...this.clients]) {
      c.res.end()
      this.detach(c)
    }
  }

  private detach(c: Client): void {
    if (!this.clients.delete(c)) return
    c.queue = []
    c.queuedBytes = 0
    if (this.clients.size === 0) this.stopped()
  }

  private write(c: Client, chunk: string): void {
    if (c.res.destroyed || c.res.writableEnded) return
    if (c.congested) {
      if (c.queuedBytes + chunk.length > this.o.maxQueuedBytes) {
        c.lost++
        this.dropped++
        return
      }
      c.queue.push(chunk)
      c.queuedBytes += chunk.length
      return
    }
    this.sent++
    if (!c.res.write(chunk)) c.congested = true
  }

  private drain(c: Client): void {
    c.congested = false
    if (c.lost > 0) {
      const lost = c.lost
      c.lost = 0
      this.write(c, `event: dropped\ndata: ${JSON.stringify({ count: lost })}\n\n`)
    }
    while (!c.congested && c.queue.length) {
      const chunk = c.queue.shift()!
      c.queuedBytes -= chunk.length
      this.write(c, chunk)
    }
  }

  private started(): void {
    this.pingTimer = setInterval(() => {
      for (const c of [...this.clients]) {
        // A stream outlives the request that opened it: at each ping, one whose session ended (logout,
        // idle timeout, password change) or whose API token was revoked is closed.
        if (c.valid && !c.valid()) {
          c.res.end()
          this.detach(c)
        } else if (!c.congested) c.res.write(': ping\n\n')
      }
    }, this.o.pingMs).unref()
    if (this.o.health) {
      this.lastHealth = ''
      this.healthTimer = setInterval(() => this.healthTick(), this.o.healthPollMs).unref()
    }
    for (const l of this.listeners) l(true)
  }

  private stopped(): void {
    clearInterval(this.pingTimer)
    clearInterval(this.healthTimer)
    for (const l of this.listeners) l(false)
  }

  private healthTick(): void {
    let text: string
    try {
      text = JSON.stringify(this.o.health!())
    } catch {
      return // the gateway is stopping: its parts are going away
    }
    const now = Date.now()
    if (text === this.lastHealth && now - this.lastHealthAt < this.o.healthEveryMs) return
    this.lastHealth = text
    this.lastHealthAt = now
    const chunk = `event: health\ndata: ${text}\n\n`
    for (const c of this.clients) this.write(c, chunk)
  }
}
