// MQTT 5 on the gateway's broker (`broker.mqtt5: true`, aedes 2.0.0-beta.1; decision
// 0021-mqtt5, docs/operators/mqtt5.md): real MQTT.js 5 clients (protocolVersion 5) against the
// real gateway process, the hub a real Mosquitto. What a v5 client relies on: the CONNACK's
// properties, session and message expiry, user properties and subscription identifiers
// delivered, the gateway's refusals as v5 reason codes, shared subscriptions refused, the hub link
// (MQTT 3.1.1) carrying a v5 device's messages and commands. And with the flag off (the default),
// a v5 client refused with a log line that names `broker.mqtt5`.
import mqtt, { type IClientOptions, type IConnackPacket, type IPublishPacket, type MqttClient } from 'mqtt'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { newMessageId } from '../helpers/device.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HUB_PASSWORD, HUB_USERNAME, HubBroker, type HubRecorder } from '../helpers/hub-broker.js'
import { metricValue } from '../helpers/metrics.js'
import { HubSim } from '../../src/tools/hub-sim.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const a = { productId: 'thermo', deviceId: 'a', secret: 'secret-a' }
const b = { productId: 'thermo', deviceId: 'b', secret: 'secret-b' }
const off = { productId: 'thermo', deviceId: 'off', secret: 'secret-off' }

const clients: MqttClient[] = []
let seq = 0

interface V5 {
  client: MqttClient
  connack: IConnackPacket
  /** every PUBLISH received, in order */
  got: IPublishPacket[]
  waitFor: (topic: string, what: string, timeoutMs?: number) => Promise<IPublishPacket>
}

/** An MQTT.js 5 client past its CONNACK, with what it receives recorded from the first packet on. */
async function v5(url: string, opts: IClientOptions = {}): Promise<V5> {
  const client = mqtt.connect(url, { protocolVersion: 5, clientId: `mqtt5-${++seq}-${process.pid}`, reconnectPeriod: 0, connectTimeout: 5_000, ...opts })
  clients.push(client)
  const got: IPublishPacket[] = []
  const waiters = new Set<() => void>()
  client.on('message', (_topic, _payload, packet) => {
    got.push(packet)
    for (const w of waiters) w()
  })
  const connack = await new Promise<IConnackPacket>((resolve, reject) => {
    client.once('connect', resolve)
    client.once('error', reject)
    client.once('close', () => reject(new Error('connection closed before CONNACK')))
  })
  client.on('error', () => undefined)
  const waitFor = (topic: string, what: string, timeoutMs = 10_000): Promise<IPublishPacket> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const m = got.find((p) => p.topic === topic)
        if (!m) return
        clearTimeout(timer)
        waiters.delete(check)
        resolve(m)
      }
      const timer = setTimeout(() => {
        waiters.delete(check)
        reject(new Error(`${what}: nothing on ${topic} within ${timeoutMs} ms; got ${JSON.stringify(got.map((p) => p.topic))}`))
      }, timeoutMs)
      waiters.add(check)
      check()
    })
  return { client, connack, got, waitFor }
}

/** The CONNACK reason code of a refused v5 connection. */
async function refusedWith(url: string, opts: IClientOptions): Promise<number | string | undefined> {
  try {
    const { client } = await v5(url, opts)
    await client.endAsync(true)
  } catch (err) {
    return (err as { code?: number | string }).code
  }
  throw new Error(`${String(opts.username)} connected, but should have been refused`)
}

/** The SUBACK reason code for one filter, read from the SUBACK packet the callback gets either way. */
function suback(client: MqttClient, filter: string, opts: { qos: 0 | 1; properties?: { subscriptionIdentifier?: number } } = { qos: 1 }): Promise<number> {
  return new Promise((resolve, reject) => {
    client.subscribe(filter, opts, (err, _granted, packet) => {
      const code = (packet as { granted?: number[] } | undefined)?.granted?.[0]
      if (typeof code === 'number') resolve(code)
      else reject(err ?? new Error(`no SUBACK for ${filter}`))
    })
  })
}

/** A QoS 1 publish's PUBACK reason code (0 accepted). */
function puback(client: MqttClient, topic: string, payload: string, properties?: IClientOptions['properties'] & Record<string, unknown>): Promise<number> {
  return new Promise((resolve, reject) => {
    client.publish(topic, payload, { qos: 1, properties }, (err, packet) => {
      const code = (err as { code?: number } | undefined)?.code ?? (packet as { reasonCode?: number } | undefined)?.reasonCode ?? 0
      if (typeof code === 'number') resolve(code)
      else reject(err ?? new Error(`no PUBACK for ${topic}`))
    })
  })
}

/**
 * A persistent v5 session (Session Expiry Interval `expiry`) on `url`, subscribed to `filter` at
 * QoS 1 and then gone, so that what is published on it waits in the session. Returns its client id
 * and whether its first CONNACK said a session was present.
 */
async function leftSession(url: string, what: string, filter: string, expiry: number): Promise<{ id: string; sessionPresent: boolean }> {
  const id = `tool-${what}-${++seq}`
  const first = await v5(url, { clientId: id, clean: false, properties: { sessionExpiryInterval: expiry } })
  expect(await suback(first.client, filter)).toBe(1)
  await first.client.endAsync()
  return { id, sessionPresent: first.connack.sessionPresent }
}

const login = (d: { productId: string; deviceId: string; secret: string }): IClientOptions => ({
  username: `${d.productId}/${d.deviceId}`,
  password: d.secret,
  clientId: `${d.productId}/${d.deviceId}/v5-${++seq}`,
})

afterEach(async () => {
  await Promise.allSettled(clients.splice(0).map((c) => c.endAsync(true)))
})

describe('the local broker with broker.mqtt5: true', () => {
  let hub: HubBroker
  let recorder: HubRecorder
  let sim: HubSim
  let gateway: GatewayProcess

  const rejected = async (reason: string): Promise<number> => {
    const res = await gateway.api<string>('GET', '/metrics')
    return metricValue(res.body, 'iothub_edge_rejected_total', { reason })
  }
  const lines = (): { code?: string; msg?: string; topic?: string }[] =>
    gateway
      .logs()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { code?: string; msg?: string; topic?: string })

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [a, b] } })
    await hub.start()
    recorder = await hub.subscribeAll('#')
    sim = new HubSim({ url: hub.url, username: HUB_USERNAME, password: HUB_PASSWORD })
    await sim.start()
    gateway = new GatewayProcess({ gateway: gw, northbound: { url: hub.url }, broker: { mqtt5: true }, devices: [a, b, { ...off, enabled: false }] })
    await gateway.start(60_000)
    await recorder.waitFor((m) => m.topic.startsWith(`update_status/${gw.productId}/${gw.deviceId}/`), 15_000, 'gateway status')
  })

  afterAll(async () => {
    await sim?.stop()
    await gateway?.close()
    await hub?.close()
  })

  it('accepts a v5 device and says in the CONNACK what the broker supports [MQTT-3.2.2.3]', async () => {
    const { connack } = await v5(gateway.externalUrl, login(a))
    expect(connack.reasonCode).toBe(0)
    expect(connack.sessionPresent).toBe(false)
    // No shared subscriptions (they are refused below), no topic aliases from clients (none announced).
    expect(connack.properties?.sharedSubscriptionAvailable).toBe(false)
    expect(connack.properties?.topicAliasMaximum ?? 0).toBe(0)
  })

  it('assigns a client id to a v5 client that sends none [MQTT-3.1.3-6], [MQTT-3.2.2-16]', async () => {
    const { connack } = await v5(gateway.internalUrl, { clientId: '' })
    expect(connack.reasonCode).toBe(0)
    expect(connack.properties?.assignedClientIdentifier).toMatch(/.+/)
  })

  it('refuses a wrong secret with CONNACK 0x86 and a disabled device with 0x87, and counts them', async () => {
    const before = await rejected('auth_failed')
    expect(await refusedWith(gateway.externalUrl, { ...login(a), password: 'not-the-secret' })).toBe(0x86)
    expect(await refusedWith(gateway.externalUrl, { ...login(a), username: 'not-a-device-name' })).toBe(0x86)
    expect(await refusedWith(gateway.externalUrl, login(off))).toBe(0x87)
    expect(await rejected('auth_failed')).toBe(before + 3)
  })

  it('refuses a subscription outside the device ACL with SUBACK 0x87 and grants its own tag filter', async () => {
    const { client } = await v5(gateway.externalUrl, login(a))
    expect(await suback(client, `cmd/${b.productId}/${b.deviceId}/#`)).toBe(0x87)
    expect(await suback(client, `tags/${a.productId}/+/cmd/+/+/+/#`)).toBe(1)
    expect(client.connected).toBe(true)
  })

  it('answers a publish outside the device ACL with PUBACK 0x87, keeps the connection, forwards nothing, and counts it', async () => {
    const { client } = await v5(gateway.externalUrl, login(a))
    const before = await rejected('acl_denied')
    const forged = `upload_data/${b.productId}/${b.deviceId}/temperature/${newMessageId()}`
    expect(await puback(client, forged, 'forged')).toBe(0x87)
    expect(client.connected).toBe(true)
    const marker = `upload_data/${a.productId}/${a.deviceId}/temperature/${newMessageId()}`
    expect(await puback(client, marker, 'marker')).toBe(0)
    await recorder.waitFor((m) => m.topic === marker, 10_000, 'marker from A')
    expect(recorder.topics()).not.toContain(forged)
    expect(await rejected('acl_denied')).toBe(before + 1)
  })

  it('refuses $share/ (SUBACK 0x9E, shared subscriptions not supported) and $queue/ (0x87), logged with what to do', async () => {
    const { client } = await v5(gateway.internalUrl)
    const before = await rejected('unsupported_protocol')
    expect(await suback(client, '$share/group/site/#')).toBe(0x9e)
    expect(await suback(client, '$queue/site/#')).toBe(0x87)
    expect(await rejected('unsupported_protocol')).toBe(before + 2)
    await expect.poll(() => lines().filter((l) => l.code === 'IHE_SHARED_SUBSCRIPTION' && /subscribe to the topic itself/.test(l.msg ?? '')).length).toBeGreaterThanOrEqual(1)
  })

  it('delivers user properties, content type, response topic and correlation data, and the subscription identifier [MQTT-3.3.2-17], [MQTT-3.3.4-3]', async () => {
    const sub = await v5(gateway.internalUrl)
    expect(await suback(sub.client, 'site/props/#', { qos: 1, properties: { subscriptionIdentifier: 7 } })).toBe(1)
    expect(await suback(sub.client, 'site/other/#', { qos: 1, properties: { subscriptionIdentifier: 9 } })).toBe(1)
    const pub = await v5(gateway.internalUrl)
    const properties = {
      userProperties: { site: 'hall-3', line: ['a', 'b'] },
      contentType: 'application/json',
      responseTopic: 'site/replies/1',
      correlationData: Buffer.from('corr-1'),
      payloadFormatIndicator: true,
    }
    expect(await puback(pub.client, 'site/props/t1', '{"c":21}', properties)).toBe(0)
    const got = await sub.waitFor('site/props/t1', 'message with properties')
    expect(got.payload.toString()).toBe('{"c":21}')
    expect(got.properties?.userProperties).toEqual({ site: 'hall-3', line: ['a', 'b'] })
    expect(got.properties?.contentType).toBe('application/json')
    expect(got.properties?.responseTopic).toBe('site/replies/1')
    expect(Buffer.from(got.properties!.correlationData!).toString()).toBe('corr-1')
    expect(got.properties?.payloadFormatIndicator).toBe(true)
    expect(got.properties?.subscriptionIdentifier).toBe(7)
  })

  it('keeps a session with a Session Expiry Interval for a device gone and back, and ends it when the interval is over [MQTT-3.1.2-23]', async () => {
    const { id, sessionPresent } = await leftSession(gateway.internalUrl, 'session', 'site/session/#', 300)
    expect(sessionPresent).toBe(false)
    const pub = await v5(gateway.internalUrl)
    expect(await puback(pub.client, 'site/session/q', 'while away')).toBe(0)
    const back = await v5(gateway.internalUrl, { clientId: id, clean: false, properties: { sessionExpiryInterval: 1 } })
    expect(back.connack.sessionPresent).toBe(true)
    expect((await back.waitFor('site/session/q', 'queued message')).payload.toString()).toBe('while away')
    // Gone for longer than the 1 s it asked for this time: the session is over.
    await back.client.endAsync()
    await sleep(2_500)
    const late = await v5(gateway.internalUrl, { clientId: id, clean: false, properties: { sessionExpiryInterval: 300 } })
    expect(late.connack.sessionPresent).toBe(false)
  })

  it('does not deliver a queued or retained message whose Message Expiry Interval is over; hands on the rest with what remains of it [MQTT-3.3.2-5], [MQTT-3.3.2-6]', async () => {
    const { id } = await leftSession(gateway.internalUrl, 'expiry', 'site/expiry/q/#', 300)
    const pub = await v5(gateway.internalUrl)
    expect(await puback(pub.client, 'site/expiry/q/short', 'short', { messageExpiryInterval: 1 })).toBe(0)
    expect(await puback(pub.client, 'site/expiry/q/long', 'long', { messageExpiryInterval: 3600 })).toBe(0)
    await pub.client.publishAsync('site/expiry/retained/short', 'short', { qos: 1, retain: true, properties: { messageExpiryInterval: 1 } })
    await pub.client.publishAsync('site/expiry/retained/long', 'long', { qos: 1, retain: true, properties: { messageExpiryInterval: 3600 } })
    await sleep(2_500)

    const back = await v5(gateway.internalUrl, { clientId: id, clean: false, properties: { sessionExpiryInterval: 300 } })
    const long = await back.waitFor('site/expiry/q/long', 'queued message that has not expired')
    // Queued in order: had the expired one been sent, it would have come first.
    expect(back.got.map((p) => p.topic)).toEqual(['site/expiry/q/long'])
    expect(long.properties?.messageExpiryInterval).toBeGreaterThan(0)
    expect(long.properties?.messageExpiryInterval).toBeLessThanOrEqual(3600)

    const fresh = await v5(gateway.internalUrl)
    expect(await suback(fresh.client, 'site/expiry/retained/#')).toBe(1)
    const kept = await fresh.waitFor('site/expiry/retained/long', 'retained message that has not expired')
    expect(kept.retain).toBe(true)
    expect(kept.properties?.messageExpiryInterval).toBeLessThanOrEqual(3600)
    expect(fresh.got.map((p) => p.topic)).toEqual(['site/expiry/retained/long'])
  })

  it('carries a v5 device\'s message north over the 3.1.1 hub link (payload as sent, properties stay local) and delivers hub commands to it', async () => {
    // A trusted local tool sees the device's message with its properties; the hub gets the payload.
    const tool = await v5(gateway.internalUrl)
    expect(await suback(tool.client, `upload_data/${a.productId}/${a.deviceId}/#`)).toBe(1)
    const dev = await v5(gateway.externalUrl, login(a))
    const topic = `upload_data/${a.productId}/${a.deviceId}/temperature/${newMessageId()}`
    expect(await puback(dev.client, topic, '{"c":22.5}', { userProperties: { unit: 'C' }, contentType: 'application/json' })).toBe(0)
    const atHub = await recorder.waitFor((m) => m.topic === topic, 10_000, 'v5 upload at the hub')
    expect(atHub.payload.toString()).toBe('{"c":22.5}')
    expect((await tool.waitFor(topic, 'the upload on the local broker')).properties?.userProperties).toEqual({ unit: 'C' })

    // Commands: the device holds no subscription of its own; the server-side ones deliver them,
    // and each QoS 1 command waits for the previous one's PUBACK.
    const first = await sim.command(a.productId, a.deviceId, 'dim', { level: 1 })
    const second = await sim.command(a.productId, a.deviceId, 'dim', { level: 2 })
    await dev.waitFor(`cmd/${a.productId}/${a.deviceId}/dim/plain/${first}`, 'first command')
    await dev.waitFor(`cmd/${a.productId}/${a.deviceId}/dim/plain/${second}`, 'second command')
  })

  it('keeps a v5 persistent session, its queued message and the message\'s user properties across a gateway restart', async () => {
    const { id } = await leftSession(gateway.internalUrl, 'restart', 'site/restart/#', 3600)
    const pub = await v5(gateway.internalUrl)
    expect(await puback(pub.client, 'site/restart/q', 'kept', { userProperties: { batch: '7' } })).toBe(0)
    await pub.client.endAsync()
    await gateway.restart()
    await recorder.waitFor((m) => m.topic.startsWith(`update_status/${gw.productId}/${gw.deviceId}/`) && m.receivedAt > Date.now() - 20_000, 20_000, 'gateway status after restart')
    const back = await v5(gateway.internalUrl, { clientId: id, clean: false, properties: { sessionExpiryInterval: 3600 } })
    expect(back.connack.sessionPresent).toBe(true)
    const got = await back.waitFor('site/restart/q', 'queued message after the restart')
    expect(got.payload.toString()).toBe('kept')
    expect(got.properties?.userProperties).toEqual({ batch: '7' })
  })
})

describe('broker.mqtt5 with aclDenyAction: disconnect', () => {
  let gateway: GatewayProcess

  beforeAll(async () => {
    gateway = new GatewayProcess({ gateway: gw, broker: { mqtt5: true, aclDenyAction: 'disconnect' }, devices: [a] })
    await gateway.start(60_000)
  })

  afterAll(async () => {
    await gateway?.close()
  })

  it('answers the refused publish with PUBACK 0x87, then closes the connection', async () => {
    const { client } = await v5(gateway.externalUrl, login(a))
    const closed = new Promise<void>((resolve) => client.once('close', () => resolve()))
    expect(await puback(client, `upload_data/${b.productId}/${b.deviceId}/temperature/${newMessageId()}`, 'forged')).toBe(0x87)
    await closed
    expect(client.connected).toBe(false)
  })
})

describe('the local broker with broker.mqtt5 off (the default)', () => {
  let gateway: GatewayProcess

  beforeAll(async () => {
    gateway = new GatewayProcess({ gateway: gw, devices: [a] })
    await gateway.start(60_000)
  })

  afterAll(async () => {
    await gateway?.close()
  })

  it('refuses an MQTT 5 client, counts it, and tells the operator about broker.mqtt5', async () => {
    const outcome = await v5(gateway.externalUrl, login(a)).then(
      () => 'connected',
      (err: Error) => `refused: ${err.message}`,
    )
    expect(outcome).toMatch(/^refused/)
    const res = await gateway.api<string>('GET', '/metrics')
    expect(metricValue(res.body, 'iothub_edge_rejected_total', { reason: 'unsupported_protocol' })).toBe(1)
    expect(metricValue(res.body, 'iothub_edge_rejected_total', { reason: 'malformed_packet' })).toBe(0)
    const line = gateway
      .logs()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { code?: string; msg?: string })
      .find((l) => l.code === 'IHE_UNSUPPORTED_PROTOCOL')
    expect(line?.msg).toMatch(/broker\.mqtt5: true/)
  })
})
