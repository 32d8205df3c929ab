// MQTT 3.1.1 as raw bytes over a plain TCP socket, for what real clients refuse to send (ill-formed
// UTF-8, packet id 0, DUP on QoS 0, ...) and for reading exactly what the broker answers (flags,
// packet ids, return codes) before it closes the connection.
import net from 'node:net'

export function mqttString(s: string | Buffer): Buffer {
  const b = Buffer.isBuffer(s) ? s : Buffer.from(s)
  const len = Buffer.alloc(2)
  len.writeUInt16BE(b.length)
  return Buffer.concat([len, b])
}

export function remainingLength(n: number): Buffer {
  const out: number[] = []
  do {
    let digit = n % 128
    n = Math.floor(n / 128)
    if (n > 0) digit |= 0x80
    out.push(digit)
  } while (n > 0)
  return Buffer.from(out)
}

export function packet(header: number, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from([header]), remainingLength(body.length), body])
}

const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff])

export interface RawConnect {
  clientId: string | Buffer
  /** default true */
  clean?: boolean
  username?: string | Buffer
  password?: string
  will?: { topic: string | Buffer; payload?: string; qos?: 0 | 1 | 2 | 3; retain?: boolean }
  /** default 4 (3.1.1); 3 (MQTT 3.1) names the protocol `MQIsdp` */
  level?: number
  keepalive?: number
}

/** A CONNECT exactly as described: flags follow the fields given (a password alone is allowed). */
export function connectPacket(c: RawConnect): Buffer {
  let flags = c.clean === false ? 0 : 0x02
  const payload = [mqttString(c.clientId)]
  if (c.will) {
    flags |= 0x04 | ((c.will.qos ?? 0) << 3) | (c.will.retain ? 0x20 : 0)
    payload.push(mqttString(c.will.topic), mqttString(c.will.payload ?? ''))
  }
  if (c.username !== undefined) {
    flags |= 0x80
    payload.push(mqttString(c.username))
  }
  if (c.password !== undefined) {
    flags |= 0x40
    payload.push(mqttString(c.password))
  }
  const header = Buffer.concat([mqttString(c.level === 3 ? 'MQIsdp' : 'MQTT'), Buffer.from([c.level ?? 4, flags]), u16(c.keepalive ?? 60)])
  return packet(0x10, Buffer.concat([header, ...payload]))
}

export function publishPacket(p: { topic: string | Buffer; payload?: string; qos?: 0 | 1 | 2; dup?: boolean; retain?: boolean; id?: number }): Buffer {
  const qos = p.qos ?? 0
  const header = 0x30 | (p.dup ? 0x08 : 0) | (qos << 1) | (p.retain ? 1 : 0)
  const id = qos > 0 || p.id !== undefined ? u16(p.id ?? 1) : Buffer.alloc(0)
  return packet(header, Buffer.concat([mqttString(p.topic), id, Buffer.from(p.payload ?? '')]))
}

export function subscribePacket(id: number, filters: [string | Buffer, 0 | 1 | 2][]): Buffer {
  return packet(0x82, Buffer.concat([u16(id), ...filters.flatMap(([f, qos]) => [mqttString(f), Buffer.from([qos])])]))
}

export function unsubscribePacket(id: number, filters: (string | Buffer)[]): Buffer {
  return packet(0xa2, Buffer.concat([u16(id), ...filters.map((f) => mqttString(f))]))
}

export const pubackPacket = (id: number): Buffer => packet(0x40, u16(id))

/** One packet from the broker: `type` is the packet type (2 CONNACK, 3 PUBLISH, 9 SUBACK, ...). */
export interface Frame {
  type: number
  flags: number
  body: Buffer
}

export const CONNACK = 2
export const PUBLISH = 3
export const SUBACK = 9

/** A PUBLISH frame's fields. */
export function readPublish(f: Frame): { topic: string; qos: number; dup: boolean; retain: boolean; id?: number; payload: string } {
  const qos = (f.flags >> 1) & 3
  const len = f.body.readUInt16BE(0)
  const topic = f.body.subarray(2, 2 + len).toString('utf8')
  const id = qos > 0 ? f.body.readUInt16BE(2 + len) : undefined
  return { topic, qos, dup: (f.flags & 8) !== 0, retain: (f.flags & 1) !== 0, id, payload: f.body.subarray(2 + len + (qos > 0 ? 2 : 0)).toString('utf8') }
}

/** A raw client: send bytes, read the broker's packets one at a time, see it close the connection. */
export class RawClient {
  private buffered = Buffer.alloc(0)
  private readonly frames: Frame[] = []
  private isClosed = false
  private wake: (() => void) | undefined

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (d: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, d])
      this.split()
      this.wake?.()
    })
    socket.on('error', () => undefined) // a reset is a close here
    socket.on('close', () => {
      this.isClosed = true
      this.wake?.()
    })
  }

  static open(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ port, host: '127.0.0.1' })
      socket.once('connect', () => {
        socket.off('error', reject)
        resolve(new RawClient(socket))
      })
      socket.once('error', reject)
    })
  }

  get closed(): boolean {
    return this.isClosed
  }

  send(...bytes: Buffer[]): void {
    this.socket.write(Buffer.concat(bytes))
  }

  /** The next packet; rejects if the connection closes first or nothing comes within timeoutMs. */
  async next(what: string, timeoutMs = 5_000): Promise<Frame> {
    await this.until(() => this.frames.length > 0 || this.isClosed, timeoutMs, `${what}: nothing arrived`)
    const f = this.frames.shift()
    if (!f) throw new Error(`${what}: the broker closed the connection instead`)
    return f
  }

  /** The next packet of `type`, skipping others (e.g. retained PUBLISHes before a SUBACK). */
  async nextOf(type: number, what: string, timeoutMs = 5_000): Promise<Frame> {
    for (;;) {
      const f = await this.next(what, timeoutMs)
      if (f.type === type) return f
    }
  }

  /** Resolves with the packets that came before the broker closed the connection. */
  async closedBy(what: string, timeoutMs = 5_000): Promise<Frame[]> {
    await this.until(() => this.isClosed, timeoutMs, `${what}: the connection is still open`)
    return this.frames.splice(0)
  }

  /** Packets that arrived and were not read yet. */
  pending(): Frame[] {
    return [...this.frames]
  }

  end(): void {
    this.socket.destroy()
  }

  private split(): void {
    for (;;) {
      if (this.buffered.length < 2) return
      let len = 0
      let mult = 1
      let i = 1
      for (; ; i++) {
        if (i >= this.buffered.length) return
        const b = this.buffered[i]
        len += (b & 0x7f) * mult
        mult *= 128
        if ((b & 0x80) === 0) break
      }
      const end = i + 1 + len
      if (this.buffered.length < end) return
      this.frames.push({ type: this.buffered[0] >> 4, flags: this.buffered[0] & 0x0f, body: this.buffered.subarray(i + 1, end) })
      this.buffered = this.buffered.subarray(end)
    }
  }

  private until(done: () => boolean, timeoutMs: number, failure: string): Promise<void> {
    if (done()) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.wake = undefined
        reject(new Error(`${failure} within ${timeoutMs} ms`))
      }, timeoutMs)
      this.wake = () => {
        if (!done()) return
        clearTimeout(timer)
        this.wake = undefined
        resolve()
      }
    })
  }
}
