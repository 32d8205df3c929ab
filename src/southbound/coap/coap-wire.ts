// The CoAP message layer (RFC 7252 sections 4 and 5) on one UDP socket, written here rather than
// taken from node-coap (decision 0008): node-coap does not say when a CON notification was
// acknowledged, cannot carry other options per notification, answers a ping with 4.04 and an
// unknown critical option with 2.05. What it does well, the datagram codec, we keep: `coap-packet`,
// node-coap's own parser/generator. Only the request's gist (method, Uri-Path and Uri-Query
// options, Observe, payload) leaves this file; CoAP packets stop here.
import dgram from 'node:dgram'
import { generate, parse, type ParsedPacket } from 'coap-packet'

export interface Peer {
  address: string
  port: number
}

export interface CoapRequest {
  peer: Peer
  method: 'GET' | 'POST' | 'PUT' | 'DELETE'
  confirmable: boolean
  token: Buffer
  /** Uri-Path options, one per segment, as sent (never a URL string re-parsed). */
  path: string[]
  /** Uri-Query options, `k=v` each. */
  query: string[]
  /** Observe option value, when present (0 register, 1 deregister, RFC 7641 section 2). */
  observe?: number
  /** Block2 option of a GET (RFC 7959 section 2.4) that is not for a notification's further blocks. */
  block2?: BlockValue
  payload: Buffer
}

export interface CoapOption {
  name: string
  value: Buffer
}

export interface CoapResponse {
  /** `2.04`, `4.01`, ... */
  code: string
  options?: CoapOption[]
  payload?: Buffer
}

/** Why a datagram was not handled as a request (counted by the caller). */
export type WireDrop = 'malformed' | 'rate_limited' | 'duplicate' | 'bad_option' | 'unexpected'

export interface WireOptions {
  host: string
  port: number
  perSourcePerSecond: number
  /** Largest request body, also when it comes block by block (4.13 beyond). */
  maxPayloadBytes: number
}

export interface WireEvents {
  request(req: CoapRequest): Promise<CoapResponse>
  dropped(reason: WireDrop, peer: Peer, detail?: string): void
  /** An ACK to one of our notifications: the peer is there (requests speak for themselves). */
  heard(peer: Peer): void
}

export type NotifyOutcome = 'acked' | 'reset' | 'timeout'

// RFC 7252 section 4.8: transmission parameters.
const ACK_TIMEOUT_MS = 2_000
const ACK_RANDOM_FACTOR = 1.5
const MAX_RETRANSMIT = 4
// Section 4.8.2: how long a Message-ID is remembered for deduplication.
const EXCHANGE_LIFETIME_MS = 247_000
const NON_LIFETIME_MS = 145_000
// UDP's limit over IPv4; the codec's default (1280) would refuse larger answers outright.
const MAX_DATAGRAM = 65_507

const METHODS: Record<string, CoapRequest['method']> = { '0.01': 'GET', '0.02': 'POST', '0.03': 'PUT', '0.04': 'DELETE', GET: 'GET', POST: 'POST', PUT: 'PUT', DELETE: 'DELETE' }

// Option numbers of the names coap-packet gives (it names the ones it knows, numbers the rest).
const OPTION_NUMBERS: Record<string, number> = {
  'If-Match': 1, 'Uri-Host': 3, ETag: 4, 'If-None-Match': 5, Observe: 6, 'Uri-Port': 7, 'Location-Path': 8, OSCORE: 9,
  'Uri-Path': 11, 'Content-Format': 12, 'Max-Age': 14, 'Uri-Query': 15, 'Hop-Limit': 16, Accept: 17, 'Q-Block1': 19,
  'Location-Query': 20, Block2: 23, Block1: 27, 'Size2': 28, 'Q-Block2': 31, 'Proxy-Uri': 35, 'Proxy-Scheme': 39, Size1: 60, 'No-Response': 258,
  'OCF-Accept-Content-Format-Version': 2049, 'OCF-Content-Format-Version': 2053,
}
// Critical options (odd numbers, section 5.4.1) this endpoint acts on; any other critical option
// in a request is answered 4.02 Bad Option (section 5.4.1), never ignored.
const SUPPORTED_CRITICAL = new Set([3, 7, 11, 15, 17, 23, 27])
// RFC 7959: the block size notifications are cut into when their payload does not fit one
// (SZX 6 = 1024 bytes, what constrained stacks commonly take), and how long a block-wise transfer
// may take between its blocks before its state is dropped.
const BLOCK_SZX = 6
const BLOCK_LIFETIME_MS = EXCHANGE_LIFETIME_MS

export interface BlockValue {
  num: number
  more: boolean
  szx: number
}

/** A Block1 upload being put together (RFC 7959 section 2.5: by endpoint and URI, not by token). */
interface Upload {
  parts: Buffer[]
  bytes: number
  next: number
  expires: number
}

/** A notification too large for one datagram, whose further blocks the client fetches with GET. */
interface Representation {
  payload: Buffer
  options: CoapOption[]
  code: string
  expires: number
  /** Called once the last block was served. */
  complete?: () => void
}

interface Remembered {
  expires: number
  /** The answer already sent (resent on a retransmission); undefined while still being worked on. */
  response?: Buffer
}

interface Outstanding {
  done: (o: NotifyOutcome) => void
}

export class CoapWire {
  private socket?: dgram.Socket
  private readonly seen = new Map<string, Remembered>()
  private readonly outstanding = new Map<string, Outstanding>()
  private readonly rate = new Map<string, { second: number; count: number }>()
  private readonly uploads = new Map<string, Upload>()
  private readonly representations = new Map<string, Representation>()
  private nextMessageId = Math.floor(Math.random() * 0x10000)
  private sweepTimer?: NodeJS.Timeout
  private closed = false

  constructor(
    private readonly opts: WireOptions,
    private readonly events: WireEvents,
  ) {}

  get port(): number {
    return this.socket?.address().port ?? 0
  }

  async start(): Promise<void> {
    const socket = dgram.createSocket({ type: this.opts.host.includes(':') ? 'udp6' : 'udp4' })
    this.socket = socket
    socket.on('message', (msg, rinfo) => this.onDatagram(msg, { address: rinfo.address, port: rinfo.port }))
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject)
      socket.bind(this.opts.port, this.opts.host, () => {
        socket.off('error', reject)
        resolve()
      })
    })
    // After binding, a socket error (ICMP unreachable on some platforms) must not take the process down.
    socket.on('error', (err) => this.events.dropped('unexpected', { address: '', port: 0 }, err.message))
    this.sweepTimer = setInterval(() => this.sweep(), 10_000).unref()
  }

  async stop(): Promise<void> {
    if (this.closed || !this.socket) return
    this.closed = true
    clearInterval(this.sweepTimer)
    for (const o of [...this.outstanding.values()]) o.done('timeout')
    await new Promise<void>((r) => this.socket!.close(() => r()))
  }

  /**
   * A CON notification (RFC 7641 section 4.5: CON, so that the gateway learns whether it arrived):
   * retransmitted with exponential back-off until ACKed, RST or MAX_RETRANSMIT is exhausted.
   */
  notify(peer: Peer, token: Buffer, res: CoapResponse, resource: ResourceKey): Promise<NotifyOutcome> {
    if (this.closed || !this.socket) return Promise.resolve('timeout')
    const payload = res.payload ?? Buffer.alloc(0)
    const size = 1 << (BLOCK_SZX + 4)
    if (payload.length <= size) return this.sendCon(peer, token, res)
    // RFC 7959 section 2.4/3.4: the first block goes in the notification; the client GETs the rest
    // (Block2 num > 0) and the command counts as delivered once the last block was served.
    const key = `${peerKey(peer)}|${resourceKeyString(resource)}`
    const rep: Representation = { payload, options: res.options ?? [], code: res.code, expires: Date.now() + BLOCK_LIFETIME_MS }
    const served = new Promise<void>((resolve) => (rep.complete = resolve))
    this.representations.set(key, rep)
    const first: CoapResponse = { code: res.code, options: [...rep.options, blockOption('Block2', { num: 0, more: true, szx: BLOCK_SZX }), { name: 'Size2', value: uintOption(payload.length) }], payload: payload.subarray(0, size) }
    return this.sendCon(peer, token, first).then(async (outcome) => {
      if (outcome !== 'acked') {
        this.representations.delete(key)
        return outcome
      }
      const timeout = new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), BLOCK_LIFETIME_MS).unref())
      const result = await Promise.race([served.then(() => 'acked' as const), timeout])
      if (this.representations.get(key) === rep) this.representations.delete(key)
      return result
    })
  }

  private sendCon(peer: Peer, token: Buffer, res: CoapResponse): Promise<NotifyOutcome> {
    const messageId = this.newMessageId()
    let datagram: Buffer
    try {
      datagram = generate({ code: res.code, confirmable: true, messageId, token, options: res.options ?? [], payload: res.payload ?? Buffer.alloc(0) }, MAX_DATAGRAM)
    } catch (err) {
      this.events.dropped('unexpected', peer, `notification not encodable: ${(err as Error).message}`)
      return Promise.resolve('timeout')
    }
    const key = `${peerKey(peer)}#${messageId}`
    return new Promise((resolve) => {
      let attempt = 0
      let timer: NodeJS.Timeout | undefined
      const done = (o: NotifyOutcome): void => {
        clearTimeout(timer)
        this.outstanding.delete(key)
        resolve(o)
      }
      this.outstanding.set(key, { done })
      const send = (timeoutMs: number): void => {
        if (this.closed) return done('timeout')
        this.send(datagram, peer)
        timer = setTimeout(() => {
          if (++attempt > MAX_RETRANSMIT) return done('timeout')
          send(timeoutMs * 2)
        }, timeoutMs)
      }
      send(ACK_TIMEOUT_MS * (1 + Math.random() * (ACK_RANDOM_FACTOR - 1)))
    })
  }

  private onDatagram(msg: Buffer, peer: Peer): void {
    if (!this.withinRate(peer)) return this.events.dropped('rate_limited', peer)
    let packet: ParsedPacket
    try {
      packet = parse(msg)
    } catch (err) {
      // Section 4.2/4.3: a message that cannot be parsed is rejected silently (no RST without a
      // trustworthy Message-ID).
      return this.events.dropped('malformed', peer, (err as Error).message)
    }
    const code = String(packet.code)
    if (code === '0.00') {
      if (packet.ack || packet.reset) {
        // The answer to one of our CON notifications.
        const o = this.outstanding.get(`${peerKey(peer)}#${packet.messageId}`)
        if (o) {
          this.events.heard(peer)
          o.done(packet.reset ? 'reset' : 'acked')
        }
        return
      }
      // An empty CON is a CoAP ping (section 4.3): answered with RST. An empty NON is ignored.
      if (packet.confirmable) this.send(generate({ code: '0.00', reset: true, messageId: packet.messageId, token: Buffer.alloc(0), options: [], payload: Buffer.alloc(0) }), peer)
      return
    }
    if (packet.ack || packet.reset) {
      // A piggybacked response or reset: this endpoint sends no requests, and ACKs to notifications are empty.
      const o = this.outstanding.get(`${peerKey(peer)}#${packet.messageId}`)
      if (o) o.done(packet.reset ? 'reset' : 'acked')
      return
    }
    const method = METHODS[code]
    if (!code.startsWith('0.') && !method) {
      // A response where a request belongs: reject a CON (section 4.2), ignore a NON.
      if (packet.confirmable) this.send(generate({ code: '0.00', reset: true, messageId: packet.messageId, token: Buffer.alloc(0), options: [], payload: Buffer.alloc(0) }), peer)
      return this.events.dropped('unexpected', peer, `response code ${code} sent as a request`)
    }
    this.onRequest(packet, method, peer)
  }

  private onRequest(packet: ParsedPacket, method: CoapRequest['method'] | undefined, peer: Peer): void {
    // Section 4.5: a request with a Message-ID seen within its lifetime is the same request again.
    const key = `${peerKey(peer)}#${packet.messageId}`
    const before = this.seen.get(key)
    if (before && before.expires > Date.now()) {
      this.events.dropped('duplicate', peer)
      if (before.response && packet.confirmable) this.send(before.response, peer)
      return
    }
    const remembered: Remembered = { expires: Date.now() + (packet.confirmable ? EXCHANGE_LIFETIME_MS : NON_LIFETIME_MS) }
    this.seen.set(key, remembered)
    const answer = (res: CoapResponse): void => {
      const datagram = generate(
        {
          code: res.code,
          confirmable: false,
          ack: packet.confirmable,
          messageId: packet.confirmable ? packet.messageId : this.newMessageId(),
          token: packet.token,
          options: res.options ?? [],
          payload: res.payload ?? Buffer.alloc(0),
        },
        MAX_DATAGRAM,
      )
      remembered.response = datagram
      this.send(datagram, peer)
    }
    const path: string[] = []
    const query: string[] = []
    let observe: number | undefined
    let block1: BlockValue | undefined
    let block2: BlockValue | undefined
    for (const o of packet.options) {
      const n = typeof o.name === 'number' ? o.name : (OPTION_NUMBERS[o.name] ?? parseInt(o.name, 10))
      if (n === 11) path.push(o.value.toString('utf8'))
      else if (n === 15) query.push(o.value.toString('utf8'))
      else if (n === 6) observe = o.value.length === 0 ? 0 : o.value.readUIntBE(0, Math.min(o.value.length, 3))
      else if (n === 27) block1 = decodeBlock(o.value)
      else if (n === 23) block2 = decodeBlock(o.value)
      else if (n % 2 === 1 && !SUPPORTED_CRITICAL.has(n)) {
        this.events.dropped('bad_option', peer, `critical option ${n}`)
        return answer({ code: '4.02', payload: Buffer.from(`critical option ${n} is not supported`) })
      }
    }
    if (!method) return answer({ code: '4.05', payload: Buffer.from(`method ${packet.code} not allowed`) })
    if ((block1 && block1.szx === 7) || (block2 && block2.szx === 7)) return answer({ code: '4.00', payload: Buffer.from('block size exponent 7 (BERT) is not supported') })
    const resource = `${peerKey(peer)}|${resourceKeyString({ path, query })}`
    // Further blocks of a notification come from here; other block-wise GETs are the resource's own.
    if (method === 'GET' && block2 && block2.num > 0 && this.representations.has(resource)) return answer(this.nextBlock(resource, block2))
    let payload = packet.payload
    let echo: CoapOption | undefined
    if (block1 && (method === 'PUT' || method === 'POST')) {
      const step = this.takeBlock(`${method}|${resource}`, block1, payload)
      if ('answer' in step) return answer(step.answer)
      payload = step.payload
      echo = blockOption('Block1', block1)
    }
    this.events
      .request({ peer, method, confirmable: packet.confirmable, token: packet.token, path, query, observe, block2, payload })
      .then(
        (res) => answer(echo ? { ...res, options: [...(res.options ?? []), echo] } : res),
        () => answer({ code: '5.00' }),
      )
  }

  /** One Block1 block of an upload (RFC 7959 section 2.5): 2.31 Continue until the last, then the whole body. */
  private takeBlock(key: string, b: BlockValue, part: Buffer): { answer: CoapResponse } | { payload: Buffer } {
    const size = 1 << (b.szx + 4)
    let up = this.uploads.get(key)
    if (b.num === 0) {
      up = { parts: [], bytes: 0, next: 0, expires: 0 }
      this.uploads.set(key, up)
    }
    if (!up || b.num !== up.next || (b.more && part.length !== size)) {
      this.uploads.delete(key)
      return { answer: { code: '4.08', payload: Buffer.from(`block ${b.num} out of sequence; start again at block 0`) } }
    }
    up.parts.push(part)
    up.bytes += part.length
    up.next++
    up.expires = Date.now() + BLOCK_LIFETIME_MS
    if (up.bytes > this.opts.maxPayloadBytes) {
      this.uploads.delete(key)
      return { answer: { code: '4.13', options: [{ name: 'Size1', value: uintOption(this.opts.maxPayloadBytes) }], payload: Buffer.from(`payload over ${this.opts.maxPayloadBytes} bytes`) } }
    }
    if (b.more) return { answer: { code: '2.31', options: [blockOption('Block1', b)] } }
    this.uploads.delete(key)
    return { payload: Buffer.concat(up.parts) }
  }

  /** A further block of a notification too large for one datagram (RFC 7959 section 2.4). */
  private nextBlock(key: string, b: BlockValue): CoapResponse {
    const rep = this.representations.get(key)
    if (!rep) return { code: '4.08', payload: Buffer.from('no block-wise notification in progress for this resource') }
    // The client may ask for smaller blocks than we started with, never larger (section 2.4).
    const szx = Math.min(b.szx, BLOCK_SZX)
    const size = 1 << (szx + 4)
    const start = b.num * size
    if (start >= rep.payload.length) return { code: '4.02', payload: Buffer.from('block beyond the end') }
    const end = Math.min(start + size, rep.payload.length)
    const more = end < rep.payload.length
    if (!more) rep.complete?.()
    const options = rep.options.filter((o) => o.name !== 'Observe')
    return { code: rep.code, options: [...options, blockOption('Block2', { num: b.num, more, szx })], payload: rep.payload.subarray(start, end) }
  }

  private withinRate(peer: Peer): boolean {
    const second = Math.floor(Date.now() / 1000)
    const r = this.rate.get(peer.address)
    if (!r || r.second !== second) {
      this.rate.set(peer.address, { second, count: 1 })
      return true
    }
    return ++r.count <= this.opts.perSourcePerSecond
  }

  private newMessageId(): number {
    this.nextMessageId = (this.nextMessageId + 1) & 0xffff
    return this.nextMessageId
  }

  private send(datagram: Buffer, peer: Peer): void {
    if (this.closed) return
    this.socket?.send(datagram, peer.port, peer.address)
  }

  private sweep(): void {
    const now = Date.now()
    for (const [k, r] of this.seen) if (r.expires <= now) this.seen.delete(k)
    const second = Math.floor(now / 1000)
    for (const [k, r] of this.rate) if (r.second < second) this.rate.delete(k)
    for (const [k, u] of this.uploads) if (u.expires <= now) this.uploads.delete(k)
    for (const [k, r] of this.representations) if (r.expires <= now) this.representations.delete(k)
  }
}

const peerKey = (p: Peer): string => `${p.address}:${p.port}`

/** The resource a request names: its Uri-Path and Uri-Query options. */
export interface ResourceKey {
  path: string[]
  query: string[]
}

const resourceKeyString = (r: ResourceKey): string => `${r.path.join('/')}?${r.query.join('&')}`

/** RFC 7959 section 2.2: NUM (4-20 bits), M (1 bit), SZX (3 bits), as a uint. */
function decodeBlock(v: Buffer): BlockValue {
  const n = v.length === 0 ? 0 : v.readUIntBE(0, Math.min(v.length, 3))
  return { num: n >> 4, more: (n & 0x8) !== 0, szx: n & 0x7 }
}

export function blockOption(name: 'Block1' | 'Block2', b: BlockValue): CoapOption {
  return { name, value: uintOption((b.num << 4) | (b.more ? 0x8 : 0) | b.szx) }
}

/** A CoAP uint option value (section 3.2): big-endian, no leading zero bytes. */
export function uintOption(n: number): Buffer {
  if (n === 0) return Buffer.alloc(0)
  const bytes = n < 0x100 ? 1 : n < 0x10000 ? 2 : n < 0x1000000 ? 3 : 4
  const b = Buffer.alloc(bytes)
  b.writeUIntBE(n, 0, bytes)
  return b
}
