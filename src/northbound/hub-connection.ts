// One MQTT 3.1.1 connection to the cloud hub, on `mqtt-packet` (the packet codec MQTT.js and aedes
// use) and a plain TCP or TLS socket: CONNECT/CONNACK, keepalive, packet ids, QoS 1 publishes in
// batches, subscriptions, and QoS 1 messages from the hub acknowledged only once the caller says
// so. No reconnects, no retries, no store of its own: the hub link (hub-link.ts) owns all of that,
// and the outbox is the only retry state (docs/decisions/0003, 0025-lean-hub-link).
//
// Why not MQTT.js: it wrote one socket write per packet (each publish corks and uncorks on its own
// tick, and each PUBACK is handled on a tick of its own), and cloned options, stored the packet and
// a callback per publish. Here the publishes of one turn of the event loop go out in one write, and
// all the PUBACKs of one socket read are handled before the link publishes again (decision record).
// The two packets of the hot path are coded here, the rest by mqtt-packet: a QoS 1 PUBLISH is a
// header written in front of its payload (no packet object, no stream, no copy of the payload until
// the turn's one write), and a PUBACK is four bytes read in place. Every other packet is cut out of
// the stream here and handed whole to mqtt-packet's parser.
import net from 'node:net'
import tls from 'node:tls'
import mqttPacket, { type IConnectPacket, type Packet } from 'mqtt-packet'

export interface HubConnectionOptions {
  url: string
  clientId: string
  username?: string
  password?: string
  /** Seconds; 0 = none. */
  keepalive: number
  clean: boolean
  connectTimeoutMs: number
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer; rejectUnauthorized: boolean }
}

/** What the connection tells its owner. Every callback runs on the event loop, never re-entrantly. */
export interface HubConnectionHandler {
  /** The hub accepted the CONNECT. */
  connected(sessionPresent: boolean): void
  /** The hub acknowledged a QoS 1 publish: the `tag` it was published with. */
  acked(tag: number): void
  /** Everything one socket read carried has been handled (publish the next batch now). */
  readDone(): void
  /** A message from the hub. QoS 1: its PUBACK is sent once the promise resolves; a rejection closes the connection. */
  message(topic: string, payload: Buffer): Promise<void>
  /** What the hub granted for a SUBSCRIBE (128 = refused), by the order of its filters. */
  subscribed(messageId: number, granted: number[]): void
  /** An error of the connection (socket, TLS, a refused CONNECT, a timeout); `closed` follows. */
  error(err: Error & { code?: string | number }): void
  /** The connection is gone (called once). */
  closed(): void
}

// CONNACK return codes of MQTT 3.1.1 (the same texts MQTT.js used, so the health's `message` reads as before).
const CONNACK_TEXT: Record<number, string> = {
  1: 'Unacceptable protocol version',
  2: 'Identifier rejected',
  3: 'Server unavailable',
  4: 'Bad username or password',
  5: 'Not authorized',
}

const MAX_ID = 65_535
const DISCONNECT_WAIT_MS = 2_000
const GEN = { protocolVersion: 4 }
const PUBACK_BYTE = 0x40
const PUBLISH_QOS1_BYTE = 0x32
const INCOMPLETE = -1
const MALFORMED = -2

/** Where the packet starting at `pos` ends (may be past the buffer's end), INCOMPLETE while its length is not all there, or MALFORMED. */
function packetEnd(buf: Buffer, pos: number): number {
  let value = 0
  for (let i = 0; i < 4; i++) {
    const at = pos + 1 + i
    if (at >= buf.length) return INCOMPLETE
    value += (buf[at] & 0x7f) * 128 ** i
    if ((buf[at] & 0x80) === 0) return at + 1 + value
  }
  return MALFORMED
}

/** A QoS 1 PUBLISH up to its payload: fixed header, remaining length, topic, packet id (MQTT 3.1.1, 3.3). */
function publishHeader(topic: string, payloadBytes: number, id: number): Buffer {
  const topicBytes = Buffer.byteLength(topic)
  const remaining = 2 + topicBytes + 2 + payloadBytes
  const h = Buffer.allocUnsafe(1 + lengthBytes(remaining) + 2 + topicBytes + 2)
  h[0] = PUBLISH_QOS1_BYTE
  const at = writeLength(h, remaining)
  h.writeUInt16BE(topicBytes, at)
  h.write(topic, at + 2, 'utf8')
  h.writeUInt16BE(id, at + 2 + topicBytes)
  return h
}

/**
 * A SUBSCRIBE of every filter at QoS 1 (MQTT 3.1.1, 3.8), or an UNSUBSCRIBE (3.10), in one buffer:
 * a gateway with thousands of children sends tens of thousands of filters at each connection.
 */
function filtersPacket(kind: 'subscribe' | 'unsubscribe', id: number, filters: readonly string[]): Buffer {
  const qos = kind === 'subscribe' ? 1 : 0
  let remaining = 2
  for (const f of filters) remaining += 2 + Buffer.byteLength(f) + qos
  const h = Buffer.allocUnsafe(1 + lengthBytes(remaining) + remaining)
  h[0] = kind === 'subscribe' ? 0x82 : 0xa2
  let at = h.writeUInt16BE(id, writeLength(h, remaining))
  for (const f of filters) {
    const n = h.write(f, at + 2, 'utf8')
    h.writeUInt16BE(n, at)
    at += 2 + n
    if (qos) h[at++] = 1
  }
  return h
}

const lengthBytes = (remaining: number): number => (remaining < 128 ? 1 : remaining < 16_384 ? 2 : remaining < 2_097_152 ? 3 : 4)

/** The remaining length after the first byte; returns where the variable header starts. */
function writeLength(h: Buffer, remaining: number): number {
  let at = 1
  do {
    const digit = remaining % 128
    remaining = Math.floor(remaining / 128)
    h[at++] = remaining > 0 ? digit | 0x80 : digit
  } while (remaining > 0)
  return at
}

function codedError(message: string, code: string | number): Error & { code: string | number } {
  return Object.assign(new Error(message), { code })
}

export class HubConnection {
  private readonly socket: net.Socket
  private readonly parser = mqttPacket.parser(GEN)
  private isUp = false
  private isClosed = false
  // Packet ids in use (publishes in flight, subscribes, unsubscribes) with the caller's tag, and
  // where the search for a free one starts.
  private readonly ids = new Map<number, number>()
  private nextId = 1
  // Generated packets waiting for this turn's write.
  private out: Buffer[] = []
  private flushQueued = false
  private wrote = false
  private heard = false
  private pingOutstanding = false
  private keepaliveTimer?: NodeJS.Timeout
  private readonly connectTimer: NodeJS.Timeout
  // Messages from the hub are stored one after the other, in the order they came.
  private incoming: Promise<void> = Promise.resolve()
  // The start of a packet not yet complete: its chunks, their length, and the length it needs (0
  // while its header is still incomplete).
  private partial: Buffer[] = []
  private partialBytes = 0
  private partialNeeds = 0

  constructor(
    private readonly opts: HubConnectionOptions,
    private readonly handler: HubConnectionHandler,
  ) {
    const url = new URL(opts.url)
    const secure = url.protocol === 'mqtts:'
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1')
    const port = url.port ? Number(url.port) : secure ? 8883 : 1883
    this.socket = secure
      ? tls.connect({
          host,
          port,
          servername: net.isIP(host) ? undefined : host,
          ca: opts.tls?.ca,
          cert: opts.tls?.cert,
          key: opts.tls?.key,
          rejectUnauthorized: opts.tls?.rejectUnauthorized ?? true,
        })
      : net.connect({ host, port })
    this.socket.setNoDelay(true)
    this.socket.once(secure ? 'secureConnect' : 'connect', () => this.sendConnect(url))
    this.socket.on('data', (chunk: Buffer) => this.read(chunk))
    this.socket.on('error', (err) => this.fail(err))
    this.socket.on('close', () => this.onClose())
    this.parser.on('packet', (p: Packet) => this.packet(p))
    this.parser.on('error', (err: Error) => this.fail(codedError(`the hub sent a malformed packet: ${err.message}`, 'protocol')))
    this.connectTimer = setTimeout(() => this.fail(codedError(`the hub did not accept the connection within ${opts.connectTimeoutMs / 1000} s`, 'timeout')), opts.connectTimeoutMs)
  }

  get up(): boolean {
    return this.isUp
  }

  /** Packet ids in use (publishes waiting for their PUBACK, subscriptions waiting for their SUBACK). */
  get pending(): number {
    return this.ids.size
  }

  private sendConnect(url: URL): void {
    const o = this.opts
    const username = o.username ?? (url.username ? decodeURIComponent(url.username) : undefined)
    const password = o.password ?? (url.password ? decodeURIComponent(url.password) : undefined)
    const connect: IConnectPacket = {
      cmd: 'connect',
      protocolId: 'MQTT',
      protocolVersion: 4,
      clientId: o.clientId,
      clean: o.clean,
      keepalive: o.keepalive,
      ...(username !== undefined ? { username } : {}),
      ...(password !== undefined ? { password: Buffer.from(password) } : {}),
    }
    this.send(connect)
  }

  private read(chunk: Buffer): void {
    this.heard = true
    this.pingOutstanding = false
    let buf = chunk
    if (this.partial.length) {
      this.partial.push(chunk)
      this.partialBytes += chunk.length
      if (this.partialBytes < this.partialNeeds) return
      buf = Buffer.concat(this.partial, this.partialBytes)
      this.partial = []
    }
    let pos = 0
    while (pos < buf.length && !this.isClosed) {
      if (buf[pos] === PUBACK_BYTE && pos + 4 <= buf.length && buf[pos + 1] === 2) {
        this.acked((buf[pos + 2] << 8) | buf[pos + 3])
        pos += 4
        continue
      }
      const end = packetEnd(buf, pos)
      if (end === MALFORMED) {
        this.fail(codedError('the hub sent a malformed packet: its remaining length takes more than 4 bytes', 'protocol'))
        return
      }
      if (end === INCOMPLETE || end > buf.length) {
        this.partial = [buf.subarray(pos)]
        this.partialBytes = buf.length - pos
        this.partialNeeds = end === INCOMPLETE ? 0 : end - pos
        break
      }
      // A whole packet: the parser emits it before it returns.
      this.parser.parse(buf.subarray(pos, end))
      pos = end
    }
    if (this.isUp && !this.isClosed) this.handler.readDone()
  }

  private acked(messageId: number): void {
    const tag = this.release(messageId)
    if (tag !== undefined) this.handler.acked(tag)
  }

  private packet(p: Packet): void {
    if (this.isClosed) return
    switch (p.cmd) {
      case 'puback':
        if (p.messageId !== undefined) this.acked(p.messageId)
        return
      case 'publish': {
        const { topic, qos, messageId } = p
        const payload = typeof p.payload === 'string' ? Buffer.from(p.payload) : p.payload
        this.incoming = this.incoming
          .then(() => this.handler.message(topic, payload))
          .then(
            () => {
              if (qos === 1) this.send({ cmd: 'puback', messageId })
              else if (qos === 2) this.send({ cmd: 'pubrec', messageId })
            },
            () => this.destroy(),
          )
        return
      }
      case 'pubrel':
        this.send({ cmd: 'pubcomp', messageId: p.messageId })
        return
      case 'suback':
        if (p.messageId !== undefined && this.release(p.messageId) !== undefined) this.handler.subscribed(p.messageId, p.granted.map((g) => (typeof g === 'number' ? g : (g as { qos: number }).qos)))
        return
      case 'unsuback':
        if (p.messageId !== undefined) this.release(p.messageId)
        return
      case 'connack':
        this.connack(p.returnCode ?? 0, p.sessionPresent)
        return
      default:
        return // pingresp (any packet counts as an answer), and nothing else a server sends in 3.1.1
    }
  }

  private connack(rc: number, sessionPresent: boolean): void {
    clearTimeout(this.connectTimer)
    if (rc !== 0) {
      this.fail(codedError(`Connection refused: ${CONNACK_TEXT[rc] ?? `return code ${rc}`}`, rc))
      return
    }
    this.isUp = true
    if (this.opts.keepalive > 0) {
      this.keepaliveTimer = setInterval(() => this.keepalive(), this.opts.keepalive * 1000)
    }
    this.handler.connected(sessionPresent)
  }

  // Once per keepalive period: a PINGREQ if nothing else was sent; a PINGREQ unanswered for a whole
  // period (nothing at all heard from the hub) ends the connection.
  private keepalive(): void {
    if (this.pingOutstanding && !this.heard) {
      this.fail(codedError(`the hub did not answer a PINGREQ within ${this.opts.keepalive} s`, 'timeout'))
      return
    }
    this.heard = false
    if (!this.wrote || this.pingOutstanding) {
      this.pingOutstanding = true
      this.send({ cmd: 'pingreq' })
    }
    this.wrote = false
  }

  /** A free packet id, or 0 when all 65,535 are in use. */
  private take(tag: number): number {
    if (this.ids.size >= MAX_ID) return 0
    let id = this.nextId
    while (this.ids.has(id)) id = id === MAX_ID ? 1 : id + 1
    this.ids.set(id, tag)
    this.nextId = id === MAX_ID ? 1 : id + 1
    return id
  }

  private release(id: number): number | undefined {
    const tag = this.ids.get(id)
    if (tag !== undefined) this.ids.delete(id)
    return tag
  }

  /**
   * Queue a QoS 1 publish for this turn's write; returns its packet id (0: not connected, or no id
   * free). `tag` comes back with its acknowledgement. The write happens after the current turn of
   * the event loop, with everything else queued.
   */
  publish(topic: string, payload: Buffer, tag = 0): number {
    if (!this.isUp) return 0
    const id = this.take(tag)
    if (!id) return 0
    this.queue(publishHeader(topic, payload.length, id))
    if (payload.length) this.out.push(payload)
    return id
  }

  subscribe(filters: string[]): number {
    if (!this.isUp || !filters.length) return 0
    const id = this.take(0)
    if (id) this.queue(filtersPacket('subscribe', id, filters))
    return id
  }

  unsubscribe(filters: string[]): void {
    if (!this.isUp || !filters.length) return
    const id = this.take(0)
    if (id) this.queue(filtersPacket('unsubscribe', id, filters))
  }

  private send(p: Packet): void {
    this.queue(mqttPacket.generate(p, GEN))
  }

  private queue(buf: Buffer): void {
    if (this.isClosed) return
    this.out.push(buf)
    if (!this.flushQueued) {
      this.flushQueued = true
      // After the current I/O callback and its microtasks: every PUBACK of a read handled first.
      setImmediate(() => this.flush())
    }
  }

  /** Write what is queued now, as one buffer. */
  flush(): void {
    this.flushQueued = false
    if (this.isClosed || !this.out.length) return
    const out = this.out
    this.out = []
    this.wrote = true
    this.socket.write(out.length === 1 ? out[0] : Buffer.concat(out))
  }

  private fail(err: Error & { code?: string | number }): void {
    if (this.isClosed) return
    this.handler.error(err)
    this.destroy()
  }

  /** Close at once (no DISCONNECT): the hub keeps our session and its will. */
  destroy(): void {
    this.socket.destroy()
    this.onClose()
  }

  /** A DISCONNECT, then close; resolves once the socket is closed. */
  async end(): Promise<void> {
    if (this.isClosed) return
    if (this.isUp) {
      this.flushQueued = false
      this.out.push(mqttPacket.generate({ cmd: 'disconnect' }, GEN))
      const closed = new Promise<void>((resolve) => this.socket.once('close', () => resolve()))
      const out = this.out
      this.out = []
      this.socket.end(Buffer.concat(out))
      const timer = setTimeout(() => this.socket.destroy(), DISCONNECT_WAIT_MS)
      await closed
      clearTimeout(timer)
    }
    this.destroy()
  }

  private onClose(): void {
    if (this.isClosed) return
    this.isClosed = true
    this.isUp = false
    this.out = []
    clearTimeout(this.connectTimer)
    clearInterval(this.keepaliveTimer)
    this.handler.closed()
  }
}
