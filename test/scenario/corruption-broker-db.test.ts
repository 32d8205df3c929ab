// A damaged broker.db (issue 17, broker-robust item 4; decision 0014-damaged-store, 0017): the
// local broker's persistent sessions hold 1,000 queued messages for 20 local tools that are away,
// and retained messages; the gateway stops cleanly; then one page in the middle of the queue is
// overwritten, or the file's first 100 bytes. The next start moves the file aside (kept), salvages
// every readable row into a fresh broker.db the way gateway.db is salvaged, says so in the log, in
// /api/health (degraded, broker_sessions_salvaged, with the counts) and /metrics, and the broker
// hands the tools what was salvaged; `iothub-edge store ack` clears the degraded state. gateway.db
// is not touched. Real MQTT.js clients, the gateway process.
import mqtt, { type MqttClient } from 'mqtt'
import { existsSync, readdirSync } from 'node:fs'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { countRows, damage } from '../helpers/damaged-db.js'
import { GatewayProcess, runCli } from '../helpers/gateway-process.js'
import { metricValue } from '../helpers/metrics.js'

const TOOLS = 20
const MESSAGES = 50
const RETAINED = 100
const PAD = 'p'.repeat(300)

interface TableSalvage {
  table: string
  rows: number
  readErrors: number
}

interface SalvageHealth {
  status: string
  reasons: string[]
  store?: { salvage?: unknown; brokerSalvage?: { reason: string; movedTo: string; headerRebuilt: boolean; tables: TableSalvage[] } }
}

describe('a damaged broker.db', () => {
  let gateway: GatewayProcess
  const open: MqttClient[] = []

  beforeEach(({ onTestFailed }) => {
    gateway = new GatewayProcess({ log: { level: 'info' } })
    onTestFailed(() => console.log(gateway.failure('output when the test failed').message))
  })

  afterEach(async () => {
    await Promise.allSettled(open.splice(0).map((c) => c.endAsync(true)))
    await gateway?.close()
  })

  async function tool(clientId: string, clean: boolean, got: string[] = []): Promise<{ client: MqttClient; got: string[]; sessionPresent: boolean }> {
    const c = mqtt.connect(gateway.internalUrl, { protocolVersion: 4, clientId, clean, reconnectPeriod: 0, connectTimeout: 5_000 })
    c.on('message', (topic, payload) => got.push(`${topic} ${payload.toString().split(' ')[0]}`))
    const connack = await new Promise<{ sessionPresent: boolean }>((resolve, reject) => {
      c.once('connect', resolve)
      c.once('error', reject)
    })
    open.push(c)
    return { client: c, got, sessionPresent: connack.sessionPresent }
  }

  it.each([
    { how: 'page' as const, damage: 'one page of the queue overwritten' },
    { how: 'header' as const, damage: 'the first 100 bytes (the header) overwritten' },
  ])('$damage: salvaged like gateway.db, degraded until acknowledged, the tools get what was salvaged', async ({ how }) => {
    await gateway.start()
    for (let i = 0; i < TOOLS; i++) {
      const { client } = await tool(`tool-${i}`, false)
      await client.subscribeAsync('site/queue/#', { qos: 1 })
      await client.endAsync()
    }
    const publisher = (await tool('publisher', true)).client
    for (let i = 1; i <= MESSAGES; i++) await publisher.publishAsync('site/queue/n', `${i} ${PAD}`, { qos: 2 })
    for (let i = 0; i < RETAINED; i++) await publisher.publishAsync(`site/config/${i}`, `${i}`, { qos: 2, retain: true })
    await publisher.endAsync()
    expect(await gateway.stop()).toBe(0)

    const file = path.join(gateway.dataDir, 'broker.db')
    expect(existsSync(`${file}-wal`), 'a clean stop checkpoints the WAL into the file').toBe(false)
    const queued = countRows(file, 'outgoing')
    expect(queued).toBe(TOOLS * MESSAGES)
    damage(file, how, 'outgoing')

    await gateway.start()
    const h = (await gateway.api<SalvageHealth>('GET', '/api/health')).body
    expect(h.status).toBe('degraded')
    expect(h.reasons).toContain('broker_sessions_salvaged')
    expect(h.reasons).not.toContain('store_salvaged')
    expect(h.reasons).not.toContain('broker_sessions_in_memory')
    const salvage = h.store!.brokerSalvage!
    expect(salvage.reason).toMatch(how === 'header' ? /file is not a database/ : /malformed|corrupt/i)
    expect(salvage.headerRebuilt).toBe(how === 'header')
    const rows = (table: string): TableSalvage => salvage.tables.find((t) => t.table === table)!
    const outgoing = rows('outgoing')
    console.log(`broker.db corruption (${how}): ${outgoing.rows} of ${queued} queued messages salvaged, ${outgoing.readErrors} failed read(s)`)
    if (how === 'header') {
      expect(outgoing.rows, 'a lost header hides no row').toBe(queued)
    } else {
      expect(outgoing.rows).toBeLessThan(queued)
      expect(outgoing.rows, 'one page holds a dozen queued messages, not more').toBeGreaterThan(queued - 30)
      expect(outgoing.readErrors).toBeGreaterThan(0)
    }
    expect(rows('subscriptions').rows).toBe(TOOLS)
    expect(rows('retained').rows).toBe(RETAINED)

    // Kept beside the new one; the log and the metrics say what happened.
    expect(salvage.movedTo.startsWith(`${file}.corrupt-`)).toBe(true)
    expect(existsSync(salvage.movedTo)).toBe(true)
    expect(readdirSync(gateway.dataDir).filter((f) => f.includes('salvage-tmp'))).toEqual([])
    const logs = gateway.logs()
    expect(logs).toContain('IHE_BROKER_SESSIONS_SALVAGED')
    expect(logs).toMatch(new RegExp(`broker.db was damaged .* salvaged into a new one: .*outgoing ${outgoing.rows}`))
    expect(logs).toMatch(new RegExp(`local broker sessions restored from broker\\.db: ${TOOLS} persistent session\\(s\\), ${outgoing.rows} queued message\\(s\\), ${RETAINED} retained`))
    const metrics = (await gateway.api<string>('GET', '/metrics')).body
    expect(metricValue(metrics, 'iothub_edge_store_salvaged_rows', { table: 'outgoing', database: 'broker.db' })).toBe(outgoing.rows)
    expect(metricValue(metrics, 'iothub_edge_store_salvage_pending')).toBe(1)

    // Every tool comes back to its session and gets what was salvaged for it: all of it together.
    const got: string[] = []
    for (let i = 0; i < TOOLS; i++) expect((await tool(`tool-${i}`, false, got)).sessionPresent).toBe(true)
    await expect.poll(() => got.length, { timeout: 15_000 }).toBe(outgoing.rows)
    const reader = await tool('reader', true)
    await reader.client.subscribeAsync('site/config/#', { qos: 1 })
    await expect.poll(() => reader.got.length, { timeout: 15_000 }).toBe(RETAINED)

    // Acknowledged: healthy again, the report kept, the damaged file too.
    const ack = await runCli(['store', 'ack', '-c', gateway.configFile])
    expect(ack.stdout + ack.stderr).toContain('salvage acknowledged')
    await gateway.waitForHealth((x) => x.status === 'ok', 15_000, 'health ok after store ack')
    expect(existsSync(path.join(gateway.dataDir, 'broker-salvage.json'))).toBe(false)
    expect(readdirSync(gateway.dataDir).filter((f) => f.startsWith('broker-salvage-') && f.endsWith('.acknowledged.json'))).toHaveLength(1)
    expect(existsSync(salvage.movedTo), 'acknowledging never deletes the damaged file').toBe(true)
  }, 120_000)
})
