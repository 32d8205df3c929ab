// A probe that watches /api/health can tell how long the hub has been out of reach
// (northbound.downSince) and turns degraded (northbound_down) after the configured time; the log
// says how many messages wait, for how long the link was down, and when it tries again; the alert
// rules documented for operators use metrics that exist, and the gateway id is in the metrics.
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { connectDevice, newMessageId, publishQos1 } from '../helpers/device.js'
import { GatewayProcess, repoRoot } from '../helpers/gateway-process.js'
import { HubBroker } from '../helpers/hub-broker.js'
import { metricValue } from '../helpers/metrics.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const dev = { productId: 'thermo', deviceId: 't1', secret: 'secret-t1' }

interface Health {
  status: string
  reasons: string[]
  northbound: { connected: boolean; since: number | null; downSince: number | null }
}

describe('health through a hub outage', () => {
  let hub: HubBroker | undefined
  let gateway: GatewayProcess | undefined

  afterAll(async () => {
    await gateway?.close()
    await hub?.close()
  })

  it('downSince while the hub is away, degraded northbound_down after northbound.degradedAfterSeconds, ok again when it is back', async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [dev] } })
    await hub.start()
    await hub.stop()
    gateway = new GatewayProcess({ gateway: { ...gw, id: 'site-7' }, northbound: { url: hub.url, degradedAfterSeconds: 1 }, devices: [dev], log: { level: 'info', format: 'json' } })
    await gateway.start()
    const g = gateway
    const health = async (): Promise<Health> => (await g.api<Health>('GET', '/api/health')).body
    const client = await connectDevice(g.externalUrl, dev)
    for (let i = 0; i < 3; i++) await publishQos1(client, `upload_data/thermo/t1/temperature/${newMessageId()}`, String(i))
    await client.endAsync()

    await expect.poll(async () => (await health()).reasons, { timeout: 15_000 }).toContain('northbound_down')
    const down = await health()
    expect(down.status).toBe('degraded')
    expect(down.northbound.connected).toBe(false)
    expect(typeof down.northbound.downSince).toBe('number')
    expect(down.northbound.since).toBeNull()
    expect((await g.api('GET', '/api/health')).status).toBe(503)

    await hub.start()
    await expect.poll(async () => (await health()).northbound.connected, { timeout: 30_000 }).toBe(true)
    const up = await health()
    expect(up.reasons).not.toContain('northbound_down')
    expect(up.northbound.downSince).toBeNull()

    const lines = g
      .logs()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg: string; waiting?: number; outageS?: number; nextAttemptS?: number })
    const retry = lines.find((l) => l.msg.startsWith('hub still unreachable'))
    expect(retry, g.logs()).toBeDefined()
    expect(retry!.nextAttemptS).toBeGreaterThan(0)
    const back = lines.find((l) => l.msg.startsWith('connected to hub'))
    expect(back).toMatchObject({ waiting: expect.any(Number), outageS: expect.any(Number) })
    expect(back!.waiting).toBeGreaterThanOrEqual(3)

    // And once everything that waited reached the hub, the log says so.
    await expect
      .poll(() => g.logs().split('\n').filter((l) => l.includes('outbox drained')).map((l) => JSON.parse(l) as { messages: number }), { timeout: 20_000 })
      .toEqual([expect.objectContaining({ messages: expect.any(Number) })])
    const drained = g.logs().split('\n').find((l) => l.includes('outbox drained'))!
    expect((JSON.parse(drained) as { messages: number }).messages).toBe(back!.waiting)

    // The alert rules operators are given name metrics that exist; the gateway id is in gateway_info.
    const metrics = (await g.api<string>('GET', '/metrics')).body
    const rules = readFileSync(path.join(repoRoot, 'docs/operators/alerts.md'), 'utf8')
    const named = [...new Set(rules.match(/iothub_edge_[a-z_]+/g))]
    expect(named.length).toBeGreaterThan(4)
    for (const m of named) expect(metrics, `${m} in docs/operators/alerts.md`).toMatch(new RegExp(`^# TYPE ${m} `, 'm'))
    expect(metricValue(metrics, 'iothub_edge_northbound_connected')).toBe(1)
    expect(metricValue(metrics, 'iothub_edge_gateway_info', { gateway: 'site-7' })).toBe(1)
  })

  it('warns once when the outbox passes 90 % of its quota', async () => {
    const g = new GatewayProcess({ gateway: gw, devices: [dev], store: { outbox: { maxBytes: 8192 } }, log: { level: 'info', format: 'json' } })
    try {
      await g.start()
      const client = await connectDevice(g.externalUrl, dev)
      const payload = Buffer.alloc(400, 'x')
      for (let i = 0; i < 24; i++) await publishQos1(client, `upload_data/thermo/t1/temperature/${newMessageId()}`, payload)
      await client.endAsync()
      await expect.poll(() => g.logs().split('\n').filter((l) => l.includes('of its quota: the oldest telemetry is evicted next')).length, { timeout: 20_000 }).toBe(1)
      const line = JSON.parse(g.logs().split('\n').find((l) => l.includes('of its quota'))!) as { level: number; maxBytes: number }
      expect(line).toMatchObject({ level: 40, maxBytes: 8192 })
    } finally {
      await g.close()
    }
  })
})
