// A damaged gateway.db (issue 17, item 4; docs/operators/outbox.md "Storage failures"). Real MQTT
// devices get 3,000+ messages acknowledged while the hub (Mosquitto) is down; the gateway stops
// cleanly; then the file is damaged the two ways storage fails: one page in the middle overwritten,
// or its first 100 bytes (the header). The next start must not exit: it moves the file aside
// (kept), salvages every readable row into a fresh database (the outbox with its MessageIds,
// priorities and order; the device registry: a device added through the API still logs in), says
// so in the log, /api/health (degraded, store_salvaged) and /metrics, takes in new messages, and
// delivers what it salvaged once the hub is back; `iothub-edge store ack` clears the degraded state.
// Also: the one start line after a kill -9, and SIGHUP as a clean stop after all of this.
import type { MqttClient } from 'mqtt'
import { existsSync, readdirSync } from 'node:fs'
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { countRows, damage } from '../helpers/damaged-db.js'
import { connectDevice } from '../helpers/device.js'
import { runCli, type GatewayProcess } from '../helpers/gateway-process.js'
import type { HubBroker, HubRecorder } from '../helpers/hub-broker.js'
import { closeHubScenario, startHubScenario, type HubScenario } from '../helpers/hub-scenario.js'
import { awaitDelivery, checkDelivery, deliveryProblems, Ledger, publishSequence, testDevices, type TestDevice } from '../helpers/ledger.js'
import { metricValue } from '../helpers/metrics.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const seeded = testDevices('meter', 'c', 10)
/** Added through the API, not in the config: only the database knows it. */
const added: TestDevice = { productId: 'meter', deviceId: 'api-added', secret: 'secret-api-added-0123' }
const PER_DEVICE = 300
const RECORDER_ID = 'hub-recorder-corruption'

interface SalvageHealth {
  status: string
  reasons: string[]
  store?: { salvage: { reason: string; movedTo: string; headerRebuilt: boolean; tables: { table: string; rows: number; readErrors: number }[] } }
}

describe('a damaged gateway.db', () => {
  let s: HubScenario | undefined
  let hub: HubBroker
  let recorder: HubRecorder
  let gateway: GatewayProcess
  let clients: MqttClient[] = []

  beforeEach(async (ctx) => {
    s = await startHubScenario(ctx, { gw, children: [...seeded, added], recordFilter: 'upload_data/meter/#', recorderId: RECORDER_ID, config: { devices: seeded } })
    ;({ hub, recorder, gateway, clients } = s)
    await hub.stop()
  })

  afterEach(() => closeHubScenario(s && { ...s, clients }))

  /**
   * Every device (the API-added one too) gets PER_DEVICE messages acknowledged; the hub is down.
   * The backlog is a few rows more: the gateway's own messages (its children's connection states).
   */
  async function acknowledgedBacklog(ledger: Ledger): Promise<{ acked: number; backlog: number }> {
    await gateway.start()
    const r = await gateway.api('POST', '/api/devices', { productId: added.productId, deviceId: added.deviceId, secret: added.secret })
    expect(r.status, JSON.stringify(r.body)).toBe(201)
    const all = [...seeded, added]
    clients = await Promise.all(all.map((d) => connectDevice(gateway.externalUrl, d)))
    const acked = await Promise.all(all.map((d, i) => publishSequence(clients[i], d, ledger, { count: PER_DEVICE, window: 20, padBytes: 64 })))
    await Promise.all(clients.map((c) => c.endAsync()))
    clients = []
    expect(acked).toEqual(all.map(() => PER_DEVICE))
    return { acked: ledger.ackedCount, backlog: (await gateway.health()).outbox.messages }
  }

  it.each([
    { damage: 'one page in the middle overwritten', header: false },
    { damage: 'the first 100 bytes (the header) overwritten', header: true },
  ])('$damage: starts degraded, salvages and delivers what is readable, takes in again, and the damaged file is kept', async ({ header }) => {
    const ledger = new Ledger()
    const { acked, backlog } = await acknowledgedBacklog(ledger)
    expect(await gateway.stop()).toBe(0)

    const db = path.join(gateway.dataDir, 'gateway.db')
    expect(existsSync(`${db}-wal`), 'a clean stop checkpoints the WAL into the file').toBe(false)
    // The stop adds the children's last connection states: count the rows in the file itself.
    const rows = countRows(db, 'outbox')
    expect(rows).toBeGreaterThanOrEqual(backlog)
    damage(db, header ? 'header' : 'page', 'outbox')

    await gateway.start()
    const h = (await gateway.api<SalvageHealth>('GET', '/api/health')).body
    expect(h.status).toBe('degraded')
    expect(h.reasons).toContain('store_salvaged')
    const salvage = h.store!.salvage
    expect(salvage.reason).toMatch(header ? /file is not a database/ : /malformed|corrupt/i)
    expect(salvage.headerRebuilt).toBe(header)
    const outbox = salvage.tables.find((t) => t.table === 'outbox')!
    const devices = salvage.tables.find((t) => t.table === 'devices')!
    console.log(`corruption (${header ? 'header' : 'page'}): ${outbox.rows} of ${rows} outbox rows salvaged, ${outbox.readErrors} failed read(s); ${devices.rows} devices`)
    if (header) {
      expect(outbox.rows, 'a lost header hides no row').toBe(rows)
    } else {
      expect(outbox.rows).toBeLessThan(rows)
      expect(outbox.rows, 'one page holds a few dozen rows, not more').toBeGreaterThan(rows - 100)
      expect(outbox.readErrors).toBeGreaterThan(0)
    }
    expect(devices.rows).toBe(seeded.length + 1)
    expect((await gateway.health()).outbox.messages).toBe(outbox.rows)

    // The damaged file is kept beside the new one, and the log says what happened with the code.
    expect(salvage.movedTo.startsWith(`${db}.corrupt-`)).toBe(true)
    expect(existsSync(salvage.movedTo)).toBe(true)
    expect(readdirSync(gateway.dataDir).filter((f) => f.includes('salvage-tmp'))).toEqual([])
    const logs = gateway.logs()
    expect(logs).toContain('IHE_STORE_SALVAGED')
    expect(logs).toMatch(new RegExp(`salvaged into a new one: outbox ${outbox.rows}`))
    expect(logs).toContain('may be lost')
    const metrics = (await gateway.api<string>('GET', '/metrics')).body
    expect(metricValue(metrics, 'iothub_edge_store_salvaged_rows', { table: 'outbox' })).toBe(outbox.rows)
    expect(metricValue(metrics, 'iothub_edge_store_salvage_pending')).toBe(1)

    // It takes in again, and the device only the database knew still logs in.
    const again = await connectDevice(gateway.externalUrl, added)
    clients.push(again)
    expect(await publishSequence(again, added, ledger, { count: 50, window: 10 })).toBe(50)

    // What was salvaged (and what came after) reaches the hub, each device's order kept.
    await hub.start()
    const report = await awaitDelivery(ledger, recorder.messages, gateway, { timeoutMs: 45_000 })
    expect(deliveryProblems(report)).toEqual([])
    if (header) expect(report.missing).toEqual([])
    // Lost: at most the rows on the damaged page; every other acknowledged message arrived.
    expect(report.missing.length).toBeLessThanOrEqual(rows - outbox.rows)
    expect(report.arrived.size).toBe(acked + 50 - report.missing.length)
    console.log(`corruption (${header ? 'header' : 'page'}): ${report.arrived.size} of ${acked + 50} acknowledged messages at the hub`)

    // The operator acknowledges: healthy again (the hub is up), the report kept as acknowledged.
    const ack = await runCli(['store', 'ack', '-c', gateway.configFile])
    expect(ack.stdout + ack.stderr).toContain('salvage acknowledged')
    expect(ack.code).toBe(0)
    await gateway.waitForHealth((x) => x.status === 'ok', 15_000, 'health ok after store ack')
    expect(existsSync(path.join(gateway.dataDir, 'store-salvage.json'))).toBe(false)
    expect(metricValue((await gateway.api<string>('GET', '/metrics')).body, 'iothub_edge_store_salvage_pending')).toBe(0)
    expect(existsSync(salvage.movedTo), 'acknowledging never deletes the damaged file').toBe(true)

    // SIGHUP is a clean stop (exit 0, not 129): the next start finds no unclean stop and no damage.
    process.kill(gateway.pid!, 'SIGHUP')
    await expect.poll(() => gateway.running, { timeout: 15_000 }).toBe(false)
    expect(gateway.exitCode).toBe(0)
    await gateway.start()
    expect((await gateway.api<SalvageHealth>('GET', '/api/health')).body.reasons).not.toContain('store_salvaged')
    expect(gateway.logs()).not.toContain('without a clean stop')
  }, 120_000)

  it('after a kill -9, the next start says so in one line with the backlog waiting', async () => {
    const ledger = new Ledger()
    const { acked, backlog } = await acknowledgedBacklog(ledger)
    await gateway.kill9()
    await gateway.start()
    const lines = gateway.logs().split('\n').filter((l) => l.includes('without a clean stop'))
    expect(lines).toHaveLength(1)
    // Every acknowledged message, plus the children's connection states the gateway sent itself.
    const waiting = Number(/(\d+) message\(s\) waiting in the outbox/.exec(lines[0])?.[1])
    expect(waiting).toBeGreaterThanOrEqual(backlog)
    // The hub is down: the outbox only grows after the line (the gateway's own status reports).
    expect(waiting).toBeLessThanOrEqual((await gateway.health()).outbox.messages)
    expect(lines[0]).toContain('quick_check')
    // The check found nothing wrong: not degraded for that, and nothing lost.
    expect((await gateway.api<SalvageHealth>('GET', '/api/health')).body.reasons).not.toContain('store_salvaged')
    await hub.start()
    const report = await awaitDelivery(ledger, recorder.messages, gateway, { timeoutMs: 45_000 })
    expect(report.missing).toEqual([])
    expect(checkDelivery(ledger, recorder.messages).arrived.size).toBe(acked)
  }, 90_000)
})
