// The moments right after a device's CONNACK (issue: "a device that has just connected misses what
// the hub sends in the first moments after its CONNACK"). A device that holds a CONNACK must get
// every command, RPC and internal message sent to it from then on, in the order sent (or have it
// queued as for an offline device): nothing may be dropped because its session on the local broker
// is still being set up, and an internal message may not overtake a command sent before it.
//
// Real peers: the gateway process, Mosquitto as the hub's broker, one raw MQTT.js client as the
// hub's server side (it publishes in the same event-loop turn as what it reacts to), MQTT.js devices
// that behave as the SDK on the wire: no subscriptions of their own to cmd/rpc (the gateway's broker
// makes them server-side), `get .../$shadow` then `$tags` as the first packets after the CONNACK,
// RPCs answered at once.
//
// Where the window is (aedes 1.2.0): the broker writes the CONNACK, sends what it queued for a
// persistent session, then emits clientReady; the gateway's server-side subscribe completes a
// setImmediate after that, and only then does the gateway count the device as online. What the hub
// sends that the gateway reads in between is handled as for a device that is not there. Nothing the
// device sends reaches the hub inside that window (an uplink goes through the outbox's group commit
// first), so the way in is what a business system does: act the moment the device says
// "connected", i.e. on the CONNACK. For a clean session the window is about a millisecond, so one
// device at a time loses the race only now and then (a round in four or so on a 2-core machine);
// many devices at once (a site back from a power cut) lose it more often; a device whose persistent
// session has queued messages to drain loses it every time (aedes writes them out, one setImmediate
// each, before clientReady).
import { randomBytes } from 'node:crypto'
import type { Socket } from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { newMessageId } from '../helpers/device.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HUB_PASSWORD, HUB_USERNAME, HubBroker } from '../helpers/hub-broker.js'
import { metricValue } from '../helpers/metrics.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
// The gateway's client id at the hub (northbound.clientId default), as Mosquitto's log names it.
const GW_CLIENT_ID = `${gw.productId}/${gw.deviceId}/edge`
const P = 'lamp'
const ids = (prefix: string, n: number): string[] => Array.from({ length: n }, (_, i) => `${prefix}-${i}`)
// Each device is used by one case only, and (but for the persistent sessions) connects once: its
// secret is checked with scrypt, as for every device after a gateway restart.
const ONE_BY_ONE = ids('alone', 12)
const HERD = ids('herd', 20)
const PERSISTENT = ids('persistent', 2)
const ON_SHADOW_GET = ids('on-get', 2)
const ON_CONNECTION = ids('on-conn', 2)
const ORDER = ids('order', 5)
const children = [...ONE_BY_ONE, ...HERD, ...PERSISTENT, ...ON_SHADOW_GET, ...ON_CONNECTION, ...ORDER].map((deviceId) => ({
  productId: P,
  deviceId,
  secret: `secret-${deviceId}`,
}))
// Tag commands queued for a persistent session while its device is away.
const QUEUED = 200

type Kind = '$update_shadow' | 'rpc' | 'cmd'
// What the hub sends a device (PROTOCOL.md "Down", "Internal data requests", "QoS").
const QOS: Record<Kind, 0 | 1> = { $update_shadow: 0, rpc: 1, cmd: 1 }
const BODY: Record<Kind, string> = {
  $update_shadow: JSON.stringify({ state: { desired: { lights: 'on' } }, metadata: {}, version: 2, timestamp: 1_700_000_000 }),
  rpc: '{}',
  cmd: '{"lights":"on"}',
}
function downTopic(kind: Kind, deviceId: string): string {
  const requestId = newMessageId()
  if (kind === '$update_shadow') return `cmd/${P}/${deviceId}/$update_shadow/plain/${requestId}`
  if (kind === 'rpc') return `rpc/${P}/${deviceId}/getState/plain/${requestId}`
  return `cmd/${P}/${deviceId}/setLights/plain/${requestId}`
}
const SHADOW_RPC_CMD: Kind[] = ['$update_shadow', 'rpc', 'cmd']

/** When the hub sends: on the device's CONNACK, on its `$shadow` request, on its `$connection` upload. */
type Trigger = 'connack' | 'shadow-get' | 'connection'

interface Round {
  deviceId: string
  sent: string[]
  /** What the device received of `sent`, in arrival order. */
  got: string[]
}

/** '' when the device got exactly what was sent, in order; otherwise what went wrong. */
function problem(r: Round): string {
  const name = (t: string): string => {
    const l = t.split('/')
    return `${l[0]} ${l[3]}`
  }
  const missing = r.sent.filter((t) => !r.got.includes(t))
  if (missing.length) return `${r.deviceId}: never got ${missing.map(name).join(', ')} (got ${r.got.map(name).join(', ') || 'nothing'})`
  if (r.got.join() !== r.sent.join()) return `${r.deviceId}: got ${r.got.map(name).join(', ')}; sent ${r.sent.map(name).join(', ')}`
  return ''
}

function connectClient(url: string, opts: IClientOptions): MqttClient {
  return mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 10_000, ...opts })
}

function connected(c: MqttClient): Promise<void> {
  return new Promise((resolve, reject) => {
    c.once('connect', () => resolve())
    c.once('error', reject)
  })
}

describe('a device gets everything the hub sends once it holds its CONNACK', () => {
  let hub: HubBroker
  let gateway: GatewayProcess
  let hubClient: MqttClient
  // The hub's server side reacts to a device's uploads through these (by device id).
  const onUpload = new Map<string, (topic: string) => void>()
  const devices: MqttClient[] = []

  /** The hub publishes these at once, back to back, each on the device's own topic. */
  function hubSends(deviceId: string, kinds: Kind[]): string[] {
    return kinds.map((kind) => {
      const topic = downTopic(kind, deviceId)
      hubClient.publish(topic, BODY[kind], { qos: QOS[kind] })
      return topic
    })
  }

  /**
   * Connect a device as the SDK does, let the hub send `kinds` on `trigger`, and return what the
   * device got of them. Everything it receives is kept in `all` (in arrival order).
   */
  async function round(deviceId: string, kinds: Kind[], trigger: Trigger, opts: IClientOptions = {}, all: string[] = []): Promise<Round> {
    let sent: string[] | undefined
    let fired!: () => void
    const hubFired = new Promise<void>((r) => (fired = r))
    const fire = (): void => {
      if (sent) return
      sent = hubSends(deviceId, kinds)
      fired()
    }
    if (trigger === 'shadow-get') onUpload.set(deviceId, (t) => t.startsWith(`get/${P}/${deviceId}/$shadow/`) && fire())
    if (trigger === 'connection') onUpload.set(deviceId, (t) => t.startsWith(`upload_data/${P}/${deviceId}/$connection/`) && fire())

    const client = connectClient(gateway.externalUrl, {
      username: `${P}/${deviceId}`,
      password: `secret-${deviceId}`,
      clientId: `${P}/${deviceId}/${randomBytes(4).toString('hex')}`,
      clean: true,
      ...opts,
    })
    devices.push(client)
    // The earliest moment the device holds its CONNACK: as it is parsed (MQTT.js emits 'connect' a
    // little later). A business system told "connected" by the device acts then at the earliest.
    client.on('packetreceive', (packet) => {
      if (trigger === 'connack' && packet.cmd === 'connack' && packet.returnCode === 0) fire()
    })
    client.on('message', (topic) => {
      all.push(topic)
      const [kind, , , name, , requestId] = topic.split('/')
      if (kind === 'rpc') client.publish(`rpc_resp/${P}/${deviceId}/${name}/${requestId}/${newMessageId()}`, '{"ok":true}', { qos: 1 })
    })
    client.on('connect', () => {
      ;(client.stream as Socket).setNoDelay?.(true)
      // The SDK's first packets after the CONNACK.
      client.publish(`get/${P}/${deviceId}/$shadow/${newMessageId()}`, '', { qos: 1 })
      client.publish(`get/${P}/${deviceId}/$tags/${newMessageId()}`, '{"tags_version":0}', { qos: 1 })
    })
    await connected(client)
    await hubFired
    onUpload.delete(deviceId)

    // Everything is in once the last message sent is (it is delivered last, or the order is wrong
    // anyway); a moment more shows what still comes late, out of order.
    const wanted = sent!
    const last = wanted.at(-1)!
    const deadline = Date.now() + 3_000
    while (Date.now() < deadline && !all.includes(last)) await sleep(10)
    await sleep(100)
    await client.endAsync()
    return { deviceId, sent: wanted, got: all.filter((t) => wanted.includes(t)) }
  }

  async function oneByOne(deviceIds: string[], kinds: Kind[], trigger: Trigger): Promise<string[]> {
    const problems: string[] = []
    for (const d of deviceIds) problems.push(problem(await round(d, kinds, trigger)))
    return problems.filter(Boolean)
  }

  async function deliveredCount(): Promise<number> {
    const res = await gateway.api<string>('GET', '/metrics')
    return metricValue(res.body, 'iothub_edge_downlinks_total', { outcome: 'delivered' })
  }

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children } })
    await hub.start()
    hubClient = connectClient(hub.url, { username: HUB_USERNAME, password: HUB_PASSWORD, clientId: `hub-server-${randomBytes(4).toString('hex')}` })
    await connected(hubClient)
    ;(hubClient.stream as Socket).setNoDelay?.(true)
    let linkUp!: () => void
    const gatewayStatus = new Promise<void>((r) => (linkUp = r))
    hubClient.on('message', (topic) => {
      if (topic.startsWith(`update_status/${gw.productId}/${gw.deviceId}/`)) linkUp()
      onUpload.get(topic.split('/')[2])?.(topic)
    })
    await hubClient.subscribeAsync([`get/${P}/+/+/+`, `upload_data/${P}/+/$connection/+`, `update_status/${gw.productId}/${gw.deviceId}/+`], { qos: 1 })
    gateway = new GatewayProcess({ gateway: gw, northbound: { url: hub.url }, devices: children, log: { level: 'info' } })
    await gateway.start()
    // The gateway's status report follows its command subscriptions on the same connection.
    await gatewayStatus
  })

  afterEach(async ({ task }) => {
    onUpload.clear()
    await Promise.allSettled(devices.splice(0).map((d) => d.endAsync(true)))
    if (task.result?.state === 'fail') console.log(gateway.failure(`output after "${task.name}" failed`).message)
  })

  afterAll(async () => {
    await hubClient?.endAsync(true)
    await gateway?.close()
    await hub?.close()
  })

  it('the hub sends $update_shadow, an RPC and a command the moment a device holds its CONNACK: it gets all three, in order', async () => {
    expect(await oneByOne(ONE_BY_ONE, SHADOW_RPC_CMD, 'connack')).toEqual([])
  })

  it('many devices connect at once (a site back from a power cut), the hub sends to each at its CONNACK: each gets all three, in order', async () => {
    const rounds = await Promise.all(HERD.map((d) => round(d, SHADOW_RPC_CMD, 'connack')))
    expect(rounds.map(problem).filter(Boolean)).toEqual([])
  })

  it(`a device back to a persistent session with ${QUEUED} tag commands queued: what the hub sends at its CONNACK arrives too, after them, in order`, async () => {
    const problems: string[] = []
    for (const deviceId of PERSISTENT) {
      const tag = `t-${deviceId}`
      const filter = `tags/${P}/${tag}/cmd/+/+/+/#`
      const session: IClientOptions = { clientId: `${P}/${deviceId}/sdk`, clean: false }
      // First visit: the device subscribes its tag; the gateway takes the filter up on the hub.
      const first = connectClient(gateway.externalUrl, { username: `${P}/${deviceId}`, password: `secret-${deviceId}`, ...session })
      devices.push(first)
      await connected(first)
      await first.subscribeAsync(filter, { qos: 1 })
      const deadline = Date.now() + 10_000
      while (!(await hub.subscriptionsOf(GW_CLIENT_ID)).has(filter)) {
        if (Date.now() > deadline) throw gateway.failure(`the gateway did not subscribe ${filter} on the hub`)
        await sleep(20)
      }
      await first.endAsync()

      // Away: tag commands arrive; the local broker keeps them for the session.
      const before = await deliveredCount()
      const queued = Array.from({ length: QUEUED }, () => `tags/${P}/${tag}/cmd/ping/plain/${newMessageId()}`)
      await Promise.all(queued.map((t, i) => hubClient.publishAsync(t, `{"i":${i}}`, { qos: 1 })))
      while ((await deliveredCount()) < before + QUEUED) {
        if (Date.now() > deadline) throw gateway.failure(`the gateway did not relay the ${QUEUED} tag commands`)
        await sleep(20)
      }

      // Back: the broker hands over the queue; the hub sends at the CONNACK.
      const all: string[] = []
      const r = await round(deviceId, SHADOW_RPC_CMD, 'connack', session, all)
      problems.push(problem(r))
      const tagCommands = all.filter((t) => t.startsWith('tags/'))
      if (tagCommands.join() !== queued.join()) problems.push(`${deviceId}: got ${tagCommands.length} of the ${QUEUED} queued tag commands, or out of order`)
      const lastTag = all.indexOf(queued.at(-1)!)
      if (r.got.some((t) => all.indexOf(t) < lastTag)) problems.push(`${deviceId}: got what the hub sent after its CONNACK before what was queued for it`)
    }
    expect(problems.filter(Boolean)).toEqual([])
  })

  it("the hub answers the device's on-connect `$shadow` request at once: it gets all three, in order", async () => {
    expect(await oneByOne(ON_SHADOW_GET, SHADOW_RPC_CMD, 'shadow-get')).toEqual([])
  })

  it("the hub reacts at once to the device's `$connection` upload: it gets all three, in order", async () => {
    expect(await oneByOne(ON_CONNECTION, SHADOW_RPC_CMD, 'connection')).toEqual([])
  })

  it('the hub answers `$shadow` with a command, an RPC, then $update_shadow: the internal message does not overtake them', async () => {
    expect(await oneByOne(ORDER, ['cmd', 'rpc', '$update_shadow'], 'shadow-get')).toEqual([])
  })
})
