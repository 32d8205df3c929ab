// Shared subscriptions, `$share/{ShareName}/{filter}` (MQTT 5 section 4.8.2, offered to MQTT 3.1.1
// clients as Mosquitto does; docs/integrators/mqtt-conformance.md): real MQTT.js 3.1.1 clients
// against the real gateway process. What a site relies on when it runs several copies of a
// consumer: each message to exactly one member of a share, round robin; every share and every
// non-shared subscriber gets its own copy; the device ACL applies to the filter inside; a
// persistent member's share survives its absence and a gateway restart.
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { RawClient, SUBACK, connectPacket, subscribePacket, type RawConnect } from '../helpers/raw-mqtt.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const dev = { productId: 'thermo', deviceId: 'a', secret: 'secret-a' }

let gateway: GatewayProcess
const clients: MqttClient[] = []
let seq = 0

beforeAll(async () => {
  gateway = new GatewayProcess({ gateway: gw, devices: [dev] })
  await gateway.start()
})

afterAll(async () => {
  await Promise.all(clients.splice(0).map((c) => c.endAsync(true)))
  await gateway?.close()
})

/** An MQTT.js 3.1.1 client; what it receives is kept (payloads by topic) from the first packet on. */
class Peer {
  readonly got: { topic: string; payload: string; qos: number }[] = []
  sessionPresent = false

  constructor(readonly client: MqttClient) {
    client.on('message', (topic, payload, packet) => this.got.push({ topic, payload: payload.toString(), qos: packet.qos }))
    client.on('error', () => undefined)
  }

  static async connect(url: string, opts: IClientOptions = {}): Promise<Peer> {
    const client = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5_000, clientId: `shared-${++seq}-${process.pid}`, ...opts })
    clients.push(client)
    const peer = new Peer(client)
    peer.sessionPresent = await new Promise<boolean>((resolve, reject) => {
      client.once('connect', (connack) => resolve(connack.sessionPresent))
      client.once('close', () => reject(new Error(`${String(opts.clientId)}: closed before CONNACK`)))
    })
    return peer
  }

  /** Subscribes; the granted QoS per filter (128: refused). */
  async subscribe(filters: Record<string, { qos: 0 | 1 | 2 }>): Promise<number[]> {
    return (await this.client.subscribeAsync(filters)).map((g) => g.qos)
  }

  payloads(topic: string): string[] {
    return this.got.filter((m) => m.topic === topic).map((m) => m.payload)
  }
}

/** One SUBSCRIBE (QoS 1 each) on a raw connection: the SUBACK's return codes. */
async function rawSuback(port: number, login: Pick<RawConnect, 'username' | 'password'>, filters: string[]): Promise<number[]> {
  const c = await RawClient.open(port)
  try {
    c.send(connectPacket({ clientId: `shared-raw-${++seq}`, ...login }))
    expect((await c.next('CONNACK')).body.toString('hex')).toBe('0000')
    c.send(subscribePacket(1, filters.map((f) => [f, 1] as [string, 1])))
    return [...(await c.nextOf(SUBACK, 'SUBACK')).body.subarray(2)]
  } finally {
    c.end()
  }
}

const internal = (opts?: IClientOptions): Promise<Peer> => Peer.connect(gateway.internalUrl, opts)

/** Waits until `done` holds; fails with what the peers got after 15 s. */
async function until(what: string, done: () => boolean, peers: Peer[]): Promise<void> {
  const deadline = Date.now() + 15_000
  while (!done()) {
    if (Date.now() > deadline) throw new Error(`${what}; got ${JSON.stringify(peers.map((p) => p.got))}`)
    await sleep(20)
  }
}

/**
 * Publishes `count` QoS 1 messages on `topic`, then one on `fence` that every peer subscribed to:
 * once each peer has the fence, each has all it will get of the messages before it.
 */
async function publishAll(topic: string, count: number, fence: string, peers: Peer[]): Promise<string[]> {
  const pub = await internal()
  const sent = Array.from({ length: count }, (_, i) => `m${i}`)
  for (const m of sent) await pub.client.publishAsync(topic, m, { qos: 1 })
  await pub.client.publishAsync(fence, 'fence', { qos: 1 })
  await until('every peer got the fence', () => peers.every((p) => p.payloads(fence).length > 0), peers)
  return sent
}

describe('shared subscriptions on the internal listener', () => {
  it('each message goes to one member of the share, round robin: none lost, none twice', async () => {
    const topic = `shared/rr/${++seq}`
    const fence = `${topic}/fence`
    const members = await Promise.all([internal(), internal(), internal()])
    for (const m of members) expect(await m.subscribe({ [`$share/workers/${topic}`]: { qos: 1 }, [fence]: { qos: 1 } })).toEqual([1, 1])
    const sent = await publishAll(topic, 9, fence, members)
    const got = members.map((m) => m.payloads(topic))
    expect(got.flat().sort()).toEqual([...sent].sort())
    // Round robin among 3 connected members: 3 each.
    expect(got.map((g) => g.length)).toEqual([3, 3, 3])
  })

  it('members of two shares each get a copy, and a non-shared subscriber gets every message', async () => {
    const topic = `shared/two/${++seq}`
    const fence = `${topic}/fence`
    const a = await Promise.all([internal(), internal()])
    const b = await Promise.all([internal(), internal()])
    const plain = await internal()
    // Wildcards inside a share match as anywhere else.
    for (const m of a) expect(await m.subscribe({ [`$share/a/shared/two/+`]: { qos: 1 }, [fence]: { qos: 1 } })).toEqual([1, 1])
    for (const m of b) expect(await m.subscribe({ [`$share/b/${topic}`]: { qos: 1 }, [fence]: { qos: 1 } })).toEqual([1, 1])
    expect(await plain.subscribe({ [topic]: { qos: 1 }, [fence]: { qos: 1 } })).toEqual([1, 1])
    const sent = await publishAll(topic, 6, fence, [...a, ...b, plain])
    for (const share of [a, b]) {
      expect(share.flatMap((m) => m.payloads(topic)).sort()).toEqual([...sent].sort())
      expect(share.map((m) => m.payloads(topic).length)).toEqual([3, 3])
    }
    expect(plain.payloads(topic)).toEqual(sent)
  })

  it('[MQTT-4.8.2-3] a member gets a message at most at the QoS it was granted', async () => {
    const topic = `shared/qos/${++seq}`
    const member = await internal()
    expect(await member.subscribe({ [`$share/q/${topic}`]: { qos: 0 }, [`${topic}/fence`]: { qos: 0 } })).toEqual([0, 0])
    await publishAll(topic, 1, `${topic}/fence`, [member])
    expect(member.got.find((m) => m.topic === topic)).toMatchObject({ payload: 'm0', qos: 0 })
  })

  it('a member that unsubscribes or leaves gets nothing more; the others get all', async () => {
    const topic = `shared/leave/${++seq}`
    const fence = `${topic}/fence`
    const [stays, unsubscribes, leaves] = await Promise.all([internal(), internal(), internal()])
    for (const m of [stays, unsubscribes, leaves]) await m.subscribe({ [`$share/l/${topic}`]: { qos: 1 }, [fence]: { qos: 1 } })
    await unsubscribes.client.unsubscribeAsync(`$share/l/${topic}`)
    await leaves.client.endAsync()
    const sent = await publishAll(topic, 4, fence, [stays, unsubscribes])
    expect(stays.payloads(topic)).toEqual(sent)
    expect(unsubscribes.payloads(topic)).toEqual([])
  })

  it('[MQTT-4.8.2-1] [MQTT-4.8.2-2] a $share/ filter without a ShareName, with a wildcard in it, or without a filter, and $queue/, are refused with 0x80', async () => {
    // Raw: MQTT.js refuses to send some of these.
    const granted = await rawSuback(gateway.internalPort, {}, ['$share//t', '$share/+/t', '$share/#', '$share/g', '$queue/t', '$share/g/t'])
    expect(granted).toEqual([0x80, 0x80, 0x80, 0x80, 0x80, 1])
  })

  it('no retained message is sent for a shared subscription (MQTT 5 section 3.3.1.3: only for a non-shared one)', async () => {
    const topic = `shared/retained/${++seq}`
    const pub = await internal()
    await pub.client.publishAsync(topic, 'kept', { qos: 1, retain: true })
    const member = await internal()
    await member.subscribe({ [`$share/r/${topic}`]: { qos: 1 } })
    await member.subscribe({ [topic]: { qos: 1 } })
    await until('the retained message through the non-shared subscription', () => member.payloads(topic).length > 0, [member])
    expect(member.got).toEqual([{ topic, payload: 'kept', qos: 1 }])
  })
})

describe('shared subscriptions on the external listener', () => {
  it('the device ACL applies to the filter inside the share', async () => {
    const username = `${dev.productId}/${dev.deviceId}`
    const granted = await rawSuback(gateway.externalPort, { username, password: dev.secret }, [`$share/d/tags/${dev.productId}/+/cmd/+/+/+/#`, '$share/d/#', '$share/d/shared/x'])
    expect(granted).toEqual([1, 0x80, 0x80])
  })
})

describe('a persistent member of a share', () => {
  it('gets what was published while it was away, across a gateway restart, and is still a member when it comes back', async () => {
    const topic = `shared/persist/${++seq}`
    const clientId = `shared-persistent-${process.pid}`
    const member = await internal({ clientId, clean: false })
    expect(await member.subscribe({ [`$share/p/${topic}`]: { qos: 1 } })).toEqual([1])
    await member.client.endAsync()
    const pub = await internal()
    await pub.client.publishAsync(topic, 'before restart', { qos: 1 })
    await gateway.restart()
    const again = await internal()
    await again.client.publishAsync(topic, 'after restart', { qos: 1 })
    const back = await internal({ clientId, clean: false })
    expect(back.sessionPresent).toBe(true)
    await until('both queued messages', () => back.payloads(topic).length >= 2, [back])
    await again.client.publishAsync(topic, 'live', { qos: 1 })
    await until('the live message', () => back.payloads(topic).length >= 3, [back])
    expect(back.payloads(topic)).toEqual(['before restart', 'after restart', 'live'])
  })
})
