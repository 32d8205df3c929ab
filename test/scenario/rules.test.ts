// Local rules on real traffic: the rules are the worked examples of docs/operators/rules.md, read
// from the page itself, in one gateway process; devices publish through it with MQTT.js, Mosquitto
// plays the hub (with the hub's ACL), a valve is a device on the gateway's command path, and a local
// tool subscribes on the internal listener. Also: a wrong rule stops the start (exit 78, key path),
// and `iothub-edge rules test` runs the same rules offline.
import { existsSync, readFileSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import mqtt, { type MqttClient } from 'mqtt'
import YAML from 'yaml'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { connectDevice, newMessageId, publishQos1 } from '../helpers/device.js'
import { CommandDevice, type ReceivedMessage } from '../helpers/command-device.js'
import { GatewayProcess, repoRoot, runCli } from '../helpers/gateway-process.js'
import { HubBroker, type HubRecorder, type RecordedMessage } from '../helpers/hub-broker.js'
import { freePort } from '../helpers/ports.js'
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import { CEL_VARIABLES } from '../../src/rules/cel.js'

const DOC = path.join(repoRoot, 'docs', 'operators', 'rules.md')

/** The `rules:` lists of the page's worked examples, by the name in their `<!-- example: X -->` marker. */
export function docExamples(): Map<string, unknown[]> {
  const text = readFileSync(DOC, 'utf8')
  const out = new Map<string, unknown[]>()
  for (const m of text.matchAll(/<!-- example: (\w+) -->\s*```yaml\n([\s\S]*?)```/g)) {
    out.set(m[1], (YAML.parse(m[2]) as { rules: unknown[] }).rules)
  }
  return out
}

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const boiler = { productId: 'boiler', deviceId: 'b1', secret: 'secret-b1' }
const tank = { productId: 'tank', deviceId: 'k1', secret: 'secret-k1' }
const meter = { productId: 'meter', deviceId: 'm1', secret: 'secret-m1' }
const misc = { productId: 'misc', deviceId: 'x1', secret: 'secret-x1' }
const valve = { productId: 'valves', deviceId: 'v1', secret: 'secret-v1' }
const children = [boiler, tank, meter, misc, valve]

const ACTIONS = ['drop', 'transform', 'reportOnChange', 'window', 'alarm', 'command', 'republish', 'rateLimit']

const json = (m: RecordedMessage): Record<string, unknown> => JSON.parse(m.payload.toString()) as Record<string, unknown>

describe('docs/operators/rules.md', () => {
  it('has a worked example per action, and documents every CEL variable', () => {
    const examples = docExamples()
    expect([...examples.keys()].sort()).toEqual([...ACTIONS].sort())
    for (const [name, rules] of examples) {
      expect(JSON.stringify(rules), `example ${name} uses its action`).toContain(`"${name}"`)
    }
    const text = readFileSync(DOC, 'utf8')
    for (const v of Object.keys(CEL_VARIABLES)) expect(text).toContain(`| \`${v}\` |`)
  })
})

describe('local rules on real traffic (the examples of docs/operators/rules.md)', () => {
  let hub: HubBroker
  let recorder: HubRecorder
  let gateway: GatewayProcess
  const clients: MqttClient[] = []
  let valveDevice: CommandDevice
  let coapPort: number

  async function device(login: typeof boiler): Promise<MqttClient> {
    const c = await connectDevice(gateway.externalUrl, login)
    clients.push(c)
    return c
  }

  /** Publish, then a marker from the same device; once the marker is at the hub, all before it is too (order per device). */
  async function publishThenSettle(client: MqttClient, login: typeof boiler, sends: [string, unknown][]): Promise<void> {
    for (const [dataType, body] of sends) await publishQos1(client, `upload_data/${login.productId}/${login.deviceId}/${dataType}/${newMessageId()}`, JSON.stringify(body))
    const marker = newMessageId()
    await publishQos1(client, `upload_data/${login.productId}/${login.deviceId}/marker/${marker}`, '{}')
    await recorder.waitFor((m) => m.topic.endsWith(`/marker/${marker}`), 10_000, `marker of ${login.deviceId}`)
  }

  const at = (login: typeof boiler, dataType: string): RecordedMessage[] =>
    recorder.messages.filter((m) => m.topic.startsWith(`upload_data/${login.productId}/${login.deviceId}/${dataType}/`))

  beforeAll(async () => {
    const rules = [...docExamples().values()].flat()
    hub = new HubBroker({ devices: [], gateway: { ...gw, children } })
    await hub.start()
    recorder = await hub.subscribeAll('upload_data/#')
    coapPort = await freePort()
    gateway = new GatewayProcess({ gateway: gw, northbound: { url: hub.url }, devices: children, rules, coap: { host: '127.0.0.1', port: coapPort }, log: { level: 'info' } })
    await gateway.start()
    valveDevice = await CommandDevice.connect(gateway.externalUrl, valve)
    clients.push(valveDevice.client)
  }, 60_000)

  afterAll(async () => {
    await Promise.allSettled(clients.map((c) => c.endAsync(true)))
    await gateway?.close()
    await hub?.close()
  })

  it('drop: the device gets its PUBACK, nothing goes up, counted', async () => {
    const c = await device(misc)
    await publishThenSettle(c, misc, [['debug', { trace: 'x' }], ['debug', { trace: 'y' }]])
    expect(at(misc, 'debug')).toEqual([])
    const { body } = await gateway.api<{ rules: { name: string; dropped: number }[] }>('GET', '/api/rules')
    expect(body.rules.find((r) => r.name === 'no-debug')?.dropped).toBe(2)
  })

  it('transform: Fahrenheit goes up as Celsius under a new DataType, with the MessageId it came with', async () => {
    const c = await device(boiler)
    const id = newMessageId()
    await publishQos1(c, `upload_data/boiler/b1/temp_f/${id}`, JSON.stringify({ f: 122 }))
    const m = await recorder.waitFor((x) => x.topic === `upload_data/boiler/b1/temperature/${id}`, 10_000, 'the transformed reading')
    expect(json(m)).toEqual({ celsius: 50 })
    expect(at(boiler, 'temp_f')).toEqual([])
  })

  it('transform over CoAP too (libcoap coap-client): every transport passes the same rules', async () => {
    const id = newMessageId()
    const { productId: p, deviceId: d, secret } = boiler
    const uri = `coap://127.0.0.1:${coapPort}/mqtt/upload_data/${p}/${d}/temp_f/${id}?c=${d}-coap&u=${p}/${d}&p=${secret}`
    await promisify(execFile)(process.env.COAP_CLIENT_BIN ?? 'coap-client-notls', ['-B', '5', '-m', 'put', '-e', JSON.stringify({ f: 59 }), uri], { timeout: 20_000 })
    const m = await recorder.waitFor((x) => x.topic === `upload_data/boiler/b1/temperature/${id}`, 10_000, 'the transformed CoAP reading')
    expect(json(m)).toEqual({ celsius: 15 })
  })

  it('where on a missing field: the rule does not apply, the message goes up as it came', async () => {
    const c = await device(boiler)
    await publishThenSettle(c, boiler, [['temp_f', { fahrenheit: 50 }]])
    expect(at(boiler, 'temp_f').map(json)).toEqual([{ fahrenheit: 50 }])
  })

  it('alarm: raised once, not on every message, cleared with hysteresis; listed in GET /api/alarms', async () => {
    const c = await device(boiler)
    const f = (celsius: number): number => (celsius * 9) / 5 + 32
    await publishThenSettle(c, boiler, [95, 97, 88].map((t) => ['temp_f', { f: f(t) }] as [string, unknown]))
    expect(at(boiler, 'alarm').map(json).map((a) => [a.alarm, a.state, Math.round(a.value as number)])).toEqual([['overheat', 'raised', 95]])
    const raised = await gateway.api<{ alarms: { alarm: string; deviceId: string; state: string }[] }>('GET', '/api/alarms?state=raised')
    expect(raised.body.alarms).toMatchObject([{ alarm: 'overheat', productId: 'boiler', deviceId: 'b1', state: 'raised' }])
    await publishThenSettle(c, boiler, [['temp_f', { f: f(84) }]])
    expect(at(boiler, 'alarm').map((m) => json(m).state)).toEqual(['raised', 'cleared'])
    const all = await gateway.api<{ alarms: { state: string }[] }>('GET', '/api/alarms')
    expect(all.body.alarms).toMatchObject([{ state: 'cleared' }])
  })

  it('reportOnChange: only moves beyond the deadband go up', async () => {
    const c = await device(tank)
    await publishThenSettle(c, tank, [50, 51, 51.5, 53].map((level) => ['level', { level }] as [string, unknown]))
    expect(at(tank, 'level').map((m) => json(m).level)).toEqual([50, 53])
  })

  it('rateLimit: the first of three readings within a minute goes up', async () => {
    const c = await device(misc)
    await publishThenSettle(c, misc, [1, 2, 3].map((g) => ['vibration', { g }] as [string, unknown]))
    expect(at(misc, 'vibration').map((m) => json(m).g)).toEqual([1])
  })

  it('window: one aggregate per window, stamped with its start and end', async () => {
    const c = await device(meter)
    for (const watts of [100, 300, 200]) await publishQos1(c, `upload_data/meter/m1/power/${newMessageId()}`, JSON.stringify({ watts }))
    const m = await recorder.waitFor((x) => x.topic.startsWith('upload_data/meter/m1/power_10s/'), 25_000, 'the window aggregate')
    const body = json(m)
    expect((body.end as number) - (body.start as number)).toBe(10_000)
    expect(body.start as number % 10_000).toBe(0)
    // The three readings may straddle a window boundary: what each window counts adds up to three.
    await new Promise((r) => setTimeout(r, 100))
    const windows = at(meter, 'power_10s').map(json)
    const counted = windows.reduce((n, w) => n + (w.count as number), 0)
    if (counted < 3) {
      const second = await recorder.waitFor((x) => x.topic.startsWith('upload_data/meter/m1/power_10s/') && x !== m, 25_000, 'the second window')
      windows.push(json(second))
    }
    expect(windows.reduce((n, w) => n + (w.count as number), 0)).toBe(3)
    const watts = windows.map((w) => w.watts as { min: number; max: number })
    expect(Math.min(...watts.map((w) => w.min))).toBe(100)
    expect(Math.max(...watts.map((w) => w.max))).toBe(300)
    expect(at(meter, 'power')).toEqual([])
  }, 60_000)

  it('republish: a local tool on the internal listener sees the message; devices do not', async () => {
    const local = await mqtt.connectAsync(gateway.internalUrl, { protocolVersion: 4, clientId: `scada-${newMessageId()}`, reconnectPeriod: 0 })
    clients.push(local)
    const seen: { topic: string; payload: string }[] = []
    local.on('message', (topic, payload) => seen.push({ topic, payload: payload.toString() }))
    await local.subscribeAsync('site/#', { qos: 0 })
    const c = await device(boiler)
    await publishThenSettle(c, boiler, [['temp_f', { f: 50 }]])
    const deadline = Date.now() + 5_000
    while (!seen.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
    expect(seen).toEqual([{ topic: 'site/boiler/b1/temperature', payload: '{"celsius":10}' }])
    expect(valveDevice.messages.filter((m) => m.topic.startsWith('site/'))).toEqual([])
  })

  it('command: with the hub down, a hot reading closes the local valve through the command path', async () => {
    type Rules = { rules: { name: string; commands: number }[] }
    const sent = async (): Promise<number> => (await gateway.api<Rules>('GET', '/api/rules')).body.rules.find((r) => r.name === 'close-valve-when-hot')!.commands
    const before = await sent()
    await hub.stop()
    try {
      const c = await device(boiler)
      await publishQos1(c, `upload_data/boiler/b1/temp_f/${newMessageId()}`, JSON.stringify({ f: (99 * 9) / 5 + 32 }))
      const closes = (): ReceivedMessage[] => valveDevice.messages.filter((m) => m.topic.startsWith('cmd/valves/v1/close/') && m.payload.toString().includes('99'))
      const deadline = Date.now() + 10_000
      while (!closes().length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
      const [cmd] = closes()
      expect(cmd?.levels.slice(0, 5)).toEqual(['cmd', 'valves', 'v1', 'close', 'plain'])
      expect(JSON.parse(cmd.payload.toString())).toEqual({ reason: 'overheat', celsius: 99 })
      expect(await sent()).toBe(before + 1)
    } finally {
      await hub.start()
    }
  })

  it('GET /api/rules: counters per rule and the last error', async () => {
    const c = await device(boiler)
    // boiler-overheat's set expression needs payload.celsius: a temperature without it is an error.
    await publishThenSettle(c, boiler, [['temperature', { kelvin: 300 }]])
    expect(at(boiler, 'temperature').some((m) => json(m).kelvin === 300)).toBe(true)
    const { status, body } = await gateway.api<{ rules: { name: string; matched: number; errors: number; lastError: { message: string; device: string } | null }[] }>('GET', '/api/rules')
    expect(status).toBe(200)
    expect(body.rules.map((r) => r.name)).toEqual([...docExamples().values()].flat().map((r) => (r as { name: string }).name))
    const overheat = body.rules.find((r) => r.name === 'boiler-overheat')!
    expect(overheat.errors).toBeGreaterThanOrEqual(1)
    expect(overheat.lastError).toMatchObject({ device: 'boiler/b1' })
    expect(overheat.lastError!.message).toMatch(/celsius/)
    const metrics = await (await fetch(`http://127.0.0.1:${gateway.httpPort}/metrics`)).text()
    expect(metrics).toMatch(/iothub_edge_rule_dropped_total\{rule="no-debug"\} 2/)
  })
})

describe('rules in the config file', () => {
  const rules = [...docExamples().values()].flat()

  it('a CEL expression that does not compile stops the start: exit 78, its key path named', async () => {
    const bad = structuredClone(rules) as { actions: Record<string, Record<string, string>>[] }[]
    bad[1].actions[0].transform.payload = '{"celsius": paylod.f}'
    const gateway = new GatewayProcess({ rules: bad })
    try {
      await expect(gateway.start(15_000)).rejects.toThrow()
      expect(gateway.exitCode).toBe(78)
      expect(gateway.logs()).toContain('rules[1].actions[0].transform.payload: Unknown variable: paylod')
    } finally {
      await gateway.close()
    }
  })

  it('iothub-edge rules test prints what each rule does to a sample message, without a gateway', async () => {
    const tmp = await mkdtemp(path.join(os.tmpdir(), 'iothub-edge-rules-test-'))
    try {
      const config = path.join(tmp, 'gateway.yaml')
      await writeFile(config, YAML.stringify({ rules }))
      const sample = path.join(tmp, 'sample.json')
      await writeFile(sample, JSON.stringify([{ topic: 'upload_data/boiler/b1/temp_f', payload: { f: 205 } }, { topic: 'upload_data/misc/x1/debug', payload: {} }]))
      const r = await runCli(['rules', 'test', '-c', config, '--message', sample])
      expect(r.code).toBe(0)
      expect(r.stdout).toContain('rule boiler-celsius: matched, where true')
      expect(r.stdout).toMatch(/alarm: raised/)
      expect(r.stdout).toMatch(/up: upload_data\/boiler\/b1\/temperature\/\S+ \{"celsius":96\.1/)
      expect(r.stdout).toContain('command: valves/v1 close')
      expect(r.stdout).toContain('drop: dropped')
      expect(r.stdout).toContain('nothing goes up')
      // no gateway ran: no data folder was made
      expect(existsSync(path.join(tmp, 'data'))).toBe(false)
    } finally {
      await rm(tmp, { recursive: true, force: true })
    }
  })
})
