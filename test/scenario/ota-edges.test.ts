// The OTA relay's edges (issue 11): a mapped device (here the test mapped adapter, standing for
// serial and LoRaWAN) cannot carry an image, so the gateway answers -4 for it; with `ota.relay: false`
// the hub's `$ota_upgrade` reaches a native device untouched, as before the relay existed; with
// `ota.maxConcurrentDevices` a campaign goes out a few devices at a time, with a job's `maxConcurrent`
// (POST /api/ota/jobs) or `ota.maxConcurrentPerJob` (a hub tag campaign) a few devices of that job; an https image server with a
// certificate from a test CA is trusted through northbound.tls.ca (the hub's CA settings) and refused
// without it; the gateway's own download in progress shows in its update_status, never as a device's.
// Mosquitto with the hub's ACL plays the hub; node's http/https servers serve the images; the gateway
// runs in this process.
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { parseConfig } from '../../src/config.js'
import { Gateway } from '../../src/gateway.js'
import type { BrokerAdapter } from '../../src/southbound/broker/broker-adapter.js'
import { HubSim } from '../../src/tools/hub-sim.js'
import { CommandDevice } from '../helpers/command-device.js'
import { newMessageId } from '../helpers/device.js'
import { HUB_PASSWORD, HUB_USERNAME, HubBroker } from '../helpers/hub-broker.js'
import { ImageServer } from '../helpers/image-server.js'
import { TestMappedAdapter, testMappedAdapterEntry } from '../helpers/mapped-adapter.js'
import { makeCa, type TestPki } from '../helpers/pki.js'

const gwLogin = { productId: 'gateways', deviceId: 'gw-ota', secret: 'gw-secret' }
const P = 'sensor'
const meter = { productId: P, deviceId: 'modbus-1', secret: 'unused-1' }
const native = { productId: P, deviceId: 'native-1', secret: 'secret-native-1', tags: ['beta'] }
const native2 = { productId: P, deviceId: 'native-2', secret: 'secret-native-2', tags: ['beta'] }
const native3 = { productId: P, deviceId: 'native-3', secret: 'secret-native-3' }
const API_TOKEN = 'ota-test-token-0123456789'
const request = { url: 'http://images.example.com/fw.bin', version: '1.1.0', size: 1234, md5: '0123456789abcdef0123456789abcdef', type: 'firmware' }

describe('OTA relay: mapped devices and relay off', () => {
  let hub: HubBroker
  let sim: HubSim
  let dir: string
  let pki: TestPki
  let images: ImageServer
  let tlsImages: ImageServer
  const running: Gateway[] = []
  const devices: CommandDevice[] = []

  async function start(ota: Record<string, unknown>, northbound: Record<string, unknown> = {}): Promise<{ gw: Gateway; mapped: TestMappedAdapter }> {
    const cfg = parseConfig({
      gateway: { ...gwLogin, dataDir: path.join(dir, `data-${running.length}`) },
      broker: { listeners: [{ host: '127.0.0.1', port: 0, zone: 'external' }] },
      http: { host: '127.0.0.1', port: 0, apiToken: API_TOKEN },
      northbound: { url: hub.url, ...northbound },
      devices: [meter, native, native2, native3],
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
    pki = makeCa(dir, 'images')
    images = new ImageServer()
    await images.start()
    tlsImages = new ImageServer({ cert: await readFile(pki.cert), key: await readFile(pki.key) })
    await tlsImages.start()
    hub = new HubBroker({ devices: [], gateway: { ...gwLogin, children: [meter, native, native2, native3] } })
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
    await images?.close()
    await tlsImages?.close()
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
  const isOta = (m: { topic: string }): boolean => m.topic.includes('/$ota_upgrade/')
  const mqttUrl = (gw: Gateway): string => `mqtt://127.0.0.1:${gw.adapter<BrokerAdapter>('broker')!.ports[0]}`

  it('fetches an https image verified with northbound.tls.ca, the hub\'s CA settings', async () => {
    const { gw } = await start({ advertiseHost: '127.0.0.1' }, { tls: { ca: pki.ca } })
    const body = randomBytes(50_000)
    const img = tlsImages.add('fw-tls.bin', body)
    const dev = await CommandDevice.connect(mqttUrl(gw), native)
    devices.push(dev)
    await sim.command(P, native.deviceId, '$ota_upgrade', { url: img.url, version: '3.0.0', size: img.size, md5: img.md5, type: 'firmware' })
    const got = await dev.waitFor(isOta, 15_000, 'the $ota_upgrade with the local URL')
    const url = String((JSON.parse(got.payload.toString()) as { url: string }).url)
    expect(url).toMatch(new RegExp(`^http://127\\.0\\.0\\.1:${gw.web.port}/ota/`))
    const res = await fetch(url)
    expect(Buffer.from(await res.arrayBuffer()).equals(body)).toBe(true)
    expect(tlsImages.fullRequests('fw-tls.bin')).toBe(1)
  })

  it('refuses an https image server its CA does not vouch for: -1 "gateway: ..." upstream, the device gets nothing', async () => {
    const { gw } = await start({ advertiseHost: '127.0.0.1', download: { attempts: 1 } })
    const img = tlsImages.add('fw-untrusted.bin', randomBytes(10_000))
    const dev = await CommandDevice.connect(mqttUrl(gw), native2)
    devices.push(dev)
    await sim.command(P, native2.deviceId, '$ota_upgrade', { url: img.url, version: '3.0.1', size: img.size, md5: img.md5, type: 'firmware' })
    const u = await sim.waitFor((x) => x.parsed.kind === 'update_ota_status' && x.parsed.deviceId === native2.deviceId && x.payload.includes('"3.0.1"'), 15_000, 'the gateway\'s -1')
    const status = JSON.parse(u.payload.toString()) as { progress: number; desc: string; version: string }
    expect(status.progress).toBe(-1)
    expect(status.desc).toMatch(/^gateway: download of https:\/\/127\.0\.0\.1:\d+\/fw-untrusted\.bin failed after 1 attempt\(s\): .*certificate/)
    // TLS stopped it before any HTTP request reached the server.
    expect(tlsImages.requests.filter((r) => r.name === 'fw-untrusted.bin')).toEqual([])
    const marker = await sim.command(P, native2.deviceId, 'marker', '')
    await dev.waitFor((m) => m.topic.endsWith(marker), 10_000, 'the marker')
    expect(dev.messages.filter(isOta)).toEqual([])
  })

  it('shows its own slow download in its update_status (ota.downloads), never as the device\'s update_ota_status', async () => {
    const { gw } = await start({ advertiseHost: '127.0.0.1', download: { idleTimeoutSeconds: 120 } })
    const body = randomBytes(200_000)
    const img = images.add('fw-slow.bin', body, 'trickle')
    const served = images.images.get('fw-slow.bin')!
    const firstStatus = sim.uploads.filter((u) => u.parsed.kind === 'update_status' && u.parsed.deviceId === gwLogin.deviceId).at(-1)!
    expect(JSON.parse(firstStatus.payload.toString())).not.toHaveProperty('ota')
    await sim.command(P, native.deviceId, '$ota_upgrade', { url: img.url, version: '4.0.0', size: img.size, md5: img.md5, type: 'firmware' })
    // The server sends about half of the image, then nothing: the gateway holds that much, still fetching.
    const half = body.length / 2
    for (let until = Date.now() + 20_000; ; await sleep(100)) {
      const res = await fetch(`http://127.0.0.1:${gw.web.port}/api/ota/images`, { headers: { authorization: `Bearer ${API_TOKEN}` } })
      const listed = ((await res.json()) as { images: { key: string; fetchedBytes?: number }[] }).images.find((i) => i.key === `${img.md5}-${img.size}`)
      if (served.trickled >= half && listed?.fetchedBytes === served.trickled) break
      if (Date.now() > until) throw new Error(`the gateway did not get half of the image: ${JSON.stringify(listed)}, ${served.trickled} bytes sent`)
    }
    // Its status goes up when its hub link (re)connects.
    const since = sim.uploads.length
    await hub.restart()
    const u = await sim.waitFor((x) => sim.uploads.indexOf(x) >= since && x.parsed.kind === 'update_status' && x.parsed.deviceId === gwLogin.deviceId, 20_000, 'the gateway status after the reconnect')
    expect((JSON.parse(u.payload.toString()) as { ota?: unknown }).ota).toEqual({ downloads: [{ image: `${img.md5}-${img.size}`, version: '4.0.0', bytes: served.trickled, size: body.length }] })
    expect(sim.uploads.filter((x) => x.parsed.kind === 'update_ota_status' && x.parsed.deviceId === native.deviceId && x.payload.includes('"4.0.0"'))).toEqual([])
  })
  async function api(gw: Gateway, method: string, route: string, body?: unknown): Promise<{ status: number; body: any }> {
    const res = await fetch(`http://127.0.0.1:${gw.web.port}${route}`, {
      method,
      headers: { authorization: `Bearer ${API_TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    })
    return { status: res.status, body: await res.json() }
  }

  async function marker(dev: CommandDevice): Promise<void> {
    const requestId = await sim.command(P, dev.deviceId, 'marker', '')
    await dev.waitFor((m) => m.topic.endsWith(requestId), 10_000, `the marker to ${dev.deviceId}`)
  }

  it('releases an offline job to at most its own maxConcurrent devices at a time; other jobs go on', async () => {
    const { gw } = await start({ advertiseHost: '127.0.0.1' })
    const body = randomBytes(8_000)
    const up = await fetch(`http://127.0.0.1:${gw.web.port}/api/ota/images?version=2.5.0&type=firmware`, { method: 'POST', headers: { authorization: `Bearer ${API_TOKEN}`, 'content-type': 'application/octet-stream' }, body })
    expect(up.status).toBe(201)
    const md5 = createHash('md5').update(body).digest('hex')
    const [d1, d2, d3] = await Promise.all([native, native2, native3].map((l) => CommandDevice.connect(mqttUrl(gw), l)))
    devices.push(d1, d2, d3)
    expect((await api(gw, 'POST', '/api/ota/jobs', { image: md5, devices: [`${P}/${native.deviceId}`], maxConcurrent: -1 })).status).toBe(400)
    const wave = await api(gw, 'POST', '/api/ota/jobs', { image: md5, devices: [`${P}/${native.deviceId}`, `${P}/${native2.deviceId}`], maxConcurrent: 1 })
    expect(wave.status).toBe(201)
    const other = await api(gw, 'POST', '/api/ota/jobs', { image: md5, devices: [`${P}/${native3.deviceId}`] })
    expect(other.status).toBe(201)
    // The other job is not held back by this one's limit (no global limit is set).
    await d3.waitFor(isOta, 10_000, "the other job's $ota_upgrade")
    await d1.waitFor(isOta, 10_000, "the first device's $ota_upgrade")
    await marker(d2)
    expect(d2.messages.filter(isOta)).toEqual([])
    const job = ((await api(gw, 'GET', '/api/ota/jobs')).body as { jobs: { job: string; maxConcurrent: number; devices: { device: string; state: string }[] }[] }).jobs.find((j) => j.job === wave.body.job)!
    expect(job.maxConcurrent).toBe(1)
    expect(job.devices.find((d) => d.device === `${P}/${native2.deviceId}`)?.state).toBe('waiting')
    // The first device has the whole image: the next one's turn.
    await d1.publish(`update_ota_status/${P}/${native.deviceId}/${newMessageId()}`, JSON.stringify({ type: 'firmware', version: '2.5.0', progress: 100, desc: '' }))
    const got = await d2.waitFor(isOta, 10_000, "the second device's $ota_upgrade")
    const res = await fetch(String((JSON.parse(got.payload.toString()) as { url: string }).url))
    expect(Buffer.from(await res.arrayBuffer()).equals(body)).toBe(true)
  })

  it('sends a hub tag campaign to at most ota.maxConcurrentPerJob of its devices at a time', async () => {
    const { gw } = await start({ advertiseHost: '127.0.0.1', maxConcurrentPerJob: 1 })
    const img = images.add('fw-wave.bin', randomBytes(20_000))
    const tagged = await Promise.all([native, native2].map((l) => CommandDevice.connect(mqttUrl(gw), l)))
    devices.push(...tagged)
    const filter = `tags/${P}/beta/cmd/+/+/+/#`
    for (const d of tagged) await d.client.subscribeAsync(filter, { qos: 1 })
    for (let i = 0; !(await hub.subscriptionsOf(`${gwLogin.productId}/${gwLogin.deviceId}/edge`)).has(filter); i++) {
      if (i > 100) throw new Error('the gateway did not subscribe the tag filter on the hub')
      await sleep(100)
    }
    const job = await sim.tagCommand(P, 'beta', '$ota_upgrade', { url: img.url, version: '7.0.0', size: img.size, md5: img.md5, type: 'firmware' })
    let first: CommandDevice | undefined
    for (let until = Date.now() + 15_000; !(first = tagged.find((d) => d.messages.some(isOta))); await sleep(100)) {
      if (Date.now() > until) throw new Error('no device got the tag $ota_upgrade')
    }
    const second = tagged.find((d) => d !== first)!
    await marker(second)
    expect(second.messages.filter(isOta)).toEqual([])
    const view = ((await api(gw, 'GET', '/api/ota/jobs')).body as { jobs: { job: string; maxConcurrent: number; devices: { device: string; state: string }[] }[] }).jobs.find((j) => j.job === job)!
    expect(view.maxConcurrent).toBe(1)
    expect(view.devices.map((d) => d.state).sort()).toEqual(['delivered', 'waiting'])
    // The first device reports the new version: the second one's turn.
    await first.publish(`update_status/${P}/${first.deviceId}/${newMessageId()}`, JSON.stringify({ version: '7.0.0' }))
    const got = await second.waitFor(isOta, 10_000, "the second device's tag $ota_upgrade")
    expect(got.topic).toBe(`tags/${P}/beta/cmd/$ota_upgrade/plain/${job}`)
  })
})
