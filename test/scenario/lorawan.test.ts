// LoRaWAN devices behind ChirpStack v4 (issue 8), end to end: a real Mosquitto (MQTT 5) stands in
// for ChirpStack's broker and ChirpstackSim publishes ChirpStack's own events on it (its documented
// JSON examples, and protobuf built with @chirpstack/chirpstack-api's classes); the gateway runs in
// this process (the real Gateway, SQLite in a temp dir) with the LoRaWAN adapter configured under
// `lorawan:`; the hub is Mosquitto with the hub's ACL plus the hub simulator.
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseConfig } from '../../src/config.js'
import { Gateway } from '../../src/gateway.js'
import { tagFilter } from '../../src/core/hub-topics.js'
import { HubSim, type HubUpload } from '../../src/tools/hub-sim.js'
import { HUB_PASSWORD, HUB_USERNAME, HubBroker } from '../helpers/hub-broker.js'
import { APP_ID, ChirpstackApiServer, ChirpstackBroker, ChirpstackSim, example, type DeviceInfoArgs } from '../helpers/chirpstack.js'
import { metricValue } from '../helpers/metrics.js'
import { LorawanAdapter } from '../../src/southbound/lorawan/lorawan-adapter.js'
import type { LorawanConfig } from '../../src/southbound/lorawan/schema.js'
import { ContractCore } from '../contract/contract-core.js'
import { makeCa, type TestPki } from '../helpers/pki.js'

const gwLogin = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const GW_CLIENT_ID = `${gwLogin.productId}/${gwLogin.deviceId}/edge`
const API_TOKEN = 'lorawan-test-token'
const P = 'sensors'

// room-101 is the device of ChirpStack's example events (devEui 0101010101010101).
const A = { devEui: '0101010101010101', productId: P, deviceId: 'room-101' }
const B = { devEui: '0202020202020202', productId: P, deviceId: 'room-102' }
const C = { devEui: '0303030303030303', productId: P, deviceId: 'room-103' }
const CLASS_C = { devEui: '0404040404040404', productId: P, deviceId: 'valve-104' }
const UNKNOWN: DeviceInfoArgs = { devEui: 'ffffffffffffffff' }
const ref = (d: { productId: string; deviceId: string }): { productId: string; deviceId: string } => ({ productId: d.productId, deviceId: d.deviceId })

const json = (u: HubUpload): Record<string, unknown> => JSON.parse(u.payload.toString('utf8')) as Record<string, unknown>

async function until<T>(check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs: number, what: () => string): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await check()
    if (v !== undefined && v !== false) return v
    if (Date.now() > deadline) throw new Error(`${what()} (waited ${timeoutMs} ms)`)
    await sleep(25)
  }
}

interface Rig {
  hub: HubBroker
  sim: HubSim
  broker: ChirpstackBroker
  cs: ChirpstackSim
  gw: Gateway
  dataDir: string
  metrics(): Promise<string>
  /** GET one of the gateway's API routes with the token; the status and the JSON body. */
  api<T>(p: string): Promise<{ status: number; body: T }>
  /** Stop the gateway (its data folder and ChirpStack's session stay); start() brings it back. */
  stopGateway(): Promise<void>
  startGateway(): Promise<void>
  close(): Promise<void>
}

interface RigOptions {
  broker?: ConstructorParameters<typeof ChirpstackBroker>[0]
  /** ChirpStack's own login at its broker. */
  chirpstackLogin?: { username: string; password: string }
  /** lorawan.chirpstack.mqtt beyond the plain listener's url and a client id of the rig's. */
  mqtt?: (broker: ChirpstackBroker) => Record<string, unknown>
  /** Wait for the adapter's connection to ChirpStack's broker before the tests (default true). */
  connected?: boolean
}

/** Hub, ChirpStack's broker and a gateway with the LoRaWAN adapter in the given encoding. */
async function rig(encoding: 'json' | 'protobuf', lorawan: Record<string, unknown>, children: { productId: string; deviceId: string }[], opts: RigOptions = {}): Promise<Rig> {
  const hub = new HubBroker({ devices: [], gateway: { ...gwLogin, children } })
  await hub.start()
  const sim = new HubSim({ url: hub.url, username: HUB_USERNAME, password: HUB_PASSWORD })
  await sim.start()
  const broker = new ChirpstackBroker(opts.broker)
  await broker.start()
  const cs = new ChirpstackSim(broker.url, encoding, opts.chirpstackLogin)
  await cs.start()
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'lorawan-'))
  const mqttCfg = { url: broker.url, clientId: `gw-lorawan-${encoding}-${path.basename(dataDir)}`, ...opts.mqtt?.(broker) }
  const cfg = parseConfig({
    gateway: { ...gwLogin, dataDir },
    broker: { listeners: [{ host: '127.0.0.1', port: 0, zone: 'external' }] },
    http: { host: '127.0.0.1', port: 0, apiToken: API_TOKEN },
    northbound: { url: hub.url, mode: 'gateway' },
    lorawan: { ...lorawan, chirpstack: { ...(lorawan.chirpstack as object), mqtt: mqttCfg, encoding } },
    log: { level: process.env.TEST_GATEWAY_LOG ?? 'silent' },
  })
  let gw: Gateway | undefined
  const metrics = async (): Promise<string> => (await fetch(`http://127.0.0.1:${gw!.web.port}/metrics`)).text()
  const startGateway = async (): Promise<void> => {
    gw = new Gateway(cfg)
    await gw.start()
    await until(() => gw!.bridge.status().connected, 15_000, () => 'the hub link did not come up')
    // The adapter is connected and subscribed once its connection gauge says so.
    if (opts.connected !== false) {
      await until(async () => metricValue(await metrics(), 'iothub_edge_lorawan_broker_connected') === 1, 15_000, () => 'the adapter did not connect to ChirpStack\'s broker')
    }
  }
  await startGateway()
  return {
    hub,
    sim,
    broker,
    cs,
    get gw() {
      return gw!
    },
    dataDir,
    metrics,
    api: async <T>(p: string) => {
      const res = await fetch(`http://127.0.0.1:${gw!.web.port}${p}`, { headers: { authorization: `Bearer ${API_TOKEN}` } })
      return { status: res.status, body: (await res.json()) as T }
    },
    stopGateway: async () => {
      await gw?.stop()
      gw = undefined
    },
    startGateway,
    close: async () => {
      await gw?.stop()
      await cs.stop()
      await sim.stop()
      await broker.close()
      await hub.close()
      await rm(dataDir, { recursive: true, force: true })
    },
  }
}

const deviceConfig = {
  devices: [
    {
      ...A,
      dataTypes: { '1': 'telemetry' },
      commands: { open_valve: { fPort: 10, confirmed: true }, beep: { fPort: 11 } },
      shadow: { fPort: 20, confirmed: true, reportedKeys: ['mode'] },
      tags: ['floor1'],
    },
    { ...B, codec: 'cayenne', tags: ['floor1'] },
    { ...C },
    { ...CLASS_C, commands: { open: { fPort: 5 } } },
  ],
  // Every device of this profile beeps on port 11 unless its own settings say otherwise.
  deviceProfiles: { 'Test device-profile': { commands: { beep: { fPort: 11 } } } },
  statusIntervalSeconds: 3600,
}

describe('LoRaWAN via ChirpStack (JSON events)', () => {
  let r: Rig
  const uploads = (p: (u: HubUpload) => boolean): HubUpload[] => r.sim.received(p)
  const dataOf = (d: { deviceId: string }, name?: string) => (u: HubUpload): boolean =>
    u.parsed.kind === 'upload_data' && u.parsed.deviceId === d.deviceId && (name === undefined || u.parsed.name === name)
  const replyTo = (requestId: string, status?: string) => (u: HubUpload): boolean =>
    (u.parsed.kind === 'cmd_resp' || u.parsed.kind === 'rpc_resp') && u.parsed.requestId === requestId && (status === undefined || json(u).status === status)

  beforeAll(async () => {
    r = await rig('json', deviceConfig, [A, B, C, CLASS_C].map(ref))
  }, 60_000)

  afterAll(async () => {
    await r?.close()
  })

  it('turns ChirpStack\'s documented up event into upload_data, $connection and update_status with the radio facts', async () => {
    // The example as ChirpStack documents it: fPort 1, data "qg==", no `object`, one gateway.
    await r.cs.publishRaw(A.devEui, 'up', JSON.stringify(example('up')))
    const up = await r.sim.waitFor(dataOf(A, 'telemetry'), 10_000, 'upload_data for the example uplink')
    expect(json(up)).toEqual({ raw: 'qg==', fPort: 1 })
    expect(up.parsed.messageId).toMatch(/^[0-9a-f]{24}$/)
    const conn = await r.sim.waitFor(dataOf(A, '$connection'), 10_000, '$connection for room-101')
    expect(json(conn)).toMatchObject({ connected: true, transport: 'lorawan' })
    const status = await r.sim.waitFor((u) => u.parsed.kind === 'update_status' && u.parsed.deviceId === A.deviceId, 10_000, 'update_status for room-101')
    expect(json(status)).toMatchObject({ transport: 'lorawan', devEui: A.devEui, rssi: -36, snr: 10.5, gateways: 1, frequency: 867100000, dr: 1 })
    // The child exists in the registry with its configured tags.
    const dev = (await (await fetch(`http://127.0.0.1:${r.gw.web.port}/api/devices/${P}/${A.deviceId}`, { headers: { authorization: `Bearer ${API_TOKEN}` } })).json()) as { device: { tags: string[] } }
    expect(dev.device.tags).toEqual(['floor1'])
  })

  it('sends ChirpStack\'s decoded `object` as it is, with the best RSSI/SNR of several gateways', async () => {
    const id = r.cs.nextId()
    await r.cs.publish('up', { devEui: A.devEui }, {
      deduplicationId: id, time: new Date().toISOString(), fPort: 1, fCnt: 7, dr: 5, data: 'AQI=', adr: false, confirmed: false,
      object: { temperature: 21.5, humidity: 40.0, mode: 'comfort' },
      rxInfo: [{ gatewayId: 'aa', rssi: -110, snr: -3.5 }, { gatewayId: 'bb', rssi: -70, snr: 7.25 }],
    })
    const up = await r.sim.waitFor((u) => dataOf(A, 'telemetry')(u) && json(u).temperature === 21.5, 10_000, 'the decoded uplink')
    expect(json(up)).toEqual({ temperature: 21.5, humidity: 40, mode: 'comfort' })
    // `mode` is a shadow-reported key of room-101: the core reports it to the shadow.
    const reported = await r.sim.waitFor((u) => dataOf(A, '$shadow_reported')(u), 10_000, '$shadow_reported for mode')
    expect(json(reported)).toMatchObject({ state: { reported: { mode: 'comfort' } } })
    const diag = await (await fetch(`http://127.0.0.1:${r.gw.web.port}/api/adapters/lorawan/devices`, { headers: { authorization: `Bearer ${API_TOKEN}` } })).json() as {
      connected: boolean; devices: { devEui: string; radio?: { rssi: number; snr: number; gateways: number; fCnt: number } }[]
    }
    expect(diag.connected).toBe(true)
    expect(diag.devices.find((d) => d.devEui === A.devEui)?.radio).toMatchObject({ rssi: -70, snr: 7.25, gateways: 2, fCnt: 7 })
  })

  it('decodes Cayenne LPP for a device configured with that codec, and sends undecodable bytes raw', async () => {
    // Channel 3 temperature 27.2 °C, channel 5 humidity 41.5 %, channel 7 digital input 1.
    const lpp = Buffer.from('03670110056853070001', 'hex')
    await r.cs.publish('up', { devEui: B.devEui }, { deduplicationId: r.cs.nextId(), fPort: 2, fCnt: 1, data: lpp.toString('base64') })
    const up = await r.sim.waitFor(dataOf(B, 'fport_2'), 10_000, 'the Cayenne uplink')
    expect(json(up)).toEqual({ temperature_3: 27.2, humidity_5: 41.5, digital_in_7: 1 })

    // A truncated frame: counted as a decode error, and the bytes still reach the hub.
    const broken = Buffer.from('036701', 'hex')
    await r.cs.publish('up', { devEui: B.devEui }, { deduplicationId: r.cs.nextId(), fPort: 3, fCnt: 2, data: broken.toString('base64') })
    const raw = await r.sim.waitFor(dataOf(B, 'fport_3'), 10_000, 'the undecodable uplink')
    expect(json(raw)).toEqual({ raw: broken.toString('base64'), fPort: 3 })
    expect(metricValue(await r.metrics(), 'iothub_edge_lorawan_decode_errors_total', { codec: 'cayenne' })).toBe(1)
  })

  it('drops a repeated deduplicationId (and a status sharing the id of an up is not a repeat)', async () => {
    const id = r.cs.nextId()
    const event = { deduplicationId: id, fPort: 9, fCnt: 3, data: Buffer.from('dup').toString('base64') }
    await r.cs.publish('up', { devEui: C.devEui }, event)
    await r.cs.publish('up', { devEui: C.devEui }, event)
    await r.cs.publish('status', { devEui: C.devEui }, { deduplicationId: id, margin: 7, batteryLevel: 55.5 })
    await r.cs.publish('up', { devEui: C.devEui }, { deduplicationId: r.cs.nextId(), fPort: 9, fCnt: 4, data: Buffer.from('marker').toString('base64') })
    await r.sim.waitFor((u) => dataOf(C, 'fport_9')(u) && json(u).raw === Buffer.from('marker').toString('base64'), 10_000, 'the marker uplink')
    const copies = uploads((u) => dataOf(C, 'fport_9')(u) && json(u).raw === Buffer.from('dup').toString('base64'))
    expect(copies).toHaveLength(1)
    expect(metricValue(await r.metrics(), 'iothub_edge_lorawan_duplicate_events_total', { type: 'up' })).toBe(1)
    const status = await r.sim.waitFor((u) => u.parsed.kind === 'update_status' && u.parsed.deviceId === C.deviceId && json(u).battery === 55.5, 10_000, 'the battery status')
    expect(json(status)).toMatchObject({ battery: 55.5, margin: 7, external_power: false })
  })

  it('counts and drops unknown devEuis, malformed JSON and v3-shaped events, and carries on', async () => {
    await r.cs.publish('up', UNKNOWN, { deduplicationId: r.cs.nextId(), fPort: 1, data: 'AA==' })
    await r.cs.publishRaw(C.devEui, 'up', '{"deduplicationId": "x", "deviceInfo": ')
    await r.cs.publishRaw(C.devEui, 'up', JSON.stringify({ applicationID: '1', devEUI: C.devEui, data: 'AA==' }))
    await r.cs.publishRaw(C.devEui, 'up', JSON.stringify({ ...example('up'), data: 'not base64!' }))
    await r.cs.publish('up', { devEui: C.devEui }, { deduplicationId: r.cs.nextId(), fPort: 8, data: Buffer.from('after').toString('base64') })
    await r.sim.waitFor(dataOf(C, 'fport_8'), 10_000, 'the uplink after the bad ones')
    const m = await r.metrics()
    expect(metricValue(m, 'iothub_edge_lorawan_unknown_device_events_total')).toBe(1)
    expect(metricValue(m, 'iothub_edge_lorawan_bad_events_total', { reason: 'malformed_json' })).toBe(1)
    expect(metricValue(m, 'iothub_edge_lorawan_bad_events_total', { reason: 'bad_event' })).toBe(2)
    expect(uploads((u) => u.parsed.deviceId === UNKNOWN.devEui)).toEqual([])
  })

  it('turns a command into a downlink whose txack and ack become its replies, with the command\'s expiry', async () => {
    const expiresAt = Math.floor(Date.now() / 1000) + 600
    const rid = await r.sim.command(P, A.deviceId, 'open_valve', Buffer.from([1, 2, 3]), { encoding: 'base64', expiresAt })
    const down = await r.cs.waitForDownlink((d) => d.devEui === A.devEui && d.fPort === 10, 10_000, 'the open_valve downlink')
    expect(down).toMatchObject({ topic: `application/${APP_ID}/device/${A.devEui}/command/down`, confirmed: true, data: Buffer.from([1, 2, 3]) })
    expect(down.id).toMatch(/^[0-9a-f-]{36}$/)
    expect(Date.parse(down.expiresAt!)).toBe(expiresAt * 1000)
    // Merely queued at ChirpStack: no reply yet.
    expect(uploads(replyTo(rid))).toEqual([])

    await r.cs.publish('txack', { devEui: A.devEui }, { ...example('txack'), queueItemId: down.id })
    expect(json(await r.sim.waitFor(replyTo(rid, 'sent'), 10_000, 'cmd_resp sent'))).toEqual({ status: 'sent' })
    await r.cs.publish('ack', { devEui: A.devEui }, { ...example('ack'), deduplicationId: r.cs.nextId(), queueItemId: down.id, acknowledged: true })
    const acked = await r.sim.waitFor(replyTo(rid, 'acknowledged'), 10_000, 'cmd_resp acknowledged')
    expect(acked.parsed).toMatchObject({ kind: 'cmd_resp', productId: P, deviceId: A.deviceId, name: 'open_valve' })

    // A confirmed downlink the device never acknowledged.
    const rid2 = await r.sim.command(P, A.deviceId, 'open_valve', 'AQ==', { encoding: 'base64' })
    const down2 = await r.cs.waitForDownlink((d) => d.id !== down.id && d.fPort === 10, 10_000, 'the second downlink')
    expect(down2.expiresAt).toBeUndefined()
    await r.cs.publish('ack', { devEui: A.devEui }, { deduplicationId: r.cs.nextId(), queueItemId: down2.id, acknowledged: false })
    await r.sim.waitFor(replyTo(rid2, 'not_acknowledged'), 10_000, 'cmd_resp not_acknowledged')
  })

  it('replies expired or failed when ChirpStack logs the queue item, and failed for a command without an fPort', async () => {
    const rid = await r.sim.command(P, A.deviceId, 'beep', 'on')
    const down = await r.cs.waitForDownlink((d) => d.fPort === 11 && d.data.toString() === 'on', 10_000, 'the beep downlink')
    expect(down.confirmed).toBe(false)
    await r.cs.publish('log', { devEui: A.devEui }, { level: 'WARNING', code: 'EXPIRED', description: 'Queue item has expired', context: { queue_item_id: down.id } })
    expect(json(await r.sim.waitFor(replyTo(rid, 'expired'), 10_000, 'cmd_resp expired'))).toEqual({ status: 'expired' })

    const rid2 = await r.sim.command(P, A.deviceId, 'beep', 'x'.repeat(300))
    const down2 = await r.cs.waitForDownlink((d) => d.fPort === 11 && d.data.length === 300, 10_000, 'the oversized downlink')
    await r.cs.publish('log', { devEui: A.devEui }, { level: 'ERROR', code: 'DOWNLINK_PAYLOAD_SIZE', description: 'Payload exceeds max size', context: { queue_item_id: down2.id } })
    const failed = json(await r.sim.waitFor(replyTo(rid2, 'failed'), 10_000, 'cmd_resp failed'))
    expect(failed.reason).toContain('DOWNLINK_PAYLOAD_SIZE')

    const rid3 = await r.sim.command(P, A.deviceId, 'reboot', 'now')
    const refused = json(await r.sim.waitFor(replyTo(rid3, 'failed'), 10_000, 'cmd_resp for an unconfigured command'))
    expect(refused).toMatchObject({ status: 'failed', code: 'no_fport' })
    const m = await r.metrics()
    expect(metricValue(m, 'iothub_edge_lorawan_log_events_total', { code: 'EXPIRED', level: 'WARNING' })).toBe(1)
  })

  it('answers an RPC to a Class A device at once with an error', async () => {
    const reply = await r.sim.rpc(P, A.deviceId, 'read_now', {}, 5_000)
    expect(reply.parsed.kind).toBe('rpc_resp')
    expect(json(reply)).toMatchObject({ status: 'failed', code: 'class_a_rpc' })
    // An uplink with new radio facts since its first update_status, within statusIntervalSeconds
    // and without a material change: still one (the replies above came after them, in order).
    expect(uploads((u) => u.parsed.kind === 'update_status' && u.parsed.deviceId === A.deviceId)).toHaveLength(1)
  })

  it('applies desired shadow state as one confirmed downlink: $shadow_updated once ChirpStack has it, and the device\'s ack ends it', async () => {
    const from = r.cs.downlinks.length
    // The uplink above reported `mode`, which moved the shadow's version on.
    const version = r.sim.shadowOf(P, A.deviceId).version + 1
    expect(await r.sim.setDesired(P, A.deviceId, { mode: 'eco', setpoint: 19 }, version)).toBe(true)
    const down = await r.cs.waitForDownlink((d) => r.cs.downlinks.indexOf(d) >= from && d.fPort === 20, 10_000, 'the shadow downlink')
    expect(JSON.parse(down.data.toString('utf8'))).toEqual({ mode: 'eco', setpoint: 19 })
    expect(down.confirmed).toBe(true)
    const updated = await r.sim.waitFor(dataOf(A, '$shadow_updated'), 10_000, '$shadow_updated')
    expect(json(updated)).toEqual({ state: { desired: null }, version })
    // The device acknowledges the confirmed downlink: its story ends there, with no reply of its own
    // (the core's $update_shadow is never answered as a command).
    const acked = metricValue(await r.metrics(), 'iothub_edge_lorawan_downlinks_total', { result: 'acknowledged' })
    await r.cs.publish('txack', { devEui: A.devEui }, { queueItemId: down.id })
    await r.cs.publish('ack', { devEui: A.devEui }, { deduplicationId: r.cs.nextId(), queueItemId: down.id, acknowledged: true })
    await until(async () => metricValue(await r.metrics(), 'iothub_edge_lorawan_downlinks_total', { result: 'acknowledged' }) === acked + 1, 10_000, () => 'the shadow downlink\'s ack was not taken')
    const view = (await r.api<{ device: { downlinks: { id: string }[] } }>(`/api/adapters/lorawan/devices/${P}/${A.deviceId}`)).body.device
    expect(view.downlinks.map((d) => d.id)).not.toContain(down.id)
    expect(uploads((u) => u.parsed.kind === 'cmd_resp' && u.parsed.name === '$update_shadow')).toEqual([])
  })

  it('sends a tag command to every LoRaWAN child carrying the tag', async () => {
    // B becomes reachable (heard from) above; the gateway holds floor1's filter on the hub for them.
    await until(async () => (await r.hub.subscriptionsOf(GW_CLIENT_ID)).has(tagFilter(P, 'floor1')), 10_000, () => 'the gateway does not hold the floor1 tag filter')
    const from = r.cs.downlinks.length
    await r.sim.tagCommand(P, 'floor1', 'beep', 'tag!')
    const got = await until(() => {
      const d = r.cs.downlinks.slice(from).filter((x) => x.fPort === 11 && x.data.toString() === 'tag!')
      return d.length >= 2 ? d : undefined
    }, 10_000, () => `tag downlinks: ${JSON.stringify(r.cs.downlinks.slice(from).map((d) => d.devEui))}`)
    expect(got.map((d) => d.devEui).sort()).toEqual([A.devEui, B.devEui])
  })

  it('keeps uplinks that arrive while the hub is down and delivers all of them once it is back', async () => {
    await r.hub.stop()
    await until(() => !r.gw.bridge.status().connected, 15_000, () => 'the hub link did not notice the outage')
    const before = metricValue(await r.metrics(), 'iothub_edge_lorawan_events_total', { type: 'up' })
    const N = 30
    for (let i = 0; i < N; i++) {
      await r.cs.publish('up', { devEui: C.devEui }, { deduplicationId: r.cs.nextId(), fPort: 30, fCnt: 100 + i, data: Buffer.from(`outage-${i}`).toString('base64') })
    }
    await until(async () => metricValue(await r.metrics(), 'iothub_edge_lorawan_events_total', { type: 'up' }) >= before + N, 15_000, () => 'the gateway did not take in the uplinks')
    await r.hub.start()
    const got = await until(() => {
      const u = uploads(dataOf(C, 'fport_30'))
      return u.length >= N ? u : undefined
    }, 30_000, () => `only ${uploads(dataOf(C, 'fport_30')).length} of ${N} outage uplinks reached the hub`)
    expect(got.map((u) => Buffer.from(json(u).raw as string, 'base64').toString())).toEqual(Array.from({ length: N }, (_, i) => `outage-${i}`))
  }, 60_000)
})

describe('LoRaWAN via ChirpStack (protobuf events)', () => {
  let r: Rig
  beforeAll(async () => {
    r = await rig('protobuf', { ...deviceConfig, autoRegister: { productIdFrom: 'applicationName' } }, [...[A, B, C, CLASS_C].map(ref), { productId: 'Plant7', deviceId: 'abcdefabcdefabcd' }])
  }, 60_000)

  afterAll(async () => {
    await r?.close()
  })

  it('decodes protobuf events built with the package\'s classes (every field set), and counts a truncated one', async () => {
    const event = {
      deduplicationId: r.cs.nextId(), time: new Date().toISOString(), fPort: 1, fCnt: 12, dr: 3, adr: true, confirmed: true,
      data: 'AQI=', object: { temperature: 9.2, ok: true }, rxInfo: [{ gatewayId: '0016c001f153a14c', rssi: -90, snr: 9.2 }], txInfo: { frequency: 868300000 },
    }
    const bytes = r.cs.encode('up', { devEui: A.devEui }, event)
    await r.cs.publishRaw(A.devEui, 'up', bytes.subarray(0, bytes.length - 7))
    await r.cs.publishRaw(A.devEui, 'up', bytes)
    const up = await r.sim.waitFor((u) => u.parsed.kind === 'upload_data' && u.parsed.deviceId === A.deviceId && u.parsed.name === 'telemetry', 10_000, 'the protobuf uplink')
    expect(JSON.parse(up.payload.toString())).toEqual({ temperature: 9.2, ok: true })
    const status = await r.sim.waitFor((u) => u.parsed.kind === 'update_status' && u.parsed.deviceId === A.deviceId, 10_000, 'update_status')
    // float32 on the wire: 9.2 comes back as 9.2, not 9.199999809265137.
    expect(JSON.parse(status.payload.toString())).toMatchObject({ rssi: -90, snr: 9.2, fcnt: 12, dr: 3, frequency: 868300000 })
    expect(metricValue(await r.metrics(), 'iothub_edge_lorawan_bad_events_total', { reason: 'malformed_protobuf' })).toBe(1)
  })

  it('auto-registers an unknown devEui under its application name with ChirpStack\'s tags, and sends protobuf downlinks', async () => {
    const dev: DeviceInfoArgs = { devEui: 'abcdefabcdefabcd', applicationName: 'Plant 7!', deviceClass: 'CLASS_C', tags: { floor: '2', zone: 'east wing' } }
    await r.cs.publish('join', dev, { deduplicationId: r.cs.nextId(), devAddr: '01020304' })
    const conn = await r.sim.waitFor((u) => u.parsed.deviceId === dev.devEui && u.parsed.name === '$connection', 10_000, '$connection of the new child')
    expect(conn.parsed.productId).toBe('Plant7')
    const res = await fetch(`http://127.0.0.1:${r.gw.web.port}/api/devices/Plant7/${dev.devEui}`, { headers: { authorization: `Bearer ${API_TOKEN}` } })
    expect(res.status).toBe(200)
    expect(((await res.json()) as { device: { tags: string[] } }).device.tags.sort()).toEqual(['floor_2', 'zone_east_wing'])

    // Its device profile's commands apply to it: beep goes down on port 11, in protobuf.
    const rid = await r.sim.command('Plant7', dev.devEui, 'beep', 'hi')
    const down = await r.cs.waitForDownlink((d) => d.devEui === dev.devEui, 10_000, 'the protobuf downlink')
    expect(down).toMatchObject({ fPort: 11, confirmed: false, data: Buffer.from('hi') })
    await r.cs.publish('txack', dev, { queueItemId: down.id })
    await r.sim.waitFor((u) => u.parsed.kind === 'cmd_resp' && u.parsed.requestId === rid && JSON.parse(u.payload.toString()).status === 'sent', 10_000, 'cmd_resp sent')
  })
})

describe('LoRaWAN JavaScript codecs in the sandbox', () => {
  let r: Rig
  let codecDir: string
  const D = { devEui: '0505050505050505', productId: 'codec', deviceId: 'ttn-style' }
  const THROWS = { devEui: '0606060606060606', productId: 'codec', deviceId: 'throws' }
  const LOOPS = { devEui: '0707070707070707', productId: 'codec', deviceId: 'loops' }
  const HOG = { devEui: '0808080808080808', productId: 'codec', deviceId: 'hog' }
  const ESCAPE = { devEui: '0909090909090909', productId: 'codec', deviceId: 'escape' }
  const codecs: Record<string, string> = {
    // A TTN-style codec as public device repositories ship them.
    'ttn.js': `
      function decodeUplink(input) {
        if (input.fPort !== 2) return { errors: ['unknown fPort ' + input.fPort] }
        var t = (input.bytes[0] << 8 | input.bytes[1]); if (t & 0x8000) t -= 0x10000
        return { data: { temperature: t / 10, humidity: input.bytes[2] / 2 }, warnings: input.bytes[2] > 200 ? ['humidity out of range'] : [] }
      }
      function encodeDownlink(input) { return { bytes: [input.data.level & 0xff], fPort: 15, warnings: [], errors: [] } }`,
    'throws.js': 'function decodeUplink(input) { throw new TypeError("cannot read byte " + input.bytes.length) }',
    'loops.js': 'function decodeUplink(input) { while (true) {} }',
    'hog.js': 'function decodeUplink(input) { var a = []; for (;;) a.push(new Array(1 << 20).fill(input.fPort)) }',
    'escape.js': `
      function decodeUplink(input) {
        var found
        try { found = typeof this.constructor.constructor('return process')() } catch (e) { found = 'error: ' + e.message }
        var req; try { req = typeof require } catch (e) { req = 'error' }
        return { data: { process: found, require: req, globals: Object.getOwnPropertyNames(globalThis).filter(function (k) { return /process|require|fs|fetch|setTimeout/.test(k) }) } }
      }`,
  }
  const dev = (d: typeof D, file: string) => ({ ...d, codec: path.join(codecDir, file) })
  const dataOf = (d: { deviceId: string }) => (u: HubUpload): boolean => u.parsed.kind === 'upload_data' && u.parsed.deviceId === d.deviceId && (u.parsed.name ?? '').startsWith('fport_')

  beforeAll(async () => {
    codecDir = await mkdtemp(path.join(os.tmpdir(), 'lorawan-codecs-'))
    const { writeFile } = await import('node:fs/promises')
    for (const [f, src] of Object.entries(codecs)) await writeFile(path.join(codecDir, f), src)
    r = await rig('json', { devices: [dev(D, 'ttn.js'), dev(THROWS, 'throws.js'), dev(LOOPS, 'loops.js'), dev(HOG, 'hog.js'), dev(ESCAPE, 'escape.js')] }, [D, THROWS, LOOPS, HOG, ESCAPE].map(ref))
  }, 60_000)

  afterAll(async () => {
    await r?.close()
    if (codecDir) await rm(codecDir, { recursive: true, force: true })
  })

  it('decodes with a TTN-style decodeUplink, and sends raw what it reports as errors', async () => {
    await r.cs.publish('up', { devEui: D.devEui }, { deduplicationId: r.cs.nextId(), fPort: 2, data: Buffer.from([0xff, 0x38, 81]).toString('base64') })
    const up = await r.sim.waitFor(dataOf(D), 10_000, 'the decoded uplink')
    expect(JSON.parse(up.payload.toString())).toEqual({ temperature: -20, humidity: 40.5 })
    await r.cs.publish('up', { devEui: D.devEui }, { deduplicationId: r.cs.nextId(), fPort: 9, data: 'AQ==' })
    const raw = await r.sim.waitFor((u) => dataOf(D)(u) && u.parsed.name === 'fport_9', 10_000, 'the uplink the codec refused')
    expect(JSON.parse(raw.payload.toString())).toEqual({ raw: 'AQ==', fPort: 9 })
  })

  it('survives codecs that throw, loop forever, exhaust memory or reach for process: counted, sent raw, the adapter keeps going', async () => {
    const errorsBefore = metricValue(await r.metrics(), 'iothub_edge_lorawan_decode_errors_total', { codec: 'js' })
    for (const d of [THROWS, LOOPS, HOG, ESCAPE]) {
      await r.cs.publish('up', { devEui: d.devEui }, { deduplicationId: r.cs.nextId(), fPort: 3, data: 'AQID' })
    }
    for (const d of [THROWS, LOOPS, HOG]) {
      const up = await r.sim.waitFor(dataOf(d), 20_000, `the uplink of ${d.deviceId}`)
      expect(JSON.parse(up.payload.toString())).toEqual({ raw: 'AQID', fPort: 3 })
    }
    const escape = JSON.parse((await r.sim.waitFor(dataOf(ESCAPE), 10_000, 'the escape attempt')).payload.toString()) as Record<string, unknown>
    expect(escape.process).toMatch(/^error: .*process/)
    expect(escape.require).toBe('undefined')
    expect(escape.globals).toEqual([])
    expect(metricValue(await r.metrics(), 'iothub_edge_lorawan_decode_errors_total', { codec: 'js' })).toBe(errorsBefore + 3)
    // The gateway process is intact and the looping and hungry codecs get a fresh engine next time.
    expect(process.memoryUsage().rss).toBeLessThan(1024 ** 3)
    await r.cs.publish('up', { devEui: HOG.devEui }, { deduplicationId: r.cs.nextId(), fPort: 4, data: 'BA==' })
    await r.cs.publish('up', { devEui: D.devEui }, { deduplicationId: r.cs.nextId(), fPort: 2, data: Buffer.from([0, 215, 90]).toString('base64') })
    const after = await r.sim.waitFor((u) => dataOf(D)(u) && JSON.parse(u.payload.toString()).temperature === 21.5, 20_000, 'a decoded uplink after the failures')
    expect(JSON.parse(after.payload.toString())).toEqual({ temperature: 21.5, humidity: 45 })
  }, 60_000)

  it('encodes desired shadow state with encodeDownlink', async () => {
    const from = r.cs.downlinks.length
    expect(await r.sim.setDesired('codec', D.deviceId, { level: 3 }, r.sim.shadowOf('codec', D.deviceId).version + 1)).toBe(true)
    const down = await r.cs.waitForDownlink((d) => r.cs.downlinks.indexOf(d) >= from && d.devEui === D.devEui, 10_000, 'the encoded shadow downlink')
    expect(down).toMatchObject({ fPort: 15, data: Buffer.from([3]) })
    await r.sim.waitFor((u) => u.parsed.deviceId === D.deviceId && u.parsed.name === '$shadow_updated', 10_000, '$shadow_updated')
  })

  it('encodes a JSON command with encodeDownlink when no fPort is configured for it', async () => {
    const from = r.cs.downlinks.length
    await r.sim.command('codec', D.deviceId, 'set_level', { level: 7 })
    const down = await r.cs.waitForDownlink((d) => r.cs.downlinks.indexOf(d) >= from && d.devEui === D.devEui, 10_000, 'the encoded downlink')
    expect(down).toMatchObject({ fPort: 15, confirmed: false, data: Buffer.from([7]) })
  })
})

describe('LoRaWAN device and broker availability', () => {
  let r: Rig
  const E = { devEui: '0a0a0a0a0a0a0a0a', productId: P, deviceId: 'quiet' }
  const HTTP_SECRET = 'a-shared-secret-of-some-length'
  const conn = (connected: boolean) => (u: HubUpload): boolean =>
    u.parsed.deviceId === E.deviceId && u.parsed.name === '$connection' && json(u).connected === connected

  beforeAll(async () => {
    r = await rig('json', {
      devices: [{ ...E, commands: { ping: { fPort: 7 } } }],
      awayAfterSeconds: 2,
      chirpstack: { http: { port: 0, secret: HTTP_SECRET } },
    }, [ref(E)])
  }, 60_000)

  afterAll(async () => {
    await r?.close()
  })

  it('reports a device disconnected after awayAfterSeconds of silence, and connected when heard again', async () => {
    await r.cs.publish('up', { devEui: E.devEui }, { deduplicationId: r.cs.nextId(), fPort: 1, data: 'AA==' })
    await r.sim.waitFor(conn(true), 10_000, '$connection connected')
    await r.sim.waitFor(conn(false), 15_000, '$connection disconnected after the silence')
    const from = r.sim.uploads.length
    await r.cs.publish('up', { devEui: E.devEui }, { deduplicationId: r.cs.nextId(), fPort: 1, data: 'AQ==' })
    await r.sim.waitFor((u) => r.sim.uploads.indexOf(u) >= from && conn(true)(u), 10_000, '$connection connected again')
  })

  it('keeps a command queued while ChirpStack\'s broker is down and sends it once it is back', async () => {
    await r.cs.publish('up', { devEui: E.devEui }, { deduplicationId: r.cs.nextId(), fPort: 1, data: 'Ag==' })
    await r.sim.waitFor((u) => u.parsed.deviceId === E.deviceId && u.parsed.name === 'fport_1' && json(u).raw === 'Ag==', 10_000, 'the uplink')
    await r.broker.stop()
    await until(async () => metricValue(await r.metrics(), 'iothub_edge_lorawan_broker_connected') === 0, 15_000, () => 'the adapter did not notice the broker going')
    await r.sim.command(P, E.deviceId, 'ping', 'hi')
    await r.broker.start()
    const down = await r.cs.waitForDownlink((d) => d.devEui === E.devEui && d.fPort === 7, 20_000, 'the queued command')
    expect(down.data.toString()).toBe('hi')
  }, 40_000)
})

describe('LoRaWAN via ChirpStack\'s HTTP integration', () => {
  let r: Rig
  const F = { devEui: '0b0b0b0b0b0b0b0b', productId: P, deviceId: 'posted' }
  const SECRET = 'http-integration-secret-123'
  const post = async (event: string, body: Buffer | string, contentType = 'application/json', secret = SECRET): Promise<number> => {
    const port = r.gw.adapter<LorawanAdapter>('lorawan')!.httpPort!
    const res = await fetch(`http://127.0.0.1:${port}/integrations/chirpstack?event=${event}`, {
      method: 'POST', headers: { 'content-type': contentType, 'x-iothub-edge-secret': secret }, body: typeof body === 'string' ? body : new Uint8Array(body),
    })
    await res.arrayBuffer()
    return res.status
  }

  beforeAll(async () => {
    r = await rig('json', { devices: [F], chirpstack: { http: { port: 0, secret: SECRET } } }, [ref(F)])
  }, 60_000)

  afterAll(async () => {
    await r?.close()
  })

  it('takes JSON and protobuf events posted by ChirpStack, answering 200 once they are stored', async () => {
    const pb = new ChirpstackSim('mqtt://unused', 'protobuf')
    expect(await post('join', pb.encode('join', { devEui: F.devEui }, { deduplicationId: r.cs.nextId(), devAddr: '01020304' }), 'application/octet-stream')).toBe(200)
    await r.sim.waitFor((u) => u.parsed.deviceId === F.deviceId && u.parsed.name === '$connection', 10_000, '$connection from the posted join')
    const body = JSON.stringify({ ...example('up'), deviceInfo: { ...(example('up').deviceInfo as object), devEui: F.devEui }, deduplicationId: r.cs.nextId(), fPort: 4 })
    expect(await post('up', body)).toBe(200)
    const up = await r.sim.waitFor((u) => u.parsed.deviceId === F.deviceId && u.parsed.name === 'fport_4', 10_000, 'the posted uplink')
    expect(json(up)).toEqual({ raw: 'qg==', fPort: 4 })
  })

  it('refuses a wrong secret (401), unreadable events (400) and other content types (415)', async () => {
    const body = JSON.stringify({ ...example('up'), deviceInfo: { ...(example('up').deviceInfo as object), devEui: F.devEui }, deduplicationId: r.cs.nextId(), fPort: 5 })
    expect(await post('up', body, 'application/json', 'wrong-secret-wrong-secret')).toBe(401)
    expect(await post('up', '{"truncated": ')).toBe(400)
    expect(await post('bogus', body)).toBe(400)
    expect(await post('up', body, 'text/plain')).toBe(415)
    expect(r.sim.received((u) => u.parsed.deviceId === F.deviceId && u.parsed.name === 'fport_5')).toEqual([])
    const m = await r.metrics()
    expect(metricValue(m, 'iothub_edge_lorawan_bad_events_total', { reason: 'malformed_json' })).toBe(1)
    expect(metricValue(m, 'iothub_edge_lorawan_bad_events_total', { reason: 'bad_event_type' })).toBe(1)
  })
})

describe('LoRaWAN downlinks through ChirpStack\'s gRPC API', () => {
  let r: Rig
  let api: ChirpstackApiServer
  const G = { devEui: '0c0c0c0c0c0c0c0c', productId: P, deviceId: 'via-api' }
  const REFUSED = { devEui: '0d0d0d0d0d0d0d0d', productId: P, deviceId: 'not-in-chirpstack' }
  const TOKEN = 'chirpstack-api-token'

  beforeAll(async () => {
    api = new ChirpstackApiServer(TOKEN)
    api.unknownDevices.add(REFUSED.devEui)
    await api.start()
    r = await rig('json', {
      devices: [{ ...G, commands: { open_valve: { fPort: 10, confirmed: true } } }, { ...REFUSED, commands: { open_valve: { fPort: 10 } } }],
      chirpstack: { api: { url: api.url, token: TOKEN } },
    }, [ref(G), ref(REFUSED)])
  }, 60_000)

  afterAll(async () => {
    await r?.close()
    api?.stop()
  })

  it('queues a command with DeviceService.Enqueue (devEui, fPort, data, confirmed, expiry, token) and follows the returned id', async () => {
    for (const d of [G, REFUSED]) await r.cs.publish('up', { devEui: d.devEui }, { deduplicationId: r.cs.nextId(), fPort: 1, data: 'AA==' })
    await r.sim.waitFor((u) => u.parsed.deviceId === REFUSED.deviceId && u.parsed.name === 'fport_1', 10_000, 'the uplinks')
    const expiresAt = Math.floor(Date.now() / 1000) + 300
    const rid = await r.sim.command(P, G.deviceId, 'open_valve', Buffer.from([1, 2, 3]), { encoding: 'base64', expiresAt })
    const req = await until(() => api.enqueued[0], 10_000, () => 'no Enqueue reached the API')
    // The stand-in refuses calls without the API token, as ChirpStack does.
    expect(api.unauthenticated).toBe(0)
    expect(req).toMatchObject({ devEui: G.devEui, fPort: 10, confirmed: true, data: Buffer.from([1, 2, 3]), expiresAt: expiresAt * 1000 })
    expect(r.cs.downlinks).toEqual([]) // nothing over MQTT
    // The gateway follows the id once Enqueue answered (our server records the request before it answers).
    await until(async () => {
      const diag = (await (await fetch(`http://127.0.0.1:${r.gw.web.port}/api/adapters/lorawan/devices`, { headers: { authorization: `Bearer ${API_TOKEN}` } })).json()) as { devices: { devEui: string; pendingDownlinks: number }[] }
      return diag.devices.find((d) => d.devEui === G.devEui)?.pendingDownlinks === 1
    }, 10_000, () => 'the gateway does not follow the queued downlink')
    await r.cs.publish('txack', { devEui: G.devEui }, { queueItemId: req.id })
    await r.sim.waitFor((u) => u.parsed.requestId === rid && json(u).status === 'sent', 10_000, 'cmd_resp sent')
    await r.cs.publish('ack', { devEui: G.devEui }, { deduplicationId: r.cs.nextId(), queueItemId: req.id, acknowledged: true })
    await r.sim.waitFor((u) => u.parsed.requestId === rid && json(u).status === 'acknowledged', 10_000, 'cmd_resp acknowledged')
  })

  it('keeps a txack that overtakes the Enqueue answer (a Class C device served at once) and applies it then', async () => {
    api.hold = {}
    const before = api.enqueued.length
    const rid = await r.sim.command(P, G.deviceId, 'open_valve', 'Ag==', { encoding: 'base64' })
    const req = await until(() => api.enqueued[before], 10_000, () => 'no Enqueue reached the API')
    const txacks = metricValue(await r.metrics(), 'iothub_edge_lorawan_events_total', { type: 'txack' })
    await r.cs.publish('txack', { devEui: G.devEui }, { queueItemId: req.id })
    await until(async () => metricValue(await r.metrics(), 'iothub_edge_lorawan_events_total', { type: 'txack' }) > txacks, 10_000, () => 'the txack was not taken in')
    expect(r.sim.received((u) => u.parsed.requestId === rid)).toEqual([])
    const { release } = api.hold
    api.hold = undefined
    release!()
    await r.sim.waitFor((u) => u.parsed.requestId === rid && json(u).status === 'sent', 10_000, 'cmd_resp sent after the Enqueue answer')
  })

  it('answers failed when ChirpStack refuses the downlink', async () => {
    const rid = await r.sim.command(P, REFUSED.deviceId, 'open_valve', 'on')
    const reply = json(await r.sim.waitFor((u) => u.parsed.requestId === rid, 10_000, 'the reply'))
    expect(reply).toMatchObject({ status: 'failed', code: 'enqueue' })
    expect(String(reply.reason)).toContain('does not exist')
  })
})

describe('LoRaWAN downlinks followed across a gateway restart, and each child in the API', () => {
  let r: Rig
  const V = { devEui: '0e0e0e0e0e0e0e0e', productId: P, deviceId: 'valve-201' }
  const replies = (rid: string, status: string): HubUpload[] => r.sim.received((u) => u.parsed.kind === 'cmd_resp' && u.parsed.requestId === rid && json(u).status === status)
  interface ChildView {
    device: {
      devEui: string
      reachable: boolean
      lastUplink?: { at: number; fPort: number; fCnt: number; dataType?: string; payload?: unknown }
      radio?: { rssi: number; snr: number; gateways: number; fCnt: number; dr: number }
      usualIntervalSeconds?: number
      downlinks: { id: string; command?: string; requestId?: string; fPort: number; confirmed: boolean; state: string }[]
    }
  }
  const child = async (): Promise<ChildView['device']> => (await r.api<ChildView>(`/api/adapters/lorawan/devices/${P}/${V.deviceId}`)).body.device

  beforeAll(async () => {
    r = await rig('json', { devices: [{ ...V, dataTypes: { '1': 'telemetry' }, commands: { open_valve: { fPort: 10, confirmed: true }, beep: { fPort: 11 } } }] }, [ref(V)])
  }, 60_000)

  afterAll(async () => {
    await r?.close()
  })

  it('shows a child\'s last uplink, radio quality, frame counter and the downlinks ChirpStack holds for it', async () => {
    // Two uplinks ten minutes apart by ChirpStack's clock: the device's usual interval.
    const t0 = Date.now() - 20 * 60_000
    await r.cs.publish('up', { devEui: V.devEui }, { deduplicationId: r.cs.nextId(), time: new Date(t0).toISOString(), fPort: 1, fCnt: 40, data: 'AA==' })
    await r.cs.publish('up', { devEui: V.devEui }, {
      deduplicationId: r.cs.nextId(), time: new Date(t0 + 10 * 60_000).toISOString(), fPort: 1, fCnt: 41, dr: 5, data: 'AQ==', object: { flow: 12.5 },
      rxInfo: [{ gatewayId: 'aa', rssi: -97, snr: 4.5 }, { gatewayId: 'bb', rssi: -88, snr: 1.25 }],
    })
    await r.sim.waitFor((u) => u.parsed.deviceId === V.deviceId && u.parsed.name === 'telemetry' && json(u).flow === 12.5, 10_000, 'the uplink')
    const rid = await r.sim.command(P, V.deviceId, 'open_valve', Buffer.from([1]), { encoding: 'base64' })
    const down = await r.cs.waitForDownlink((d) => d.devEui === V.devEui && d.fPort === 10, 10_000, 'the open_valve downlink')
    const seen = await child()
    expect(seen).toMatchObject({
      devEui: V.devEui,
      reachable: true,
      lastUplink: { fPort: 1, fCnt: 41, dataType: 'telemetry', payload: { flow: 12.5 } },
      radio: { rssi: -88, snr: 4.5, gateways: 2, fCnt: 41, dr: 5 },
      usualIntervalSeconds: 600,
    })
    expect(seen.downlinks).toEqual([expect.objectContaining({ id: down.id, command: 'open_valve', requestId: rid, fPort: 10, confirmed: true, state: 'queued' })])

    await r.cs.publish('txack', { devEui: V.devEui }, { queueItemId: down.id })
    await r.sim.waitFor((u) => u.parsed.requestId === rid && json(u).status === 'sent', 10_000, 'cmd_resp sent')
    expect((await child()).downlinks).toEqual([expect.objectContaining({ id: down.id, state: 'sent' })])
    await r.cs.publish('ack', { devEui: V.devEui }, { deduplicationId: r.cs.nextId(), queueItemId: down.id, acknowledged: true })
    await r.sim.waitFor((u) => u.parsed.requestId === rid && json(u).status === 'acknowledged', 10_000, 'cmd_resp acknowledged')
    expect((await child()).downlinks).toEqual([])

    const unknown = await r.api<{ error: string }>(`/api/adapters/lorawan/devices/${P}/not-a-lorawan-child`)
    expect(unknown).toMatchObject({ status: 404, body: { error: 'not_found' } })
  })

  it('replies to commands whose txack, ack and EXPIRED log arrive while the gateway is stopped, once it is back', async () => {
    const rid = await r.sim.command(P, V.deviceId, 'open_valve', Buffer.from([2]), { encoding: 'base64' })
    const down = await r.cs.waitForDownlink((d) => d.fPort === 10 && d.data.equals(Buffer.from([2])), 10_000, 'the confirmed downlink')
    const rid2 = await r.sim.command(P, V.deviceId, 'beep', 'twice')
    const down2 = await r.cs.waitForDownlink((d) => d.fPort === 11 && d.data.toString() === 'twice', 10_000, 'the unconfirmed downlink')
    // Both are followed (durably) before the stop.
    await until(async () => (await child()).downlinks.length === 2, 10_000, () => 'the gateway does not follow both downlinks')

    await r.stopGateway()
    // ChirpStack goes on meanwhile: its events wait in the gateway's session at the broker. The
    // EXPIRED log is as ChirpStack writes it (chirpstack/src/downlink/data.rs: level ERROR,
    // context.queue_item_id).
    await r.cs.publish('txack', { devEui: V.devEui }, { queueItemId: down.id })
    await r.cs.publish('ack', { devEui: V.devEui }, { deduplicationId: r.cs.nextId(), queueItemId: down.id, acknowledged: true })
    await r.cs.publish('log', { devEui: V.devEui }, { level: 'ERROR', code: 'EXPIRED', description: 'Device queue-item discarded because it has expired', context: { queue_item_id: down2.id } })
    expect(r.sim.received((u) => u.parsed.requestId === rid || u.parsed.requestId === rid2)).toEqual([])
    await r.startGateway()

    await r.sim.waitFor((u) => u.parsed.requestId === rid && json(u).status === 'acknowledged', 15_000, 'cmd_resp acknowledged after the restart')
    await r.sim.waitFor((u) => u.parsed.requestId === rid2 && json(u).status === 'expired', 15_000, 'cmd_resp expired after the restart')
    expect(replies(rid, 'sent')).toHaveLength(1)
    expect(replies(rid, 'acknowledged')).toHaveLength(1)
    expect(replies(rid2, 'expired')).toHaveLength(1)
    expect(r.sim.received((u) => u.parsed.requestId === rid).map((u) => u.parsed.name)).toEqual(['open_valve', 'open_valve'])
    expect((await child()).downlinks).toEqual([])
  }, 60_000)
})

describe('LoRaWAN over MQTT 3.1.1, TLS and a login at ChirpStack\'s broker', () => {
  let r: Rig
  let dir: string
  let pki: TestPki
  const W = { devEui: '0f0f0f0f0f0f0f0f', productId: P, deviceId: 'tls-meter' }
  const ups = (): string[] =>
    r.sim.received((u) => u.parsed.deviceId === W.deviceId && u.parsed.name === 'fport_3').map((u) => Buffer.from(json(u).raw as string, 'base64').toString())

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'lorawan-tls-'))
    pki = makeCa(dir, 'chirpstack-broker')
    // No anonymous access: ChirpStack and the gateway each log in.
    const users = [{ username: 'chirpstack', password: 'chirpstack-broker-secret' }, { username: 'iothub-edge', password: 'gateway-broker-secret' }]
    r = await rig('json', { devices: [W] }, [ref(W)], {
      broker: { tls: { cert: pki.cert, key: pki.key }, users },
      chirpstackLogin: users[0],
      mqtt: (b) => ({ url: b.tlsUrl, protocolVersion: 4, tls: { ca: pki.ca }, ...users[1] }),
    })
  }, 60_000)

  afterAll(async () => {
    await r?.close()
    if (dir) await rm(dir, { recursive: true, force: true })
  })

  it('takes events over a verified TLS connection with MQTT 3.1.1, its login and a persistent session, also those published while it was stopped', async () => {
    // Mosquitto logs each connection's protocol (p2: MQTT 3.1.1), clean-session flag (c0: persistent) and user.
    let log = ''
    await until(async () => /New client connected from 127\.0\.0\.1:\d+ as gw-lorawan-\S+ \(p2, c0, k30, u'iothub-edge'\)/.test((log = await r.broker.log())), 10_000, () => `no MQTT 3.1.1 persistent session in the broker's log:\n${log}`)
    await r.cs.publish('up', { devEui: W.devEui }, { deduplicationId: r.cs.nextId(), fPort: 3, data: Buffer.from('before').toString('base64') })
    await until(() => ups().includes('before'), 10_000, () => 'the uplink over TLS did not reach the hub')

    await r.stopGateway()
    for (let i = 0; i < 5; i++) await r.cs.publish('up', { devEui: W.devEui }, { deduplicationId: r.cs.nextId(), fPort: 3, data: Buffer.from(`while-stopped-${i}`).toString('base64') })
    await r.startGateway()
    await until(() => ups().filter((x) => x.startsWith('while-stopped-')).length === 5, 15_000, () => `after the restart the hub has ${JSON.stringify(ups())}`)
  }, 60_000)

  it('does not connect to a broker whose certificate it cannot verify', async () => {
    // A second adapter without the CA: the system's CAs do not know the test CA.
    const core = new ContractCore()
    const cfg = (parseConfig({ lorawan: { chirpstack: { mqtt: { url: r.broker.tlsUrl, protocolVersion: 4, clientId: 'no-ca' } } } }) as unknown as { lorawan: LorawanConfig }).lorawan
    const adapter = new LorawanAdapter(core, cfg)
    const from = (await r.broker.log()).length
    await adapter.start()
    try {
      let log = ''
      await until(async () => /OpenSSL Error|alert unknown ca|certificate unknown/i.test((log = (await r.broker.log()).slice(from))), 15_000, () => `no refused TLS handshake in the broker's log:\n${log}`)
      expect(adapter.isConnected).toBe(false)
      expect(await r.broker.log()).not.toMatch(/New client connected .* as no-ca /)
    } finally {
      await adapter.stop()
      core.dispose()
    }
  })
})
