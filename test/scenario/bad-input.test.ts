// Bad input at the gateway's MQTT port (PROTOCOL.md: "Anything else is a protocol error: reject
// it, count it, never crash"): bytes that are not MQTT, malformed packets after a good CONNECT,
// and well-formed publishes on topics that are not PROTOCOL.md up topics. Meanwhile a well-behaved
// device keeps publishing, and its messages keep reaching the hub.
import net from 'node:net'
import type { MqttClient } from 'mqtt'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { connectDevice, newMessageId, publishQos1 } from '../helpers/device.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HubBroker, type HubRecorder } from '../helpers/hub-broker.js'
import { metricValue } from '../helpers/metrics.js'
import { mqttString, packet } from '../helpers/raw-mqtt.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const bad = { productId: 'thermo', deviceId: 'a', secret: 'secret-a' }
const good = { productId: 'thermo', deviceId: 'b', secret: 'secret-b' }

// --- raw MQTT 3.1.1 bytes, for what MQTT.js refuses to send ------------------------------------

function connectPacket(login: { productId: string; deviceId: string; secret: string }, protocolName = 'MQTT'): Buffer {
  // protocol level 4, flags: username + password + clean session, keepalive 60
  const variableHeader = Buffer.concat([mqttString(protocolName), Buffer.from([4, 0xc2, 0, 60])])
  const username = `${login.productId}/${login.deviceId}`
  return packet(0x10, Buffer.concat([variableHeader, mqttString(`${username}/raw-${newMessageId()}`), mqttString(username), mqttString(login.secret)]))
}

function publishQos1Packet(topic: string | Buffer, payload: string, packetId = 1): Buffer {
  return packet(0x32, Buffer.concat([mqttString(topic), Buffer.from([packetId >> 8, packetId & 0xff]), Buffer.from(payload)]))
}

const CONNACK_ACCEPTED = Buffer.from([0x20, 0x02, 0x00, 0x00])

interface RawResult {
  received: Buffer
  closedAfterMs: number
}

/**
 * Open a TCP connection, optionally log in first (waiting for CONNACK 0), send `bytes`, and
 * resolve once the server closes the connection. Rejects if it is still open after timeoutMs.
 */
function sendRaw(port: number, bytes: Buffer, opts: { loginFirst?: typeof bad; timeoutMs?: number } = {}): Promise<RawResult> {
  const timeoutMs = opts.timeoutMs ?? 5_000
  return new Promise((resolve, reject) => {
    const socket = net.connect({ port, host: '127.0.0.1' })
    let received = Buffer.alloc(0)
    let sent = false
    let sentAt = 0
    const send = (): void => {
      sent = true
      sentAt = Date.now()
      socket.write(bytes)
    }
    const timer = setTimeout(() => {
      socket.destroy()
      reject(new Error(`server kept the connection open ${timeoutMs} ms after ${bytes.subarray(0, 16).toString('hex')}...; got ${received.toString('hex')}`))
    }, timeoutMs)
    socket.on('connect', () => (opts.loginFirst ? socket.write(connectPacket(opts.loginFirst)) : send()))
    socket.on('data', (d: Buffer) => {
      received = Buffer.concat([received, d])
      if (opts.loginFirst && !sent && received.length >= 4) {
        if (!received.subarray(0, 4).equals(CONNACK_ACCEPTED)) {
          clearTimeout(timer)
          socket.destroy()
          reject(new Error(`login refused: ${received.toString('hex')}`))
          return
        }
        received = received.subarray(4)
        send()
      }
    })
    socket.on('error', () => undefined) // a reset is as good as a close here
    socket.on('close', () => {
      clearTimeout(timer)
      if (!sent) reject(new Error('connection closed before the bad input was sent'))
      else resolve({ received, closedAfterMs: Date.now() - sentAt })
    })
  })
}

// --- a device that keeps publishing while the bad input goes on --------------------------------

class SteadyPublisher {
  /** Topics the gateway acknowledged, in order. */
  readonly acked: string[] = []
  error: Error | undefined
  private running = true
  private readonly loop: Promise<void>
  private readonly waiters = new Set<() => void>()

  constructor(private readonly client: MqttClient) {
    this.loop = this.run()
  }

  private async run(): Promise<void> {
    while (this.running) {
      const topic = `upload_data/${good.productId}/${good.deviceId}/steady/${newMessageId()}`
      try {
        await publishQos1(this.client, topic, JSON.stringify({ n: this.acked.length }))
      } catch (err) {
        this.error = err as Error
        return
      }
      this.acked.push(topic)
      for (const w of this.waiters) w()
      await new Promise((r) => setTimeout(r, 25))
    }
  }

  /** Waits until `n` more messages than `mark` have been acknowledged; returns those topics. */
  async ackedAfter(mark: number, n: number, timeoutMs = 10_000): Promise<string[]> {
    const want = mark + n
    if (this.acked.length < want) {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          this.waiters.delete(check)
          reject(new Error(`steady device: only ${this.acked.length - mark} of ${n} publishes acknowledged; error: ${this.error?.message ?? 'none'}`))
        }, timeoutMs)
        const check = (): void => {
          if (this.acked.length >= want) {
            clearTimeout(timer)
            this.waiters.delete(check)
            resolve()
          }
        }
        this.waiters.add(check)
      })
    }
    return this.acked.slice(mark, want)
  }

  async stop(): Promise<void> {
    this.running = false
    await this.loop
  }
}

describe('bad input on the MQTT port', () => {
  let hub: HubBroker
  let recorder: HubRecorder
  let gateway: GatewayProcess
  let goodClient: MqttClient
  let steady: SteadyPublisher
  const clients: MqttClient[] = []

  const rejected = async (reason: string): Promise<number> => {
    const res = await gateway.api<string>('GET', '/metrics')
    expect(res.status).toBe(200)
    return metricValue(res.body, 'iothub_edge_rejected_total', { reason })
  }

  /** The well-behaved device's messages acknowledged after `mark` reach the hub, and it is still connected. */
  async function goodDeviceStillServed(mark: number): Promise<void> {
    const after = await steady.ackedAfter(mark, 5)
    for (const topic of after) await recorder.waitFor((m) => m.topic === topic, 10_000, `steady message ${topic}`)
    expect(steady.error).toBeUndefined()
    expect(goodClient.connected).toBe(true)
  }

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [bad, good] } })
    await hub.start()
    recorder = await hub.subscribeAll(`upload_data/${bad.productId}/#`)
    gateway = new GatewayProcess({ gateway: gw, northbound: { url: hub.url }, devices: [bad, good] })
    await gateway.start()
    goodClient = await connectDevice(gateway.externalUrl, good)
    steady = new SteadyPublisher(goodClient)
    await goodDeviceStillServed(0)
  })

  afterEach(async () => {
    await Promise.allSettled(clients.splice(0).map((c) => c.endAsync(true)))
  })

  afterAll(async () => {
    await steady?.stop()
    await goodClient?.endAsync(true)
    await gateway?.close()
    await hub?.close()
  })

  it('closes connections that send bytes which are not MQTT, and counts them', async () => {
    const mark = steady.acked.length
    const before = await rejected('malformed_packet')
    const garbage: Record<string, Buffer> = {
      'an HTTP request': Buffer.from('GET / HTTP/1.1\r\nHost: gateway\r\n\r\n'),
      'a remaining length longer than 4 bytes': Buffer.from([0x10, 0xff, 0xff, 0xff, 0xff, 0x7f]),
      'a CONNECT for another protocol': connectPacket(bad, 'MQTX'),
      'NUL bytes': Buffer.alloc(64),
      'random bytes': Buffer.from(Array.from({ length: 256 }, (_, i) => (i * 97 + 13) % 256)),
    }
    for (const [what, bytes] of Object.entries(garbage)) {
      const r = await sendRaw(gateway.externalPort, bytes).catch((err: Error) => {
        throw new Error(`${what}: ${err.message}`)
      })
      expect(r.received.subarray(0, 4).equals(CONNACK_ACCEPTED), `${what} got a session`).toBe(false)
    }
    expect(await rejected('malformed_packet')).toBeGreaterThanOrEqual(before + Object.keys(garbage).length)
    await goodDeviceStillServed(mark)
    expect(gateway.running).toBe(true)
  })

  it('closes an authenticated connection that then sends a malformed packet, and counts it', async () => {
    const mark = steady.acked.length
    const before = await rejected('malformed_packet')
    const malformed: Record<string, Buffer> = {
      'a reserved packet type': Buffer.from([0x00, 0x00]),
      'a PUBLISH shorter than its topic': Buffer.from([0x32, 0x03, 0x00, 0x05, 0x61]),
      'a PUBLISH with a wildcard in its topic': publishQos1Packet(`upload_data/${bad.productId}/${bad.deviceId}/temp+/${newMessageId()}`, 'x'),
    }
    for (const [what, bytes] of Object.entries(malformed)) {
      await sendRaw(gateway.externalPort, bytes, { loginFirst: bad }).catch((err: Error) => {
        throw new Error(`${what}: ${err.message}`)
      })
    }
    expect(await rejected('malformed_packet')).toBeGreaterThanOrEqual(before + Object.keys(malformed).length)
    await goodDeviceStillServed(mark)
  })

  it('refuses publishes whose topic is not a PROTOCOL.md up topic, never forwards them, and counts them', async () => {
    const mark = steady.acked.length
    const before = await rejected('bad_topic')
    const client = await connectDevice(gateway.externalUrl, bad)
    clients.push(client)
    const { productId: p, deviceId: d } = bad
    const id = newMessageId()
    const badTopics = [
      `upload_data/${p}/${d}/temperature`, // no MessageId
      `upload_data/${p}/${d}/temperature/${id}/extra`,
      `update_status/${p}/${d}`,
      `update_status/${p}/${d}/${id}/extra`,
      `cmd_resp/${p}/${d}/reboot/${id}`,
      `get/${p}/${d}/config`,
      `update_ota_status/${p}/${d}`,
      `upload_data/${p}/${d}/temperature/not.an.id`,
      `upload_data/${p}/${d}/temperature/${'f'.repeat(65)}`, // MessageId longer than 64
      `upload_data/${p}/${d}//${id}`, // empty DataType
    ]
    for (const topic of badTopics) await publishQos1(client, topic, 'bad')
    // NUL and ill-formed UTF-8 in a level are not a topic error but a broken MQTT packet
    // [MQTT-1.5.3-1/2]: the connection is closed without a PUBACK (test/scenario/conformance.test.ts).
    const malformedBefore = await rejected('malformed_packet')
    for (const level of [Buffer.from('temp\u0000x'), Buffer.from([0xc3, 0x28])]) {
      const topic = Buffer.concat([Buffer.from(`upload_data/${p}/${d}/`), level, Buffer.from(`/${newMessageId()}`)])
      const { received } = await sendRaw(gateway.externalPort, publishQos1Packet(topic, 'bad string'), { loginFirst: bad })
      expect(received.toString('hex'), 'no PUBACK before the close').toBe('')
    }
    expect(await rejected('malformed_packet')).toBeGreaterThanOrEqual(malformedBefore + 2)

    const marker = `upload_data/${p}/${d}/temperature/${newMessageId()}`
    await publishQos1(client, marker, 'marker')
    await recorder.waitFor((m) => m.topic === marker, 10_000, 'marker from the bad device')
    await new Promise((r) => setTimeout(r, 300))
    const fromBad = recorder.topics().filter((t) => t.startsWith(`upload_data/${p}/${d}/`) && !t.includes('/$connection/'))
    expect(fromBad).toEqual([marker])
    expect(await rejected('bad_topic')).toBeGreaterThanOrEqual(before + badTopics.length)
    // A topic error is the device's mistake, not a broken connection: it stays connected.
    expect(client.connected).toBe(true)
    await goodDeviceStillServed(mark)
  })

  it('keeps running and delivers every message it acknowledged to the well-behaved device', async () => {
    const h = await gateway.health()
    expect(h.status).toBe('ok')
    expect(gateway.running).toBe(true)
    const mark = steady.acked.length
    await steady.ackedAfter(mark, 3)
    for (const topic of [...steady.acked]) await recorder.waitFor((m) => m.topic === topic, 10_000, `steady message ${topic}`)
  })
})
