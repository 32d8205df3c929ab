// The CoAP endpoint for constrained and NB-IoT devices, with the hub's own CoAP convention
// (PROTOCOL.md "CoAP access"): `PUT|POST /mqtt/{topic}?c={clientId}&u={username}&p={password}`
// publishes, `GET /mqtt/{filter}` with Observe subscribes. A native adapter like the broker: same
// authentication, same ACL, acknowledgement only once durable (DESIGN.md), and everything the core
// sends a device comes through deliver(), here as a CON notification on one of its observations.
import type { AdapterContext, ClientSession } from '../../core/adapter-context.js'
import { commandTopic, mayPublish } from '../../core/device-acl.js'
import { ErrorCodes } from '../../core/errors.js'
import { hasUpKind, isTagTopic, mayDeviceSubscribe, parseUpTopic, parseUsername, topicMatches } from '../../core/hub-topics.js'
import { RateLimitedLog } from '../../core/log.js'
import type { Command, DeliveryResult, DeviceRef, SouthboundAdapter } from '../../core/types.js'
import { deviceKey, isExpired } from '../../core/types.js'
import { open } from 'node:fs/promises'
import { isFileToken } from '../../core/local-files.js'
import { blockOption, CoapWire, uintOption, type CoapRequest, type CoapResponse, type Peer, type ResourceKey } from './coap-wire.js'
import type { CoapConfig } from './schema.js'

interface Observation {
  peer: Peer
  token: Buffer
  filter: string
  clientId: string
  /** The observe request's Uri-Path and Uri-Query: where the client fetches further blocks of a large notification. */
  resource: ResourceKey
  /** Observe sequence number of the last notification (RFC 7641 section 4.4). */
  seq: number
}

interface Handoff {
  cmd: Command
  topic: string
  settle: (r: DeliveryResult) => void
}

interface CoapClient {
  session: ClientSession
  lastSeen: number
  expiry?: NodeJS.Timeout
  observations: Observation[]
  /** Commands deliver() handed over, in order, waiting for a matching observation. */
  queue: Handoff[]
  sending: boolean
}

const text = (s: string): Buffer => Buffer.from(s, 'utf8')

export class CoapAdapter implements SouthboundAdapter {
  readonly name = 'coap'
  readonly kind = 'native'
  private wire?: CoapWire
  private readonly clients = new Map<string, CoapClient>()
  // `address:port` of an observation -> the device it belongs to (for ACKs, which carry no credentials).
  private readonly byPeer = new Map<string, string>()
  private readonly warn: RateLimitedLog
  private stopped = false

  constructor(
    private readonly ctx: AdapterContext,
    private readonly cfg: CoapConfig,
  ) {
    this.warn = new RateLimitedLog(ctx.log)
  }

  /** The UDP port actually bound (useful with port 0). */
  get port(): number {
    return this.wire?.port ?? 0
  }

  async start(): Promise<void> {
    if (!this.cfg.enabled) {
      this.ctx.log.info('CoAP endpoint disabled (coap.enabled: false)')
      return
    }
    const dropped = this.ctx.metrics.counter('dropped_total', 'CoAP datagrams not handled as requests, by reason', ['reason'])
    this.wire = new CoapWire(
      { host: this.cfg.host, port: this.cfg.port, perSourcePerSecond: this.cfg.rateLimit.perSourcePerSecond, maxPayloadBytes: this.cfg.maxPayloadBytes },
      {
        request: (req) => this.onRequest(req),
        heard: (peer) => this.heard(peer),
        dropped: (reason, peer, detail) => {
          dropped.inc({ reason })
          if (reason === 'malformed' || reason === 'bad_option') this.ctx.metrics.rejected('malformed_packet')
          if (reason !== 'duplicate') this.warn.warn(`coap:${reason}:${peer.address}`, { reason, peer: peer.address, detail }, 'CoAP datagram dropped')
        },
      },
    )
    await this.wire.start().catch((err: Error) => {
      throw Object.assign(new Error(`cannot listen on udp ${this.cfg.host}:${this.cfg.port} (${err.message}); change coap.port or free the port`), { code: ErrorCodes.LISTENER_FAILED })
    })
    this.ctx.devices.onRevoked((ref) => {
      const c = this.clients.get(deviceKey(ref))
      if (c) this.close(deviceKey(ref), c)
    })
    this.ctx.log.info({ host: this.cfg.host, port: this.port }, 'CoAP endpoint up')
  }

  async stop(): Promise<void> {
    if (this.stopped) return
    this.stopped = true
    for (const [key, c] of [...this.clients]) this.close(key, c, false)
    await this.wire?.stop()
  }

  /** From a device's first valid request until 1.5 x keepalive passes without one (PROTOCOL.md). */
  owns(device: DeviceRef): boolean {
    const c = this.clients.get(deviceKey(device))
    return !!c && Date.now() - c.lastSeen < this.windowMs
  }

  /**
   * Sends the command as a CON notification on an observation of the device that covers its topic,
   * 'delivered' once the device ACKs it. With no such observation yet (a sleepy device that woke up
   * and has not observed again) it waits, in order, for one, until the device counts as offline.
   */
  deliver(cmd: Command): Promise<DeliveryResult> {
    const c = this.clients.get(deviceKey(cmd.device))
    if (this.stopped || !c || !this.owns(cmd.device)) return Promise.resolve('offline')
    if (cmd.qos === 0) {
      // QoS 0 (`$set_tags`, `$update_shadow` answers, PROTOCOL.md "QoS"): at most once, handed over
      // now (still sent as CON, in order). The core answers a device's `get` with these before the
      // device's PUT is answered, so waiting for an observation here would hold that PUT.
      c.queue.push({ cmd, topic: commandTopic(cmd), settle: () => undefined })
      this.pump(c)
      return Promise.resolve('delivered')
    }
    return new Promise((settle) => {
      c.queue.push({ cmd, topic: commandTopic(cmd), settle })
      this.pump(c)
    })
  }

  private get windowMs(): number {
    return this.cfg.keepalive * 1500
  }

  private pump(c: CoapClient): void {
    if (c.sending || this.stopped) return
    // A command whose ExpiresAt passed while it waited here for an observation is not sent
    // (PROTOCOL.md): 'offline' hands it back to the core, which records it as expired.
    while (c.queue[0] && isExpired(c.queue[0].cmd)) c.queue.shift()!.settle('offline')
    const h = c.queue[0]
    if (!h) return
    const obs = c.observations.find((o) => topicMatches(o.filter, h.topic))
    if (!obs) return // waits for an observation
    c.sending = true
    obs.seq = (obs.seq + 1) & 0xffffff
    // PROTOCOL.md's gateway extension: the concrete topic as Location-Path options, one per level.
    const options = [{ name: 'Observe', value: uintOption(obs.seq) }, ...h.topic.split('/').map((l) => ({ name: 'Location-Path', value: text(l) }))]
    void this.wire!.notify(obs.peer, obs.token, { code: '2.05', options, payload: h.cmd.payload }, obs.resource).then((outcome) => {
      c.sending = false
      if (outcome === 'acked') {
        c.queue.shift()
        h.settle('delivered')
      } else {
        // RST or no ACK at all: the observation is gone (RFC 7641 section 3.6, 4.5); the command
        // stays first in line for the next observation.
        this.dropObservation(c, obs)
      }
      this.pump(c)
    })
  }

  private heard(peer: Peer): void {
    // An ACK to a notification shows the device is there as much as a request does.
    const key = this.byPeer.get(`${peer.address}:${peer.port}`)
    const c = key === undefined ? undefined : this.clients.get(key)
    if (key !== undefined && c) this.touchClient(key, c)
  }

  private touchClient(key: string, c: CoapClient): void {
    c.lastSeen = Date.now()
    clearTimeout(c.expiry)
    c.expiry = setTimeout(() => {
      if (this.clients.get(key) === c) this.close(key, c)
    }, this.windowMs).unref()
  }

  private touch(device: DeviceRef, clientId: string, peer: Peer): CoapClient {
    const key = deviceKey(device)
    let c = this.clients.get(key)
    if (!c) {
      const session: ClientSession = { clientId, device, transport: 'coap', ipaddress: peer.address, keepalive: this.cfg.keepalive, protoVer: null }
      c = { session, lastSeen: Date.now(), observations: [], queue: [], sending: false }
      this.clients.set(key, c)
      this.ctx.sessionOpened(session)
    }
    this.touchClient(key, c)
    return c
  }

  /** Offline: observations end, what waited for them goes back to the core's queue. */
  private close(key: string, c: CoapClient, announce = true): void {
    clearTimeout(c.expiry)
    this.clients.delete(key)
    for (const o of [...c.observations]) this.dropObservation(c, o)
    for (const h of c.queue.splice(0)) h.settle('offline')
    if (announce) this.ctx.sessionClosed(c.session)
  }

  private dropObservation(c: CoapClient, o: Observation): void {
    c.observations = c.observations.filter((x) => x !== o)
    const peer = `${o.peer.address}:${o.peer.port}`
    if (!c.observations.some((x) => `${x.peer.address}:${x.peer.port}` === peer)) this.byPeer.delete(peer)
    if (isTagTopic(o.filter) && !c.observations.some((x) => x.filter === o.filter)) this.ctx.tagUnsubscribed(o.clientId, o.filter)
  }

  // ---- the /mqtt/{topic} convention ---------------------------------------------------------------

  private async onRequest(req: CoapRequest): Promise<CoapResponse> {
    if (this.stopped) return { code: '5.03' }
    if (req.path[0] === 'ota' && req.path.length === 2) return this.serveFile(req)
    if (req.path[0] !== 'mqtt') return { code: '4.04', payload: text('only /mqtt/{topic} and /ota/{token} are served') }
    if (req.block2 && req.block2.num > 0) return { code: '4.08', payload: text('no block-wise notification in progress for this resource') }
    const q = parseQuery(req.query)
    const ref = parseUsername(q.get('u'))
    const secret = q.get('p')
    if (!ref || secret === undefined) {
      this.ctx.metrics.rejected('auth_failed')
      return { code: '4.01', payload: text('u={ProductId}/{DeviceId} and p={Secret} are required in the query') }
    }
    const auth = await this.ctx.devices.authenticate(ref, secret)
    if (auth !== 'ok') {
      this.ctx.metrics.rejected('auth_failed')
      this.warn.warn(`auth:${deviceKey(ref)}`, { device: deviceKey(ref), result: auth, peer: req.peer.address, code: ErrorCodes.AUTH_FAILED }, 'CoAP device refused')
      return auth === 'disabled' ? { code: '4.03', payload: text('device disabled') } : { code: '4.01', payload: text('unknown device or wrong secret') }
    }
    const levels = req.path.slice(1)
    const topic = levels.join('/')
    // PROTOCOL.md: an empty topic level is a bad request.
    if (levels.length === 0 || levels.some((l) => l === '')) return this.refuse('4.00', 'bad_topic', ref, topic, 'empty topic level')
    const clientId = q.get('c') || `coap:${deviceKey(ref)}`
    const client = this.touch(ref, clientId, req.peer)
    switch (req.method) {
      case 'PUT':
      case 'POST':
        return this.publish(req, ref, topic)
      case 'GET':
        return this.observe(req, client, ref, clientId, topic)
      default:
        return { code: '4.05', payload: text('PUT/POST publish, GET with Observe subscribes') }
    }
  }

  private async publish(req: CoapRequest, device: DeviceRef, topic: string): Promise<CoapResponse> {
    const up = parseUpTopic(topic)
    if (!up) return this.refuse(hasUpKind(topic) ? '4.00' : '4.03', hasUpKind(topic) ? 'bad_topic' : 'acl_denied', device, topic, 'not an up topic of PROTOCOL.md')
    if (!mayPublish(device, up)) return this.refuse('4.03', 'acl_denied', device, topic, 'not allowed for this device')
    if (req.payload.length > this.cfg.maxPayloadBytes) return this.refuse('4.13', 'malformed_packet', device, topic, `payload over ${this.cfg.maxPayloadBytes} bytes`)
    if (!this.ctx.intakeOpen()) {
      this.ctx.metrics.rejected('store_full')
      return { code: '5.03', options: [{ name: 'Max-Age', value: uintOption(30) }], payload: text('gateway storage unavailable; retry later') }
    }
    try {
      await this.ctx.uplink({ topic: up, payload: req.payload, transport: 'coap', receivedAt: Date.now(), meta: { remoteAddress: req.peer.address } })
      return { code: '2.04' }
    } catch (err) {
      this.warn.warn('not-stored', { err: (err as Error).message, device: deviceKey(device), code: ErrorCodes.STORE_FAILED }, 'CoAP message not stored; not acknowledged as changed')
      return { code: '5.03', options: [{ name: 'Max-Age', value: uintOption(30) }], payload: text('not stored; retry later') }
    }
  }

  private observe(req: CoapRequest, c: CoapClient, device: DeviceRef, clientId: string, filter: string): CoapResponse {
    if (req.observe === undefined) return { code: '4.05', payload: text('GET needs Observe (0 to subscribe, 1 to end)') }
    if (!mayObserve(device, filter)) return this.refuse('4.03', 'acl_denied', device, filter, 'not a topic this device may observe')
    const same = (o: Observation): boolean => o.peer.address === req.peer.address && o.peer.port === req.peer.port && o.filter === filter
    if (req.observe === 1) {
      for (const o of c.observations.filter(same)) this.dropObservation(c, o)
      return { code: '2.05' }
    }
    // A re-registration from the same endpoint replaces the old one (RFC 7641 section 4.1).
    for (const o of c.observations.filter(same)) this.dropObservation(c, o)
    const obs: Observation = { peer: req.peer, token: Buffer.from(req.token), filter, clientId, seq: 1, resource: { path: req.path, query: req.query } }
    c.observations.push(obs)
    this.byPeer.set(`${req.peer.address}:${req.peer.port}`, deviceKey(device))
    if (isTagTopic(filter)) this.ctx.tagSubscribed(device, clientId, filter)
    // The registration's answer first, then what waited for it.
    setImmediate(() => this.pump(c))
    return { code: '2.05', options: [{ name: 'Observe', value: uintOption(obs.seq) }] }
  }

  /**
   * An OTA image by the token of its local URL (src/core/local-files.ts), block-wise (RFC 7959
   * section 2.4): each block read from the file at its offset, in the size the client asks for (at
   * most 1024 bytes), with Size2 and the image's ETag (RFC 7252 section 5.10.6) so the client knows
   * the blocks belong together. The token is the credential, as for the HTTP URL.
   */
  private async serveFile(req: CoapRequest): Promise<CoapResponse> {
    if (req.method !== 'GET') return { code: '4.05', payload: text('GET only') }
    const file = isFileToken(req.path[1]) ? this.ctx.localFile(req.path[1]) : undefined
    if (!file) return { code: '4.04', payload: text('no such image, or its job ended or expired') }
    const szx = Math.min(req.block2?.szx ?? 6, 6)
    const size = 1 << (szx + 4)
    const num = req.block2?.num ?? 0
    const start = num * size
    if (start >= file.size && !(num === 0 && file.size === 0)) return { code: '4.02', payload: text('block beyond the end of the image') }
    const length = Math.min(size, file.size - start)
    const buf = Buffer.alloc(length)
    const fh = await open(file.path, 'r')
    try {
      await fh.read(buf, 0, length, start)
    } finally {
      await fh.close()
    }
    file.served(length, 'coap')
    const more = start + length < file.size
    return {
      code: '2.05',
      options: [
        { name: 'ETag', value: Buffer.from(file.etag, 'hex') },
        { name: 'Content-Format', value: uintOption(42) },
        blockOption('Block2', { num, more, szx }),
        { name: 'Size2', value: uintOption(file.size) },
      ],
      payload: buf,
    }
  }

  private refuse(code: string, reason: 'bad_topic' | 'acl_denied' | 'malformed_packet', device: DeviceRef, topic: string, why: string): CoapResponse {
    this.ctx.metrics.rejected(reason)
    this.warn.warn(`${reason}:${deviceKey(device)}`, { device: deviceKey(device), topic, reason, code: reason === 'acl_denied' ? ErrorCodes.ACL_DENIED : ErrorCodes.BAD_TOPIC }, `CoAP request refused: ${why}`)
    return { code, payload: text(`${topic}: ${why}`) }
  }
}

function parseQuery(items: string[]): Map<string, string> {
  const m = new Map<string, string>()
  for (const it of items) {
    const eq = it.indexOf('=')
    if (eq > 0) m.set(it.slice(0, eq), it.slice(eq + 1))
  }
  return m
}

/**
 * What a device may observe: its own server-side topics (`cmd/{p}/{d}/...`, `rpc/{p}/{d}/...`,
 * `m2m/{p}/{d}/...`, wildcards allowed) and its product's tag topics (PROTOCOL.md ACL).
 */
function mayObserve(d: DeviceRef, filter: string): boolean {
  const l = filter.split('/')
  if (l.some((lvl, i) => lvl === '' || (lvl === '#' && i !== l.length - 1) || (lvl.length > 1 && /[+#]/.test(lvl)))) return false
  if ((l[0] === 'cmd' || l[0] === 'rpc' || l[0] === 'm2m') && l[1] === d.productId && l[2] === d.deviceId) return true
  return mayDeviceSubscribe(d.productId, filter)
}

