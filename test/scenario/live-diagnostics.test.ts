// What a support engineer asks for first, and the radio facts of a LoRaWAN device, from a gateway
// process with Mosquitto as the hub and as ChirpStack's broker (ChirpStack's documented events):
// the diagnostics bundle is a tar.gz the system's `tar` reads, with every configured secret
// replaced, also where one reached the log; `iothub-edge diagnostics` writes the same bundle; the
// system route tells the data folder's disk; the device table shows RSSI/SNR and battery from
// ChirpStack's uplink and status events.
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { gunzipSync } from 'node:zlib'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import YAML from 'yaml'
import { refusedWith } from '../helpers/device.js'
import { GatewayProcess, repoRoot, runCli } from '../helpers/gateway-process.js'
import { HubBroker } from '../helpers/hub-broker.js'
import { ChirpstackBroker, ChirpstackSim } from '../helpers/chirpstack.js'

const execFileAsync = promisify(execFile)

const gw = { productId: 'gateways', deviceId: 'gw-diag', secret: 'gw-secret-diag-7f3a' }
const dev = { productId: 'thermo', deviceId: 't1', secret: 'device-secret-diag-91c2' }
const lora = { devEui: '0505050505050505', productId: 'sensors', deviceId: 'room-505' }
const API_TOKEN = 'api-token-diag-0123456789abcdef'
const CS_LOGIN = { username: 'edge-gw', password: 'chirpstack-broker-pass-5e1d' }
const CS_HTTP_SECRET = 'chirpstack-http-secret-a9b8c7d6'
// Every secret the config holds: none may appear in the bundle.
const SECRETS = [gw.secret, dev.secret, API_TOKEN, CS_LOGIN.password, CS_HTTP_SECRET]
const FILES = ['config.redacted.yaml', 'health.json', 'metrics.txt', 'logs.ndjson', 'outbox.json', 'system.json', 'versions.json']

describe('diagnostics bundle, system and LoRaWAN radio facts', () => {
  let hub: HubBroker
  let csBroker: ChirpstackBroker
  let cs: ChirpstackSim
  let gateway: GatewayProcess
  let tmp: string

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'live-diag-'))
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [dev, lora] } })
    await hub.start()
    csBroker = new ChirpstackBroker({ users: [CS_LOGIN, { username: 'chirpstack', password: 'chirpstack-side' }] })
    await csBroker.start()
    cs = new ChirpstackSim(csBroker.url, 'json', { username: 'chirpstack', password: 'chirpstack-side' })
    await cs.start()
    gateway = new GatewayProcess({
      gateway: gw,
      http: { apiToken: API_TOKEN },
      northbound: { url: hub.url },
      devices: [dev],
      lorawan: {
        chirpstack: { mqtt: { url: csBroker.url, ...CS_LOGIN, clientId: `diag-${process.pid}` }, http: { port: 0, secret: CS_HTTP_SECRET } },
        devices: [{ ...lora, dataTypes: { '1': 'telemetry' } }],
      },
      log: { level: 'info', format: 'json' },
    })
    await gateway.start()
    await gateway.waitForHealth((h) => h.northbound.connected, 20_000, 'hub connected')
  }, 60_000)

  afterAll(async () => {
    await gateway?.close()
    await cs?.stop()
    await csBroker?.close()
    await hub?.close()
    if (tmp) await rm(tmp, { recursive: true, force: true })
  })

  it('shows a LoRaWAN device\'s RSSI, SNR and battery from ChirpStack\'s events', async () => {
    await expect.poll(async () => (await gateway.api('GET', '/metrics')).body as string, { timeout: 15_000 }).toMatch(/iothub_edge_lorawan_broker_connected 1/)
    await cs.publish('up', { devEui: lora.devEui }, {
      deduplicationId: cs.nextId(), time: new Date().toISOString(), fPort: 1, fCnt: 3, dr: 5, data: 'AQI=', adr: false, confirmed: false,
      object: { temperature: 19.5 },
      rxInfo: [{ gatewayId: 'aa', rssi: -112, snr: -4.5 }, { gatewayId: 'bb', rssi: -81, snr: 6.25 }],
    })
    const row = async (): Promise<any> => (await gateway.api('GET', '/api/devices')).body.devices.find((d: any) => d.deviceId === lora.deviceId)
    await expect.poll(async () => (await row())?.rssi, { timeout: 15_000 }).toBe(-81)
    expect(await row()).toMatchObject({ protocol: 'lorawan', rssi: -81, snr: 6.25, online: true })
    await cs.publish('status', { devEui: lora.devEui }, { deduplicationId: cs.nextId(), margin: 9, batteryLevel: 64 })
    await expect.poll(async () => (await row())?.battery, { timeout: 15_000 }).toBe(64)
    const messages = (await gateway.api('GET', `/api/devices/${lora.productId}/${lora.deviceId}/messages`)).body.messages
    expect(messages.find((m: any) => m.dataType === 'telemetry')).toMatchObject({ kind: 'upload_data', payload: { temperature: 19.5 } })
    expect(messages[0]).toMatchObject({ kind: 'update_status', payload: { battery: 64, rssi: -81 } })
  })

  it('tells the system: CPU, memory, the data folder\'s disk, uptime and versions', async () => {
    const { status, body } = await gateway.api('GET', '/api/system')
    expect(status).toBe(200)
    const pkg = JSON.parse(await readFile(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string }
    expect(body).toMatchObject({ version: pkg.version, node: process.version, disk: { path: gateway.dataDir } })
    expect(body.cpu.cores).toBeGreaterThanOrEqual(1)
    expect(body.cpu.usagePercent).toBeGreaterThanOrEqual(0)
    expect(body.cpu.usagePercent).toBeLessThanOrEqual(100)
    expect(body.memory.rss).toBeGreaterThan(body.memory.heapUsed)
    expect(body.memory.systemTotal).toBeGreaterThan(body.memory.systemFree)
    expect(body.disk.totalBytes).toBeGreaterThan(body.disk.freeBytes)
    expect(body.disk.freeBytes).toBeGreaterThan(0)
    expect(body.uptimeSeconds).toBeGreaterThanOrEqual(0)
  })

  it('downloads a tar.gz that tar lists, with health, metrics, logs and a config in which no secret is left', async () => {
    // A secret that reaches the log by another path (here a login with the ChirpStack password as
    // its user name: the broker logs refused user names) is still not in the bundle.
    expect(await refusedWith(gateway.externalUrl, { productId: CS_LOGIN.password, deviceId: '', secret: 'x' })).toBeTruthy()
    await expect.poll(() => gateway.logs().includes(CS_LOGIN.password), { timeout: 10_000 }).toBe(true)

    const res = await fetch(`http://127.0.0.1:${gateway.httpPort}/api/diagnostics`, { headers: { authorization: `Bearer ${API_TOKEN}` } })
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toBe('application/gzip')
    expect(res.headers.get('content-disposition')).toMatch(/^attachment; filename="iothub-edge-diagnostics-[0-9TZ-]+\.tar\.gz"$/)
    const gz = Buffer.from(await res.arrayBuffer())
    const file = path.join(tmp, 'bundle.tar.gz')
    await writeFile(file, gz)

    const listed = (await execFileAsync('tar', ['-tzf', file])).stdout.trim().split('\n')
    const dir = listed[0].split('/')[0]
    expect(dir).toMatch(/^iothub-edge-diagnostics-/)
    expect(listed.map((l) => l.slice(dir.length + 1)).sort()).toEqual([...FILES].sort())
    await execFileAsync('tar', ['-xzf', file, '-C', tmp])
    const read = (name: string): Promise<string> => readFile(path.join(tmp, dir, name), 'utf8')

    // No secret anywhere in the bytes, and the redacted places say so.
    const tar = gunzipSync(gz).toString('latin1')
    for (const secret of SECRETS) expect(tar.includes(secret), secret).toBe(false)
    const config = YAML.parse(await read('config.redacted.yaml'))
    expect(config.gateway).toMatchObject({ productId: gw.productId, deviceId: gw.deviceId, secret: '[redacted]' })
    expect(config.devices[0]).toMatchObject({ productId: dev.productId, secret: '[redacted]' })
    expect(config.http.apiToken).toBe('[redacted]')
    expect(config.lorawan.chirpstack.mqtt).toMatchObject({ url: csBroker.url, username: CS_LOGIN.username, password: '[redacted]' })
    expect(config.lorawan.chirpstack.http.secret).toBe('[redacted]')

    expect(JSON.parse(await read('health.json')).northbound.connected).toBe(true)
    expect(await read('metrics.txt')).toContain('iothub_edge_outbox_messages')
    const logs = (await read('logs.ndjson')).trim().split('\n').map((l) => JSON.parse(l) as { msg: string })
    expect(logs.some((l) => l.msg === 'gateway started')).toBe(true)
    // The refused login above (a user name that is neither a device nor an app account).
    expect(logs.some((l) => l.msg.startsWith('client refused: the username must be'))).toBe(true)
    expect(JSON.parse(await read('outbox.json'))).toMatchObject({ outbox: { messages: expect.any(Number), maxBytes: expect.any(Number) }, northbound: { connected: true } })
    expect(JSON.parse(await read('system.json')).disk.path).toBe(gateway.dataDir)
    expect(JSON.parse(await read('versions.json'))).toMatchObject({ gateway: expect.any(String), node: { node: process.versions.node } })
  })

  it('`iothub-edge diagnostics` writes the same bundle from the running gateway', async () => {
    const out = path.join(tmp, 'cli-bundle.tar.gz')
    const r = await runCli(['diagnostics', '-c', gateway.configFile, '-o', out])
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout.trim()).toBe(out)
    const listed = (await execFileAsync('tar', ['-tzf', out])).stdout.trim().split('\n')
    expect(listed.map((l) => path.basename(l)).sort()).toEqual([...FILES].sort())
    const tar = gunzipSync(await readFile(out)).toString('latin1')
    for (const secret of SECRETS) expect(tar.includes(secret), secret).toBe(false)
  })
})
