// The local broker's sessions, retained messages and wills across a kill -9 of the gateway
// (issue 17 item 2; broker.persistence: sqlite, the default; docs/operators/broker-sessions.md). Before,
// aedes kept them in memory: a persistent-session device that was away when the gateway restarted
// lost what was queued for it and its own subscriptions, retained messages were gone, and a device
// connected at the crash never had its will published.
//
// Real peers: the gateway process killed with SIGKILL, Mosquitto as the hub (a command from the hub,
// a will going north), MQTT.js clients as devices on the external listener and as a local tool on
// the internal one. The local tool publishes with QoS 2: its PUBCOMP comes once the broker has queued
// the message (QoS 1 the same: broker-persistence-puback.test.ts).
import { randomBytes } from 'node:crypto'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { newMessageId, type ReceivedMessage } from '../helpers/device.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HubBroker, type HubRecorder } from '../helpers/hub-broker.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const P = 'lamp'
const child = (deviceId: string): { productId: string; deviceId: string; secret: string } => ({ productId: P, deviceId, secret: `secret-${deviceId}` })
const away = child('away')
const dying = child('dying')
const TAG_FILTER = `tags/${P}/night/cmd/+/+/+/#`

/** An MQTT client whose messages are kept from the first packet on (queued ones come right after the CONNACK). */
class Peer {
  readonly messages: ReceivedMessage[] = []
  sessionPresent = false

  private constructor(readonly client: MqttClient) {
    client.on('message', (topic, payload, packet) => this.messages.push({ topic, levels: topic.split('/'), payload, qos: packet.qos, at: performance.now() }))
    client.on('connect', (connack) => (this.sessionPresent = connack.sessionPresent))
    client.on('error', () => undefined)
  }

  static async connect(url: string, opts: IClientOptions): Promise<Peer> {
    const peer = new Peer(mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5_000, ...opts }))
    await new Promise<void>((resolve, reject) => {
      peer.client.once('connect', () => resolve())
      peer.client.once('close', () => reject(new Error(`${opts.clientId}: closed before CONNACK`)))
    })
    return peer
  }

  static device(url: string, login: { productId: string; deviceId: string; secret: string }, opts: IClientOptions = {}): Promise<Peer> {
    const username = `${login.productId}/${login.deviceId}`
    return Peer.connect(url, { username, password: login.secret, clientId: `${username}/${randomBytes(3).toString('hex')}`, ...opts })
  }

  async waitFor(what: string, cond: (ms: ReceivedMessage[]) => boolean, timeoutMs = 15_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (!cond(this.messages)) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(this.messages.map((m) => m.topic))}`)
      await sleep(20)
    }
  }

  end(): Promise<void> {
    return this.client.endAsync(true)
  }
}

describe("the local broker's sessions, retained messages and wills across a kill -9", () => {
  let hub: HubBroker
  let recorder: HubRecorder
  let gateway: GatewayProcess
  const peers: Peer[] = []
  const track = (p: Peer): Peer => (peers.push(p), p)

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [away, dying] } })
    await hub.start()
    recorder = await hub.subscribeAll(`upload_data/${P}/#`, { clientId: 'hub-recorder-broker-persistence' })
    gateway = new GatewayProcess({ gateway: gw, northbound: { url: hub.url }, devices: [away, dying], log: { level: 'info' } })
    await gateway.start()
  })

  afterAll(async () => {
    await Promise.allSettled(peers.map((p) => p.end()))
    await gateway?.close()
    await hub?.close()
  })

  async function untilOffline(ref: { productId: string; deviceId: string }): Promise<void> {
    const deadline = Date.now() + 10_000
    while ((await gateway.api<{ online: boolean }>('GET', `/api/devices/${ref.productId}/${ref.deviceId}`)).body.online) {
      if (Date.now() > deadline) throw new Error(`${ref.deviceId} still online`)
      await sleep(50)
    }
  }

  it('a persistent-session device gets every QoS 1 message queued for it while away, keeps its subscriptions, and is told its session is present', async () => {
    const clientId = `${P}/${away.deviceId}/persistent`
    const first = track(await Peer.device(gateway.externalUrl, away, { clientId, clean: false }))
    const [granted] = await first.client.subscribeAsync(TAG_FILTER, { qos: 1 })
    expect(granted.qos).toBe(1)
    await first.end()
    await untilOffline(away)

    // Queued while it is away: commands a local tool sends on its command topic and its tag's topic,
    // and a command from the hub (that one waits in the gateway's command queue).
    const tool = track(await Peer.connect(gateway.internalUrl, { clientId: 'local-tool', clean: true }))
    const expected: string[] = []
    for (let i = 0; i < 10; i++) expected.push(`cmd/${P}/${away.deviceId}/setLevel/json/${newMessageId()}`)
    for (let i = 0; i < 5; i++) expected.push(`tags/${P}/night/cmd/dim/json/${newMessageId()}`)
    for (const topic of expected) await tool.client.publishAsync(topic, JSON.stringify({ topic }), { qos: 2 })
    await tool.end()
    const fromHub = `cmd/${P}/${away.deviceId}/fromHub/plain/${newMessageId()}`
    await hub.publishAsHub(fromHub, 'hub')
    expected.push(fromHub)
    const deadline = Date.now() + 10_000
    while (!(await gateway.api<{ commands: { requestId: string }[] }>('GET', `/api/devices/${P}/${away.deviceId}/commands`)).body.commands.some((c) => fromHub.endsWith(c.requestId))) {
      if (Date.now() > deadline) throw new Error('the hub command was not queued')
      await sleep(50)
    }

    await gateway.kill9()
    await gateway.start()
    expect(gateway.logs()).toMatch(/local broker sessions restored from broker\.db: 1 persistent session\(s\), 15 queued message\(s\)/)

    const back = track(await Peer.device(gateway.externalUrl, away, { clientId, clean: false }))
    expect(back.sessionPresent).toBe(true)
    await back.waitFor('every queued message', (ms) => expected.every((t) => ms.some((m) => m.topic === t)))
    for (const m of back.messages) expect(m.qos, m.topic).toBe(1)

    // Its own subscription is still there: a tag command sent now reaches it without a new SUBSCRIBE.
    const later = `tags/${P}/night/cmd/dim/json/${newMessageId()}`
    const tool2 = track(await Peer.connect(gateway.internalUrl, { clientId: 'local-tool-2' }))
    await tool2.client.publishAsync(later, '{}', { qos: 1 })
    await back.waitFor('a tag command sent after the restart', (ms) => ms.some((m) => m.topic === later))
    await Promise.all([tool2.end(), back.end()])
  })

  it('retained messages survive, and the wills of clients connected at the kill are published after the restart: a device’s goes to the hub', async () => {
    const tool = track(await Peer.connect(gateway.internalUrl, { clientId: 'retaining-tool' }))
    await tool.client.publishAsync('site/lamp/config', 'v1', { qos: 2, retain: true })
    await tool.client.publishAsync('site/lamp/gone', 'soon', { qos: 2, retain: true })
    await tool.client.publishAsync('site/lamp/gone', '', { qos: 2, retain: true }) // cleared
    await tool.end()

    const willTopic = `upload_data/${P}/${dying.deviceId}/lastWill/${newMessageId()}`
    track(await Peer.device(gateway.externalUrl, dying, { will: { topic: willTopic, payload: Buffer.from('{"gone":true}'), qos: 1, retain: false } }))
    track(
      await Peer.connect(gateway.internalUrl, { clientId: 'monitor-tool', will: { topic: 'site/monitor/status', payload: Buffer.from('offline'), qos: 1, retain: true } }),
    )

    await gateway.kill9()
    await gateway.start()

    const got = await recorder.waitFor((m) => m.topic === willTopic, 15_000, "the device's will at the hub")
    expect(got.payload.toString()).toBe('{"gone":true}')

    const reader = track(await Peer.connect(gateway.internalUrl, { clientId: 'reader' }))
    await reader.client.subscribeAsync('site/#', { qos: 1 })
    await reader.waitFor('the retained messages', (ms) => ms.some((m) => m.topic === 'site/lamp/config') && ms.some((m) => m.topic === 'site/monitor/status'))
    const byTopic = new Map(reader.messages.map((m) => [m.topic, m.payload.toString()]))
    expect(byTopic.get('site/lamp/config')).toBe('v1')
    expect(byTopic.get('site/monitor/status')).toBe('offline')
    expect(byTopic.has('site/lamp/gone')).toBe(false)
    await reader.end()
  })

  it('a graceful stop leaves no will for the next start to publish again', async () => {
    track(await Peer.connect(gateway.internalUrl, { clientId: 'stopping-tool', will: { topic: 'site/stopping/status', payload: Buffer.from('offline'), qos: 1, retain: false } }))
    expect(await gateway.stop()).toBe(0)
    await gateway.start()
    const restored = gateway.logs().split('\n').filter((l) => l.includes('local broker sessions restored from broker.db'))
    expect(restored.at(-1)).toMatch(/, 0 will\(s\) of clients connected when the gateway last stopped published/)
  })
})
