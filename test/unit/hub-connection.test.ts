// The hub connection's own coding of its hot path (a QoS 1 PUBLISH written as a header in front of
// its payload, PUBACKs read in place, every other packet cut out of the stream for mqtt-packet),
// checked against mqtt-packet on the other end of a real TCP connection: what it writes parses as
// the same PUBLISH, and what it reads, split anywhere, is understood.
import net from 'node:net'
import mqttPacket, { type Packet } from 'mqtt-packet'
import { afterEach, describe, expect, it } from 'vitest'
import { HubConnection, type HubConnectionHandler } from '../../src/northbound/hub-connection.js'

const GEN = { protocolVersion: 4 } as const
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

interface Peer {
  url: string
  packets: Packet[]
  socket: () => net.Socket
  write: (b: Buffer) => void
  close: () => Promise<void>
}

/** The hub's side: mqtt-packet's parser and generator; answers CONNECT, records the rest. */
async function peer(): Promise<Peer> {
  const packets: Packet[] = []
  let sock: net.Socket | undefined
  const server = net.createServer((s) => {
    sock = s
    const parser = mqttPacket.parser(GEN)
    parser.on('packet', (p: Packet) => {
      if (p.cmd === 'connect') s.write(mqttPacket.generate({ cmd: 'connack', returnCode: 0, sessionPresent: false }, GEN))
      else packets.push(p)
    })
    s.on('data', (d) => parser.parse(d))
    s.on('error', () => {})
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as net.AddressInfo).port
  return {
    url: `mqtt://127.0.0.1:${port}`,
    packets,
    socket: () => sock!,
    write: (b) => sock!.write(b),
    close: () => {
      sock?.destroy()
      return new Promise((r) => server.close(() => r()))
    },
  }
}

interface Seen {
  acked: number[]
  granted: [number, number[]][]
  messages: [string, string][]
  errors: (Error & { code?: string | number })[]
  closed: boolean
  up: boolean
}

function connect(url: string): { conn: HubConnection; seen: Seen } {
  const seen: Seen = { acked: [], granted: [], messages: [], errors: [], closed: false, up: false }
  const handler: HubConnectionHandler = {
    connected: () => void (seen.up = true),
    acked: (tag) => void seen.acked.push(tag),
    readDone: () => {},
    message: (topic, payload) => {
      seen.messages.push([topic, payload.toString()])
      return Promise.resolve()
    },
    subscribed: (id, granted) => void seen.granted.push([id, granted]),
    error: (err) => void seen.errors.push(err),
    closed: () => void (seen.closed = true),
  }
  const conn = new HubConnection({ url, clientId: 'hc-test', keepalive: 0, clean: true, connectTimeoutMs: 10_000 }, handler)
  return { conn, seen }
}

async function until(what: () => boolean, label: string): Promise<void> {
  for (let i = 0; i < 400 && !what(); i++) await sleep(25)
  if (!what()) throw new Error(`timed out waiting for ${label}`)
}

describe('the hub connection on the wire', () => {
  const cleanup: (() => Promise<void>)[] = []
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c()
  })

  async function setup(): Promise<{ hub: Peer; conn: HubConnection; seen: Seen }> {
    const hub = await peer()
    cleanup.push(hub.close)
    const { conn, seen } = connect(hub.url)
    cleanup.push(async () => conn.destroy())
    await until(() => seen.up, 'CONNACK')
    return { hub, conn, seen }
  }

  it('writes QoS 1 PUBLISHes that mqtt-packet reads back exactly, at every remaining-length size', async () => {
    const { hub, conn } = await setup()
    const topic = 'upload_data/p/d/telemetry/ünïcødé-温度'
    // Remaining-length boundaries (1 to 4 bytes) around the topic's and packet id's overhead.
    const overhead = 2 + Buffer.byteLength(topic) + 2
    const sizes = [0, 1, 127 - overhead, 128 - overhead, 16_383 - overhead, 16_384 - overhead, 2_097_151 - overhead, 2_097_152 - overhead]
    const sent = sizes.map((n, i) => {
      const payload = Buffer.alloc(n, i + 1)
      return { id: conn.publish(topic, payload, 100 + i), payload }
    })
    expect(sent.every((s) => s.id > 0)).toBe(true)
    await until(() => hub.packets.length === sizes.length, 'every PUBLISH')
    hub.packets.forEach((p, i) => {
      expect(p).toMatchObject({ cmd: 'publish', qos: 1, dup: false, retain: false, topic, messageId: sent[i].id })
      expect(Buffer.compare((p as mqttPacket.IPublishPacket).payload as Buffer, sent[i].payload)).toBe(0)
    })
  })

  it('reads PUBACKs and other packets however the stream splits them', async () => {
    const { hub, conn, seen } = await setup()
    const ids = Array.from({ length: 5 }, (_, i) => conn.publish('upload_data/p/d/t/x', Buffer.from(String(i)), 10 + i))
    const subId = conn.subscribe(['cmd/p/d/#'])
    await until(() => hub.packets.length === 6, 'the publishes and the subscribe')
    const stream = Buffer.concat([
      mqttPacket.generate({ cmd: 'puback', messageId: ids[0] }, GEN),
      mqttPacket.generate({ cmd: 'suback', messageId: subId, granted: [1] }, GEN),
      mqttPacket.generate({ cmd: 'puback', messageId: ids[1] }, GEN),
      mqttPacket.generate({ cmd: 'publish', qos: 0, dup: false, retain: false, topic: 'cmd/p/d/reboot', payload: Buffer.from('{"a":1}') }, GEN),
      mqttPacket.generate({ cmd: 'puback', messageId: ids[2] }, GEN),
      mqttPacket.generate({ cmd: 'puback', messageId: ids[3] }, GEN),
      mqttPacket.generate({ cmd: 'puback', messageId: ids[4] }, GEN),
    ])
    // One byte at a time, each its own segment (no Nagle, a pause between writes).
    hub.socket().setNoDelay(true)
    for (const b of stream) {
      hub.write(Buffer.from([b]))
      await sleep(2)
    }
    await until(() => seen.acked.length === 5 && seen.messages.length === 1, 'every PUBACK and the message')
    expect(seen.acked).toEqual([10, 11, 12, 13, 14])
    expect(seen.granted).toEqual([[subId, [1]]])
    expect(seen.messages).toEqual([['cmd/p/d/reboot', '{"a":1}']])
    expect(conn.pending).toBe(0)
    expect(seen.errors).toEqual([])
  })

  it('gives up a connection whose peer sends a remaining length longer than four bytes', async () => {
    const { hub, seen } = await setup()
    hub.write(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]))
    await until(() => seen.closed, 'the close')
    expect(seen.errors.map((e) => e.code)).toEqual(['protocol'])
  })
})
