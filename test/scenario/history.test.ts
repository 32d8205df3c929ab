// The local history of the gateway as a process: what a real MQTT device publishes through the
// gateway (bridged to Mosquitto as the hub) lands in history.db as series named by their JSON
// paths, its connect and the commands it got and answered as events, and comes back through
// /api/history, the CSV export and `iothub-edge history export`. A device flooding random keys
// hits the series cap, which is counted and reported, while its messages still reach the hub. A
// damaged history.db at start is moved aside and made anew, and the gateway runs on.
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CommandDevice } from '../helpers/command-device.js'
import { newMessageId } from '../helpers/device.js'
import { GatewayProcess, runCli } from '../helpers/gateway-process.js'
import { HubBroker, type HubRecorder } from '../helpers/hub-broker.js'
import { metricValue } from '../helpers/metrics.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const t1 = { productId: 'thermo', deviceId: 't1', secret: 'secret-t1' }
const noisy = { productId: 'thermo', deviceId: 'noisy', secret: 'secret-noisy' }
const CAP = 20

interface SeriesList {
  series: { id: number; device: string; name: string }[]
  rejected: { device: string; count: number; lastName: string }[]
}
interface RangeAnswer {
  tier: string
  points: { t: number; n: number; min: number; max: number; avg: number; last: number }[]
}

describe('local history through the gateway', () => {
  let hub: HubBroker
  let recorder: HubRecorder
  let gateway: GatewayProcess
  let device: CommandDevice | undefined
  let flooder: CommandDevice | undefined

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [t1, noisy] } })
    await hub.start()
    recorder = await hub.subscribeAll('upload_data/#')
    gateway = new GatewayProcess({
      gateway: gw,
      northbound: { url: hub.url },
      devices: [t1, noisy],
      store: { history: { maxSeriesPerDevice: CAP, vitalsIntervalSeconds: 1 } },
      log: { level: 'info', format: 'json' },
    })
    await gateway.start()
  })

  afterAll(async () => {
    await device?.client.endAsync()
    await flooder?.client.endAsync()
    await recorder?.close()
    await gateway?.close()
    await hub?.close()
  })

  it('a device\'s JSON leaves become series, its session and commands become events, and both come back over the API and the CLI', async () => {
    const g = gateway
    device = await CommandDevice.connect(g.externalUrl, t1, { cmdReply: () => JSON.stringify({ done: true }) })
    const temps = [21.5, 22, 35.25, 21]
    for (const [i, temp] of temps.entries()) {
      await device.publish(`upload_data/thermo/t1/telemetry/${newMessageId()}`, JSON.stringify({ temp, door: i % 2 === 0, env: { hum: 40 + i }, label: 'kitchen' }))
    }
    await device.publish(`update_status/thermo/t1/${newMessageId()}`, JSON.stringify({ battery: 88 }))

    const list = async (): Promise<SeriesList> => (await g.api<SeriesList>('GET', '/api/history/series?device=thermo/t1')).body
    await expect.poll(async () => (await list()).series.map((s) => s.name).sort(), { timeout: 15_000 }).toEqual(['status.battery', 'telemetry.door', 'telemetry.env.hum', 'telemetry.temp'])

    const temp = (await list()).series.find((s) => s.name === 'telemetry.temp')!
    const from = Date.now() - 3_600_000
    const r = await g.api<RangeAnswer>('GET', `/api/history?series=${temp.id}&from=${from}&points=500`)
    expect(r.status).toBe(200)
    expect(r.body.tier).toBe('raw')
    expect(r.body.points.reduce((a, p) => a + p.n, 0)).toBe(4)
    expect(Math.max(...r.body.points.map((p) => p.max))).toBe(35.25)
    expect(Math.min(...r.body.points.map((p) => p.min))).toBe(21)
    // The same series by device and name; one point for the whole hour.
    const one = await g.api<RangeAnswer>('GET', `/api/history?device=thermo/t1&name=telemetry.door&from=${from}&points=1`)
    expect(one.body.points).toEqual([expect.objectContaining({ n: 4, min: 0, max: 1 })])

    // A technician's command, delivered and answered: both are events of the device.
    const sent = await g.api<{ requestId: string }>('POST', '/api/devices/thermo/t1/commands', { name: 'reboot', payload: { delay: 1 } })
    expect(sent.status).toBe(202)
    type Events = { events: { type: string; detail?: Record<string, unknown> }[] }
    const events = async (): Promise<string[]> => (await g.api<Events>('GET', `/api/devices/thermo/t1/events?from=${from}`)).body.events.map((e) => e.type)
    await expect.poll(events, { timeout: 15_000 }).toEqual(expect.arrayContaining(['connected', 'command_delivered', 'command_replied']))
    const replied = (await g.api<Events>('GET', `/api/devices/thermo/t1/events?from=${from}`)).body.events.find((e) => e.type === 'command_replied')!
    expect(replied.detail).toMatchObject({ name: 'reboot', requestId: sent.body.requestId, reply: '{"done":true}' })

    // The gateway's own vitals are series of its own device.
    await expect
      .poll(async () => (await g.api<SeriesList>('GET', '/api/history/series?device=gateways/gw-01')).body.series.map((s) => s.name), { timeout: 15_000 })
      .toEqual(expect.arrayContaining(['$vitals.outbox_messages', '$vitals.hub_connected', '$vitals.rss_bytes']))

    // CSV from the API and from the CLI (which reads history.db beside the running gateway).
    const csv = await fetch(`http://127.0.0.1:${g.httpPort}/api/history/export?device=thermo/t1&name=telemetry.temp&from=${from}`, {
      headers: { authorization: `Bearer ${g.apiToken}` },
    })
    expect(csv.headers.get('content-type')).toMatch(/^text\/csv/)
    const lines = (await csv.text()).trim().split('\n')
    expect(lines[0]).toBe('time,device,series,tier,n,min,max,avg,last')
    expect(lines.slice(1).map((l) => Number(l.split(',').at(-1)))).toEqual(temps)
    const cli = await runCli(['history', 'export', '-c', g.configFile, '--device', 'thermo/t1', '--series', 'telemetry.temp', '--from', new Date(from).toISOString()])
    expect(cli.stderr).toBe('')
    expect(cli.code).toBe(0)
    expect(cli.stdout.trim().split('\n')).toEqual(lines)
  })

  it('a device flooding random keys hits the series cap: counted, reported, and its messages still reach the hub', async () => {
    const g = gateway
    flooder = await CommandDevice.connect(g.externalUrl, noisy)
    const last = newMessageId()
    for (let i = 0; i < 10; i++) {
      const doc = Object.fromEntries(Array.from({ length: 10 }, (_, k) => [`k${i}_${k}_${Math.random().toString(36).slice(2, 8)}`, k]))
      await flooder.publish(`upload_data/thermo/noisy/junk/${i === 9 ? last : newMessageId()}`, JSON.stringify(doc))
    }
    await recorder.waitFor((m) => m.topic.endsWith(`/${last}`), 15_000, 'the last flood message at the hub')

    const list = async (): Promise<SeriesList> => (await g.api<SeriesList>('GET', '/api/history/series?device=thermo/noisy')).body
    await expect.poll(async () => (await list()).rejected, { timeout: 15_000 }).toEqual([expect.objectContaining({ device: 'thermo/noisy', count: 80 })])
    expect((await list()).series).toHaveLength(CAP)
    // The well-behaved device is not affected by the other one's cap.
    expect((await g.api<SeriesList>('GET', '/api/history/series?device=thermo/t1')).body.series.length).toBeGreaterThan(0)
    const metrics = (await g.api<string>('GET', '/metrics')).body
    expect(metricValue(metrics, 'iothub_edge_history_series_rejected_total')).toBe(80)
    expect((await g.api<{ history: { seriesRejected: number } }>('GET', '/api/health')).body.history.seriesRejected).toBe(80)
    expect(g.logs()).toContain('IHE_HISTORY_SERIES_CAP')
  })
})

describe('a damaged history.db at start', () => {
  let hub: HubBroker | undefined
  let gateway: GatewayProcess | undefined
  let dir: string | undefined

  afterAll(async () => {
    await gateway?.close()
    await hub?.close()
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  it('is moved aside and made anew, reported in health and the log; the gateway runs and records', async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [t1] } })
    await hub.start()
    dir = mkdtempSync(path.join(os.tmpdir(), 'history-corrupt-'))
    const dataDir = path.join(dir, 'data')
    gateway = new GatewayProcess({ gateway: gw, northbound: { url: hub.url }, devices: [t1], log: { level: 'info', format: 'json' } }, { dataDir })
    // A first run makes the outbox database; then history.db is overwritten with garbage.
    await gateway.start()
    await gateway.stop()
    writeFileSync(path.join(dataDir, 'history.db'), Buffer.alloc(64 * 1024, 0x42))
    rmSync(path.join(dataDir, 'history.db-wal'), { force: true })
    await gateway.start()
    const g = gateway

    type Health = { status: string; history: { state: string; quarantined?: { file: string } } }
    const health = (await g.api<Health>('GET', '/api/health')).body
    expect(health.history.state).toBe('recreated')
    expect(path.basename(health.history.quarantined!.file)).toMatch(/^history\.db\.corrupt-/)
    expect(existsSync(health.history.quarantined!.file)).toBe(true)
    expect(readdirSync(dataDir)).toContain('gateway.db')
    expect(g.logs()).toContain('IHE_HISTORY_QUARANTINED')

    // It carries on: a device's message reaches the hub and lands in the new history.
    const dev = await CommandDevice.connect(g.externalUrl, t1)
    try {
      await dev.publish(`upload_data/thermo/t1/telemetry/${newMessageId()}`, JSON.stringify({ temp: 19 }))
    } finally {
      await dev.client.endAsync()
    }
    await expect
      .poll(async () => (await g.api<SeriesList>('GET', '/api/history/series?device=thermo/t1')).body.series.map((s) => s.name), { timeout: 15_000 })
      .toEqual(['telemetry.temp'])
    await expect.poll(async () => (await g.health()).outbox.messages, { timeout: 15_000 }).toBe(0)
  })
})
