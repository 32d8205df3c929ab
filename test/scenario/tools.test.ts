// The operator tools behave as documented: hub-sim plays PROTOCOL.md's hub behind a small HTTP API,
// simulate drives authenticated devices through a real gateway and answers commands like the SDK,
// and npm run demo shows data arriving at hub-sim within seconds.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { spawn } from 'node:child_process'
import path from 'node:path'
import mqtt, { type MqttClient } from 'mqtt'
import { HubSimServer } from '../../src/tools/hub-sim-server.js'
import { HubBroker, HUB_USERNAME, HUB_PASSWORD } from '../helpers/hub-broker.js'
import { GatewayProcess, repoRoot, runCli } from '../helpers/gateway-process.js'
import { HubSim } from '../../src/tools/hub-sim.js'
import { newMessageId } from '../helpers/device.js'

const json = async (res: Response): Promise<Record<string, unknown>> => (await res.json()) as Record<string, unknown>
const post = (url: string, body: unknown, method = 'POST'): Promise<Response> =>
  fetch(url, { method, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })

describe('iothub-edge hub-sim (HTTP API over the simulated hub)', () => {
  let server: HubSimServer
  let device: MqttClient
  let base: string
  const got: { topic: string; payload: string }[] = []

  beforeAll(async () => {
    server = new HubSimServer({ host: '127.0.0.1', mqttPort: 0, httpPort: 0, username: 'gw', password: 'pw' })
    await server.start()
    base = `http://127.0.0.1:${server.httpPort}`
    device = await mqtt.connectAsync(`mqtt://127.0.0.1:${server.mqttPort}`, { protocolVersion: 4, username: 'gw', password: 'pw' })
    // hub-sim has no server-side subscriptions: a client subscribes itself.
    await device.subscribeAsync(['cmd/p1/d1/#', 'rpc/p1/d1/#'], { qos: 1 })
    device.on('message', (topic, payload) => {
      got.push({ topic, payload: payload.toString() })
      const l = topic.split('/')
      if (l[0] === 'rpc') device.publish(`rpc_resp/p1/d1/${l[3]}/${l[5]}/${newMessageId()}`, '{"status":"ok","t":21}', { qos: 1 })
    })
  })
  afterAll(async () => {
    await device?.endAsync()
    await server?.stop()
  })

  it('refuses a client without its credentials', async () => {
    await expect(mqtt.connectAsync(`mqtt://127.0.0.1:${server.mqttPort}`, { protocolVersion: 4, username: 'gw', password: 'wrong', reconnectPeriod: 0 })).rejects.toThrow()
  })

  it('records uploads, flags a repeated MessageId as a duplicate', async () => {
    const mid = newMessageId()
    await device.publishAsync(`upload_data/p1/d1/temp/${mid}`, '{"t":1}', { qos: 1 })
    await device.publishAsync(`upload_data/p1/d1/temp/${mid}`, '{"t":1}', { qos: 1 })
    await server.sim!.waitFor((u) => u.duplicate && u.topic.endsWith(mid), 3_000, 'the duplicate')
    const stats = await json(await fetch(`${base}/stats`))
    expect(stats.duplicates).toBe(1)
    expect((stats.byKind as Record<string, number>).upload_data).toBeGreaterThanOrEqual(1)
    const uploads = (await json(await fetch(`${base}/uploads?limit=5`))).uploads as { topic: string }[]
    expect(uploads.some((u) => u.topic === `upload_data/p1/d1/temp/${mid}`)).toBe(true)
  })

  it('sends commands and RPCs through its HTTP API', async () => {
    const r = await json(await post(`${base}/devices/p1/d1/commands`, { name: 'blink', payload: { n: 3 } }))
    const want = `cmd/p1/d1/blink/plain/${String(r.requestId)}`
    await expect.poll(() => got.find((g) => g.topic === want)?.payload, { timeout: 3_000 }).toBe('{"n":3}')
    const rpc = await post(`${base}/devices/p1/d1/rpc`, { name: 'read' })
    expect(rpc.status).toBe(200)
    expect((await json(rpc)).reply).toBe('{"status":"ok","t":21}')
  })

  it('pushes $set_tags, applies shadow versions and refuses a stale desired version with 409', async () => {
    const tags = await json(await post(`${base}/devices/p1/d1/tags`, { tags: ['floor2'] }, 'PUT'))
    expect(tags).toEqual({ tags: ['floor2'], tagsVersion: 1 })
    await expect.poll(() => got.some((g) => g.topic.startsWith('cmd/p1/d1/$set_tags/plain/') && g.payload.includes('"tags_version":1')), { timeout: 3_000 }).toBe(true)
    const ok = await post(`${base}/devices/p1/d1/shadow`, { desired: { lights: 'on' }, version: 5 }, 'PUT')
    expect(ok.status).toBe(200)
    await expect.poll(() => got.some((g) => g.topic.startsWith('cmd/p1/d1/$update_shadow/') && g.payload.includes('"version":5')), { timeout: 3_000 }).toBe(true)
    const stale = await post(`${base}/devices/p1/d1/shadow`, { desired: { lights: 'off' }, version: 5 }, 'PUT')
    expect(stale.status).toBe(409)
    expect(((await json(await fetch(`${base}/devices/p1/d1/shadow`))).state as { desired: unknown }).desired).toEqual({ lights: 'on' })
  })
})

describe('iothub-edge simulate against a real gateway', () => {
  const gwUser = { productId: 'gateways', deviceId: 'gw-sim', secret: 'gw-secret' }
  let hub: HubBroker
  let gateway: GatewayProcess
  let sim: HubSim

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gwUser, children: [0, 1, 2].map((i) => ({ productId: 'sim', deviceId: `sim-0000${i}` })) } })
    await hub.start()
    sim = new HubSim({ url: hub.url, username: HUB_USERNAME, password: HUB_PASSWORD })
    await sim.start()
    gateway = new GatewayProcess({ gateway: gwUser, northbound: { url: hub.url }, log: { level: 'warn' } })
    await gateway.start()
  })
  afterAll(async () => {
    await sim?.stop()
    await gateway?.close()
    await hub?.close()
  })

  it('registers its devices, connects each with its own credentials, publishes at the set rate, answers commands', async () => {
    const run = runCli(
      ['simulate', '--url', gateway.externalUrl, '--devices', '3', '--rate', '5', '--duration', '4',
        '--api', `http://127.0.0.1:${gateway.httpPort}`, '--token', gateway.apiToken!],
      { timeoutMs: 30_000 },
    )
    // While it runs, the hub sends one simulated device a command; it answers like the SDK.
    const first = await sim.waitFor((u) => u.topic.startsWith('upload_data/sim/sim-00001/telemetry/'), 15_000, 'telemetry from sim-00001')
    expect(first.payload.length).toBe(64)
    const requestId = await sim.command('sim', 'sim-00001', 'blink', { n: 1 })
    const reply = await sim.waitFor((u) => u.parsed.kind === 'cmd_resp' && u.parsed.requestId === requestId, 10_000, 'the cmd_resp')
    expect(JSON.parse(reply.payload.toString())).toMatchObject({ status: 'ok' })
    const r = await run
    expect(r.code, r.stderr).toBe(0)
    const stats = JSON.parse(r.stdout.trim().split('\n').pop()!) as { connected: number; acked: number; commands: number }
    expect(stats.connected).toBe(3)
    expect(stats.commands).toBe(1)
    // 3 devices x 5 msg/s x ~4 s, each acknowledged by the gateway, each at the hub.
    expect(stats.acked).toBeGreaterThan(30)
    await expect.poll(() => sim.received((u) => u.parsed.name === 'telemetry').length, { timeout: 15_000 }).toBeGreaterThanOrEqual(stats.acked)
    expect(r.stdout).toMatch(/connected 3\/3/)
  })
})

describe('npm run demo', () => {
  it('shows data arriving at hub-sim within seconds and stops cleanly on Ctrl-C', async () => {
    const child = spawn(process.execPath, [path.join(repoRoot, 'scripts', 'demo.mjs')], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    child.stdout.on('data', (d: Buffer) => (out += d.toString()))
    child.stderr.on('data', (d: Buffer) => (out += d.toString()))
    try {
      await expect.poll(() => /hub-sim has received (\d+) uploads/.exec(out)?.[1], { timeout: 30_000, interval: 200 }).toBeDefined()
      const n = Number(/hub-sim has received (\d+) uploads/.exec(out)![1])
      expect(n, out).toBeGreaterThan(0)
      expect(out).toMatch(/"upload_data":\d+/)
    } finally {
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)))
      child.kill('SIGINT')
      const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('timeout'), 10_000))])
      if (code === 'timeout') child.kill('SIGKILL')
      expect(code).toBe(0)
    }
  })
})
