// HTTP device ingest: native devices with plenty of resources (Android terminals, PLC web clients)
// post the protocol's up messages over HTTP and long-poll for their commands. It is a native
// adapter like the broker: the same authentication (the device's own ProductId/DeviceId and Secret,
// here as HTTP Basic), the same ACL (a device posts only as itself, PROTOCOL.md "Broker-side
// rules"), and the same durability rule (201 only once the message is in the outbox, DESIGN.md).
// HTTP has no connection to own, so a device is online while a long-poll of its own is pending or
// until 1.5 x keepalive after its last request, as PROTOCOL.md says for CoAP clients.
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import type { Counter } from 'prom-client'
import type { AdapterContext, ClientSession, SeenSet } from '../../core/adapter-context.js'
import { commandTopic, mayPublish } from '../../core/device-acl.js'
import { ErrorCodes } from '../../core/errors.js'
import { formatUpTopic, ID_RULE, isId, parseUpTopic, parseUsername, type UpTopic } from '../../core/hub-topics.js'
import { RateLimitedLog } from '../../core/log.js'
import { newMessageId } from '../../core/message-id.js'
import type { Command, DeliveryResult, DeviceRef, SouthboundAdapter } from '../../core/types.js'
import { deviceKey, isExpired } from '../../core/types.js'
import type { HttpDevicesConfig } from './schema.js'

/** A command deliver() handed over, waiting for a long-poll to carry it. */
interface Handoff {
  cmd: Command
  settle: (r: DeliveryResult) => void
}

/** A pending `GET .../commands?wait=N`. */
interface Poll {
  take(items: Handoff[]): void
  end(): void
}

/** What the adapter knows of one device while it counts as online. */
interface DeviceLink {
  session: ClientSession
  lastSeen: number
  polls: Poll[]
  queue: Handoff[]
  expiry?: NodeJS.Timeout
}

/** One command as the long-poll returns it (the contract). */
export interface PolledCommand {
  topic: string
  type: Command['type']
  name: string
  encoding: Command['encoding']
  requestId: string
  expiresAt: number | null
  senderDeviceId?: string
  /** The command's payload bytes, base64 (whatever its Encoding: this is the transport's wrapping). */
  payload: string
}

type RouteParams = { p: string; d: string; name?: string; requestId?: string }

const REALM = 'Basic realm="iothub-edge devices", charset="UTF-8"'
// What a device is told to wait before retrying while the gateway cannot store (disk full, stopping).
const RETRY_AFTER_S = 30

export class HttpIngestAdapter implements SouthboundAdapter {
  readonly name = 'http-devices'
  readonly kind = 'native'
  private readonly links = new Map<string, DeviceLink>()
  // Requests with the same device and MessageId in flight: a concurrent repeat waits for the first.
  private readonly inflight = new Map<string, Promise<number>>()
  private readonly warn: RateLimitedLog
  private requests?: Counter<'route' | 'status'>
  private delivered?: Counter
  private seenIds?: SeenSet
  private started = false
  private stopped = false

  constructor(
    private readonly ctx: AdapterContext,
    private readonly cfg: HttpDevicesConfig,
  ) {
    this.warn = new RateLimitedLog(ctx.log)
  }

  async start(): Promise<void> {
    if (this.started) return
    this.started = true
    this.requests = this.ctx.metrics.counter('requests_total', 'HTTP device requests, by route and answer status', ['route', 'status'])
    this.delivered = this.ctx.metrics.counter('commands_delivered_total', 'Commands written to a device long-poll response')
    this.seenIds = this.ctx.seen('message-ids', this.cfg.idempotencyTtlSeconds * 1000)
    this.ctx.devices.onRevoked((ref, why) => {
      const link = this.links.get(deviceKey(ref))
      if (!link) return
      this.ctx.log.info({ device: deviceKey(ref), why }, 'device revoked: ending its long-polls and its session')
      this.close(deviceKey(ref), link)
    })
  }

  async stop(): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    // Like the broker, no `$connection` for a gateway that stops: the next start reports stale sessions.
    for (const [key, link] of [...this.links]) this.close(key, link, false)
  }

  /** Online while a long-poll is pending or within 1.5 x keepalive of the device's last request. */
  owns(device: DeviceRef): boolean {
    const link = this.links.get(deviceKey(device))
    if (!link) return false
    return link.polls.length > 0 || Date.now() - link.lastSeen < this.windowMs
  }

  /**
   * Hands the command to the device's next long-poll: 'delivered' once the response carrying it was
   * written, 'offline' if the device stops counting as online before one takes it.
   */
  deliver(cmd: Command): Promise<DeliveryResult> {
    const key = deviceKey(cmd.device)
    const link = this.links.get(key)
    if (this.stopped || !link || !this.owns(cmd.device)) return Promise.resolve('offline')
    if (cmd.qos === 0) {
      // QoS 0 (`$set_tags`, `$update_shadow` answers, PROTOCOL.md "QoS"): at most once, handed over
      // now. The core answers a device's `get` with these before the device's POST is answered, so
      // waiting here for the next poll would hold that POST until the device stops counting as online.
      link.queue.push({ cmd, settle: () => undefined })
      this.dispatch(link)
      return Promise.resolve('delivered')
    }
    return new Promise((settle) => {
      link.queue.push({ cmd, settle })
      this.dispatch(link)
    })
  }

  private get windowMs(): number {
    return this.cfg.keepalive * 1500
  }

  /** A request the device made: it is online (a session opens the first time), for another window. */
  private touch(device: DeviceRef, ip: string): DeviceLink {
    const key = deviceKey(device)
    let link = this.links.get(key)
    if (!link) {
      const session: ClientSession = { clientId: `http:${key}`, device, transport: 'http', ipaddress: ip, keepalive: this.cfg.keepalive, protoVer: null }
      link = { session, lastSeen: Date.now(), polls: [], queue: [] }
      this.links.set(key, link)
      this.ctx.sessionOpened(session)
    }
    link.lastSeen = Date.now()
    this.armExpiry(key, link)
    return link
  }

  private armExpiry(key: string, link: DeviceLink): void {
    clearTimeout(link.expiry)
    link.expiry = setTimeout(() => {
      // A pending long-poll keeps the device online; the poll's end arms this again.
      if (link.polls.length > 0) return
      if (this.links.get(key) === link) this.close(key, link)
    }, this.windowMs).unref()
  }

  /** The device no longer counts as online: its polls end, what waited for them stays queued in the core. */
  private close(key: string, link: DeviceLink, announce = true): void {
    clearTimeout(link.expiry)
    this.links.delete(key)
    for (const p of [...link.polls]) p.end()
    for (const h of link.queue.splice(0)) h.settle('offline')
    if (announce) this.ctx.sessionClosed(link.session)
  }

  private dispatch(link: DeviceLink): void {
    // A command whose ExpiresAt passed while it waited here for a poll is not sent (PROTOCOL.md):
    // 'offline' hands it back to the core, which records it as expired.
    const now = Date.now()
    for (const h of link.queue.filter((q) => isExpired(q.cmd, now))) {
      link.queue.splice(link.queue.indexOf(h), 1)
      h.settle('offline')
    }
    if (link.queue.length === 0) return
    const poll = link.polls.shift()
    if (!poll) return
    poll.take(link.queue.splice(0))
  }

  // ---- HTTP -------------------------------------------------------------------------------------

  /** Mounted by the gateway under /devices/ on its HTTP listener, without the API token. */
  readonly deviceRoutes: FastifyPluginAsync = async (app) => {
    // Bodies are the message payload as is, whatever the content type says (JSON usually).
    app.removeAllContentTypeParsers()
    app.addContentTypeParser('*', { parseAs: 'buffer', bodyLimit: this.cfg.maxBodyBytes }, (_req, body, done) => done(null, body))
    // The server is closing: answer pending long-polls now instead of holding the close up.
    app.addHook('preClose', async () => {
      for (const link of this.links.values()) for (const p of [...link.polls]) p.end()
    })
    app.addHook('onResponse', async (req, reply) => {
      this.requests?.inc({ route: (req.routeOptions.url ?? 'unknown').replace(/^\/devices/, ''), status: String(reply.statusCode) })
    })

    type Req = FastifyRequest<{ Params: RouteParams; Body: Buffer | undefined }>
    const up =
      (topicOf: (d: DeviceRef, params: RouteParams, messageId: string) => UpTopic) =>
      async (req: Req, reply: FastifyReply): Promise<FastifyReply> => {
        const device = await this.authorize(req, reply)
        if (!device) return reply
        return this.ingest(req, reply, device, (mid) => topicOf(device, req.params, mid))
      }
    app.post('/:p/:d/data/:name', up((d, { name }, messageId) => ({ kind: 'upload_data', ...d, name, messageId })))
    app.post('/:p/:d/status', up((d, _params, messageId) => ({ kind: 'update_status', ...d, messageId })))
    app.post('/:p/:d/get/:name', up((d, { name }, messageId) => ({ kind: 'get', ...d, name, messageId })))
    app.post('/:p/:d/cmd_resp/:name/:requestId', up((d, { name, requestId }, messageId) => ({ kind: 'cmd_resp', ...d, name, requestId, messageId })))
    app.post('/:p/:d/rpc_resp/:name/:requestId', up((d, { name, requestId }, messageId) => ({ kind: 'rpc_resp', ...d, name, requestId, messageId })))
    app.get('/:p/:d/commands', async (req: FastifyRequest<{ Params: RouteParams; Querystring: { wait?: string } }>, reply) => {
      const device = await this.authorize(req, reply)
      if (!device) return reply
      const raw = req.query.wait ?? '0'
      if (!/^\d{1,6}$/.test(raw)) {
        return this.refuse(reply, 400, 'bad_request', `wait must be a whole number of seconds (0-${this.cfg.maxWaitSeconds}), not ${JSON.stringify(raw)}`, 'malformed_packet', device)
      }
      return this.longPoll(req, reply, device, Math.min(Number(raw), this.cfg.maxWaitSeconds))
    })
  }

  /**
   * HTTP Basic with the device's own credentials (username `{ProductId}/{DeviceId}`, the Secret as
   * password), and the URL must name that same device: a device acts only as itself. Answers the
   * request itself (401/403) and returns undefined when the device may not go on.
   */
  private async authorize(req: FastifyRequest<{ Params: RouteParams }>, reply: FastifyReply): Promise<DeviceRef | undefined> {
    const creds = parseBasic(req.headers.authorization)
    const ref = creds && parseUsername(creds.username)
    if (!creds || !ref) {
      this.ctx.metrics.rejected('auth_failed')
      void reply.header('www-authenticate', REALM)
      this.refuse(reply, 401, 'unauthorized', 'HTTP Basic authentication required: username {ProductId}/{DeviceId}, password the device Secret')
      return undefined
    }
    const result = await this.ctx.devices.authenticate(ref, creds.password)
    if (result !== 'ok') {
      this.ctx.metrics.rejected('auth_failed')
      this.warn.warn(`auth:${deviceKey(ref)}`, { device: deviceKey(ref), result, ip: req.ip, code: ErrorCodes.AUTH_FAILED }, 'device refused')
      if (result === 'disabled') {
        this.refuse(reply, 403, 'forbidden', 'this device is disabled on the gateway')
      } else {
        void reply.header('www-authenticate', REALM)
        this.refuse(reply, 401, 'unauthorized', 'unknown device or wrong secret')
      }
      return undefined
    }
    if (req.params.p !== ref.productId || req.params.d !== ref.deviceId) {
      this.refuse(reply, 403, 'forbidden', `${deviceKey(ref)} may act only as itself, not as ${req.params.p}/${req.params.d}`, 'acl_denied', ref)
      return undefined
    }
    if (this.stopped) {
      void reply.header('retry-after', String(RETRY_AFTER_S))
      this.refuse(reply, 503, 'unavailable', 'the gateway is stopping; retry later')
      return undefined
    }
    this.touch(ref, req.ip)
    return ref
  }

  private async ingest(req: FastifyRequest<{ Body: Buffer | undefined }>, reply: FastifyReply, device: DeviceRef, topicOf: (messageId: string) => UpTopic): Promise<FastifyReply> {
    const given = headerValue(req.headers['idempotency-key']) ?? headerValue(req.headers['x-message-id'])
    if (given !== undefined && !isId(given)) {
      return this.refuse(reply, 400, 'bad_request', `Idempotency-Key / X-Message-Id must be ${ID_RULE} (it becomes the MessageId)`, 'bad_topic', device)
    }
    const messageId = given ?? newMessageId()
    // Through the one codec: what it does not read back as an up topic is not one (bad DataType, RequestId, ...).
    const topic = parseUpTopic(formatUpTopic(topicOf(messageId)))
    if (!topic) {
      return this.refuse(reply, 400, 'bad_request', 'not a valid message: DataType, Resource and CommandName are 1-64 of [A-Za-z0-9_.:-] (optionally after $), RequestId ' + ID_RULE, 'bad_topic', device)
    }
    if (!mayPublish(device, topic)) {
      return this.refuse(reply, 403, 'forbidden', `${formatUpTopic(topic)} is not allowed for a device (internal names are the protocol's own)`, 'acl_denied', device)
    }
    if (!this.ctx.intakeOpen()) {
      this.ctx.metrics.rejected('store_full')
      void reply.header('retry-after', String(RETRY_AFTER_S))
      return this.refuse(reply, 503, 'unavailable', 'the gateway cannot store messages right now (disk full or stopping); retry later')
    }
    const payload = req.body ?? Buffer.alloc(0)
    const up = { topic, payload, transport: 'http' as const, receivedAt: Date.now(), meta: { remoteAddress: req.ip } }
    if (given === undefined) {
      const status = await this.store(up)
      return this.answerStored(reply, status, messageId, false)
    }
    // Idempotency: the same MessageId from the same device is stored once. A repeat while the first
    // is in flight gets the first one's answer; a repeat after it was stored gets 200.
    const key = `${deviceKey(device)}/${messageId}`
    const pending = this.inflight.get(key)
    if (pending) return this.answerStored(reply, await pending, messageId, true)
    if (!this.seenIds!.firstTime(key)) return this.answerStored(reply, 201, messageId, true)
    const work = this.store(up).then((status) => {
      // Not stored: the device will retry with the same key, which must then be taken.
      if (status !== 201) this.seenIds!.forget(key)
      return status
    })
    this.inflight.set(key, work)
    try {
      return this.answerStored(reply, await work, messageId, false)
    } finally {
      this.inflight.delete(key)
    }
  }

  /** 201 once durable; 503 when the core could not make it durable (the device keeps it and retries). */
  private async store(up: Parameters<AdapterContext['uplink']>[0]): Promise<number> {
    try {
      await this.ctx.uplink(up)
      return 201
    } catch (err) {
      this.warn.warn('not-stored', { err: (err as Error).message, device: `${up.topic.productId}/${up.topic.deviceId}`, code: ErrorCodes.STORE_FAILED }, 'device message not stored; the device was told to retry')
      return 503
    }
  }

  private answerStored(reply: FastifyReply, status: number, messageId: string, duplicate: boolean): FastifyReply {
    if (status === 201) return reply.code(duplicate ? 200 : 201).send(duplicate ? { messageId, duplicate: true } : { messageId })
    void reply.header('retry-after', String(RETRY_AFTER_S))
    return reply.code(503).send({ error: 'unavailable', message: 'the message could not be stored; retry later with the same Idempotency-Key', messageId })
  }

  private async longPoll(req: FastifyRequest, reply: FastifyReply, device: DeviceRef, waitS: number): Promise<FastifyReply> {
    const key = deviceKey(device)
    const link = this.links.get(key)!
    await new Promise<void>((resolve) => {
      let answered = false
      const finish = (): void => {
        answered = true
        clearTimeout(timer)
        link.polls = link.polls.filter((p) => p !== poll)
        // The poll was a request too: the device counts as online for a window from its end.
        if (this.links.get(key) === link) {
          link.lastSeen = Date.now()
          this.armExpiry(key, link)
        }
        resolve()
      }
      const poll: Poll = {
        take: (items) => {
          finish()
          const res = reply.raw
          // Delivered once the response was written; a response that could not be (the device
          // went away meanwhile) puts the commands back for its next poll.
          res.once('close', () => {
            if (res.writableFinished) {
              this.delivered?.inc(items.length)
              for (const h of items) h.settle('delivered')
            } else if (this.links.get(key) === link) {
              link.queue.unshift(...items)
              this.dispatch(link)
            } else {
              for (const h of items) h.settle('offline')
            }
          })
          void reply.code(200).send(items.map((h) => polled(h.cmd)))
        },
        end: () => {
          if (answered) return
          finish()
          void reply.code(204).send()
        },
      }
      const timer = setTimeout(() => poll.end(), waitS * 1000)
      // The device hung up while waiting: nothing to answer.
      reply.raw.once('close', () => {
        if (answered) return
        finish()
      })
      link.polls.push(poll)
      this.dispatch(link)
      if (!answered && waitS === 0) poll.end()
    })
    return reply
  }

  private refuse(reply: FastifyReply, status: number, error: string, message: string, reason?: string, device?: DeviceRef): FastifyReply {
    if (reason) {
      this.ctx.metrics.rejected(reason)
      this.warn.warn(`${reason}:${device ? deviceKey(device) : '-'}`, { device: device && deviceKey(device), reason, code: reason === 'acl_denied' ? ErrorCodes.ACL_DENIED : ErrorCodes.BAD_TOPIC }, `device request refused: ${message}`)
    }
    return reply.code(status).send({ error, message })
  }
}

function polled(cmd: Command): PolledCommand {
  return {
    topic: commandTopic(cmd),
    type: cmd.type,
    name: cmd.name,
    encoding: cmd.encoding,
    requestId: cmd.requestId,
    expiresAt: cmd.expiresAt ?? null,
    ...(cmd.senderDeviceId !== undefined ? { senderDeviceId: cmd.senderDeviceId } : {}),
    payload: cmd.payload.toString('base64'),
  }
}

function headerValue(h: string | string[] | undefined): string | undefined {
  return Array.isArray(h) ? h[0] : h
}

/** RFC 7617: `Basic base64(user:pass)`; the password may contain ':'. */
function parseBasic(header: string | undefined): { username: string; password: string } | undefined {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header ?? '')
  if (!m) return undefined
  const text = Buffer.from(m[1], 'base64').toString('utf8')
  const colon = text.indexOf(':')
  if (colon < 0) return undefined
  return { username: text.slice(0, colon), password: text.slice(colon + 1) }
}
