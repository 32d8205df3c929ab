// The OTA relay's edges (issue 11): a mapped device (here the test mapped adapter, standing for
// serial and LoRaWAN) cannot carry an image, so the gateway answers -4 for it; with `ota.relay: false`
// the hub's `$ota_upgrade` reaches a native device untouched, as before the relay existed; with
// `ota.maxConcurrentDevices` a campaign goes out a few devices at a time.
// Mosquitto with the hub's ACL plays the hub; the gateway runs in this process.
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { parseConfig } from '../../src/config.js'
import { Gateway } from '../../src/gateway.js'
import type { BrokerAdapter } from '../../src/southbound/broker/broker-adapter.js'
import { HubSim } from '../../src/tools/hub-sim.js'
import { CommandDevice } from '../helpers/command-device.js'
import { newMessageId } from '../helpers/device.js'
import { HUB_PASSWORD, HUB_USERNAME, HubBroker } from '../helpers/hub-broker.js'
import { TestMappedAdapter, testMappedAdapterEntry } from '../helpers/mapped-adapter.js'

const gwLogin = { productId: 'gateways', deviceId: 'gw-ota', secret: 'gw-secret' }
const P = 'sensor'
const meter = { productId: P, deviceId: 'modbus-1', secret: 'unused-1' }
const native = { productId: P, deviceId: 'native-1', secret: 'secret-native-1' }
const native2 = { productId: P, deviceId: 'native-2', secret: 'secret-native-2' }
const API_TOKEN = 'ota-test-token-0123456789'
const request = { url: 'http://images.example.com/fw.bin', version: '1.1.0', size: 1234, md5: '0123456789abcdef0123456789abcdef', type: 'firmware' }

describe('OTA relay: mapped devices and relay off', () => {
  let hub: HubBroker
  let sim: HubSim
  let dir: string
  const running: Gateway[] = []
  const devices: CommandDevice[] = []

  async function start(ota: Record<string, unknown>): Promise<{ gw: Gateway; mapped: TestMappedAdapter }> {
    const cfg = parseConfig({
      gateway: { ...gwLogin, dataDir: path.join(dir, `data-${running.length}`) },
      broker: { listeners: [{ host: '127.0.0.1', port: 0, zone: 'external' }] },
      http: { host: '127.0.0.1', port: 0, apiToken: API_TOKEN },
      northbound: { url: hub.url },
      devices: [meter, native, native2],
      ota,
      log: { level: process.env.TEST_GATEWAY_LOG ?? 'silent' },
    })
    let mapped: TestMappedAdapter | undefined
    const gw = new Gateway(cfg, { adapters: [testMappedAdapterEntry((ctx) => (mapped = new TestMappedAdapter(ctx, { devices: [meter] })))] })
    running.push(gw)
    const since = sim.uploads.length
    await gw.start()
    // Its status follows its command subscriptions on the same connection.
    await sim.waitFor((u) => sim.uploads.indexOf(u) >= since && u.parsed.kind === 'update_status' && u.parsed.deviceId === gwLogin.deviceId, 15_000, 'gateway status')
    return { gw, mapped: mapped! }
  }

  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ota-mapped-'))
    hub = new HubBroker({ devices: [], gateway: { ...gwLogin, children: [meter, native, native2] } })
    await hub.start()
    sim = new HubSim({ url: hub.url, username: HUB_USERNAME, password: HUB_PASSWORD })
    await sim.start()
  })

  afterEach(async () => {
    await Promise.allSettled(devices.splice(0).map((d) => d.close()))
    for (const gw of running.splice(0)) await gw.stop()
  })

  afterAll(async () => {
    await sim?.stop()
    await hub?.close()
    await rm(dir, { recursive: true, force: true })
  })

  it('answers -4 "transport cannot carry an image" for a mapped device and hands it nothing', async () => {
    const { mapped } = await start({})
    await sim.command(P, meter.deviceId, '$ota_upgrade', request)
    const u = await sim.waitFor((x) => x.parsed.kind === 'update_ota_status' && x.parsed.deviceId === meter.deviceId, 10_000, 'the gateway\'s -4')
    expect(JSON.parse(u.payload.toString())).toEqual({ type: 'firmware', version: '1.1.0', progress: -4, desc: 'gateway: transport cannot carry an image' })
    const marker = await sim.command(P, meter.deviceId, 'marker', '')
    await mapped.waitForDelivery((c) => c.requestId === marker, 10_000, 'the marker')
    expect(mapped.delivered.filter((c) => c.name === '$ota_upgrade')).toEqual([])
  })

  it('relays `$ota_upgrade` untouched with ota.relay false', async () => {
    const { gw } = await start({ relay: false })
    const dev = await CommandDevice.connect(`mqtt://127.0.0.1:${gw.adapter<BrokerAdapter>('broker')!.ports[0]}`, native)
    devices.push(dev)
    await sim.waitFor((u) => u.topic.startsWith(`upload_data/${P}/${native.deviceId}/$connection/`) && u.payload.includes('"connected":true'), 10_000, 'its $connection')
    const requestId = await sim.command(P, native.deviceId, '$ota_upgrade', request)
    const got = await dev.waitFor((m) => m.topic === `cmd/${P}/${native.deviceId}/$ota_upgrade/plain/${requestId}`, 10_000, 'the untouched $ota_upgrade')
    expect(got.payload.toString()).toBe(JSON.stringify(request))
  })

  it('releases a campaign to at most ota.maxConcurrentDevices devices at a time', async () => {
    const { gw } = await start({ maxConcurrentDevices: 1, advertiseHost: '127.0.0.1' })
    const base = `http://127.0.0.1:${gw.web.port}`
    const auth = { authorization: `Bearer ${API_TOKEN}` }
    const body = randomBytes(5_000)
    const up = await fetch(`${base}/api/ota/images?version=2.0.0&type=firmware`, { method: 'POST', headers: { ...auth, 'content-type': 'application/octet-stream' }, body })
    expect(up.status).toBe(201)
    const md5 = createHash('md5').update(body).digest('hex')
    const url = `mqtt://127.0.0.1:${gw.adapter<BrokerAdapter>('broker')!.ports[0]}`
    const first = await CommandDevice.connect(url, native)
    const second = await CommandDevice.connect(url, native2)
    devices.push(first, second)
    const job = await fetch(`${base}/api/ota/jobs`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ image: md5, devices: [`${P}/${native.deviceId}`, `${P}/${native2.deviceId}`] }) })
    expect(job.status).toBe(201)
    const isOta = (m: { topic: string }): boolean => m.topic.includes('/$ota_upgrade/')
    await first.waitFor(isOta, 10_000, "the first device's $ota_upgrade")
    const marker = await sim.command(P, native2.deviceId, 'marker', '')
    await second.waitFor((m) => m.topic.endsWith(marker), 10_000, 'the marker')
    expect(second.messages.filter(isOta)).toEqual([])
    // The first one is done: the next device's turn.
    await first.publish(`update_status/${P}/${native.deviceId}/${newMessageId()}`, JSON.stringify({ version: '2.0.0' }))
    const got = await second.waitFor(isOta, 10_000, "the second device's $ota_upgrade")
    const res = await fetch(String((JSON.parse(got.payload.toString()) as { url: string }).url))
    expect(Buffer.from(await res.arrayBuffer()).equals(body)).toBe(true)
  })
})
