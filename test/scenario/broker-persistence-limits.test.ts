// Bounded queues on the local broker (issue 17, broker-robust item 3; broker.maxQueuedMessages and
// broker.maxQueuedBytes, docs/operators/broker-sessions.md "Limits"): a persistent session that is
// away keeps at most so many messages and bytes; past either the oldest are dropped, counted in
// /metrics, /api/health is degraded (broker:queue_dropped) until the client comes back, and the log
// says so once per client with what to do. The client then gets the newest ones, in order, and
// broker.db keeps no more than the limit across a restart. The same limits with broker.persistence:
// memory (before, aedes' own memory persistence queued without bound). Real MQTT.js clients on the
// internal listener, the gateway process.
import mqtt, { type MqttClient } from 'mqtt'
import { existsSync } from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { metricValue } from '../helpers/metrics.js'

const MAX_MESSAGES = 5
const MAX_BYTES = 1_000
const BIG = 'x'.repeat(300)

interface Health {
  status: string
  reasons: string[]
}

describe.each([{ persistence: 'sqlite' }, { persistence: 'memory' }])('the broker’s queue of a persistent session that is away is bounded (broker.persistence: $persistence)', ({ persistence }) => {
  let gateway: GatewayProcess
  const open: MqttClient[] = []

  beforeAll(async () => {
    gateway = new GatewayProcess({ broker: { persistence, maxQueuedMessages: MAX_MESSAGES, maxQueuedBytes: MAX_BYTES }, log: { level: 'info' } })
    await gateway.start()
  })

  beforeEach(({ onTestFailed }) => {
    onTestFailed(() => console.log(gateway.failure('output when the test failed').message))
  })

  afterAll(async () => {
    await Promise.allSettled(open.map((c) => c.endAsync(true)))
    await gateway?.close()
  })

  async function client(clientId: string, clean: boolean): Promise<{ client: MqttClient; got: { topic: string; payload: string }[] }> {
    const got: { topic: string; payload: string }[] = []
    const c = mqtt.connect(gateway.internalUrl, { protocolVersion: 4, clientId, clean, reconnectPeriod: 0, connectTimeout: 5_000 })
    c.on('message', (topic, payload) => got.push({ topic, payload: payload.toString() }))
    await new Promise<void>((resolve, reject) => {
      c.once('connect', () => resolve())
      c.once('error', reject)
    })
    open.push(c)
    return { client: c, got }
  }

  async function health(): Promise<Health> {
    return (await gateway.api<Health>('GET', '/api/health')).body
  }

  it('drops the oldest past the message and the byte limit, counts and logs it, and hands over the newest in order', async () => {
    // Two persistent sessions subscribe, then go away.
    for (const [id, filter] of [['counting-tool', 'site/count/#'], ['big-tool', 'site/big/#']]) {
      const { client: c } = await client(id, false)
      await c.subscribeAsync(filter, { qos: 1 })
      await c.endAsync()
    }
    const publisher = (await client('publisher', true)).client
    for (let i = 1; i <= 12; i++) await publisher.publishAsync('site/count/n', String(i), { qos: 2 })
    for (let i = 1; i <= 10; i++) await publisher.publishAsync('site/big/n', `${i} ${BIG}`, { qos: 2 })

    const h = await health()
    expect(h.status).toBe('degraded')
    expect(h.reasons).toContain('broker:queue_dropped')
    const metrics = (await gateway.api<string>('GET', '/metrics')).body
    // Messages: 12 - 5 dropped from the first; the second keeps what fits in 1,000 bytes (3 of ~310).
    expect(metricValue(metrics, 'iothub_edge_broker_queue_dropped_total', { unit: 'messages' })).toBe(12 - MAX_MESSAGES + (10 - 3))
    expect(metricValue(metrics, 'iothub_edge_broker_queue_dropped_total', { unit: 'bytes' })).toBeGreaterThan(7 * BIG.length)
    const warnings = gateway.logs().split('\n').filter((l) => l.includes('IHE_BROKER_QUEUE_FULL'))
    expect(warnings.filter((l) => l.includes('counting-tool'))).toHaveLength(1)
    expect(warnings.filter((l) => l.includes('big-tool'))).toHaveLength(1)
    expect(warnings[0]).toContain('broker.maxQueuedMessages')

    if (persistence === 'sqlite') {
      // broker.db holds what memory holds: the restart restores the bounded queues.
      expect(await gateway.stop()).toBe(0)
      await gateway.start()
      expect(gateway.logs()).toMatch(new RegExp(`2 persistent session\\(s\\), ${MAX_MESSAGES + 3} queued message\\(s\\)`))
    } else {
      expect(existsSync(path.join(gateway.dataDir, 'broker.db')), 'memory only: no file').toBe(false)
    }

    const back = await client('counting-tool', false)
    await expect.poll(() => back.got.length, { timeout: 10_000 }).toBe(MAX_MESSAGES)
    expect(back.got.map((m) => m.payload)).toEqual(['8', '9', '10', '11', '12'])
    const big = await client('big-tool', false)
    await expect.poll(() => big.got.length, { timeout: 10_000 }).toBe(3)
    expect(big.got.map((m) => m.payload.split(' ')[0])).toEqual(['8', '9', '10'])

    // Both came back for their queues: healthy again.
    await expect.poll(async () => (await health()).status, { timeout: 10_000 }).toBe('ok')
  })
})
