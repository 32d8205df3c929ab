// A page of gateway.db damaged where the start's check could not see it (issue 17 item 4; decision
// 0014-damaged-store). Devices get big messages acknowledged while the hub (Mosquitto) is down: each
// payload spills onto a chain of overflow pages, and 3 x 200 x 10 KB is more than SQLite's page
// cache and WAL, so the early rows are read from the file itself. The chain of one of them is broken
// in the file:
// - under the running gateway: when the hub comes back the drain reads it, and the gateway must say
//   so once (IHE_STORE_CORRUPT, with what to do) and exit 70 without a clean stop; the next start
//   finds the unclean stop, runs quick_check, moves the file aside, salvages every readable row, and
//   what it salvaged reaches the hub;
// - after a clean stop: the start's cheap check follows the chains (before, it did not, and the
//   outbox's totals at start stopped every start), so the start salvages at once.
// And a page of the command queue damaged after a clean stop (the cheap check does not read it):
// the start reads it (held commands) and exits 70 without a clean stop (before: exit 1 after a clean
// stop, so every later start failed the same way); the next start salvages, the device gets the
// commands that could be read.
import type { MqttClient } from 'mqtt'
import { existsSync } from 'node:fs'
import path from 'node:path'
import Database from 'better-sqlite3'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { damage, overflowChainHeads, overwrite } from '../helpers/damaged-db.js'
import { connectDevice } from '../helpers/device.js'
import type { GatewayProcess } from '../helpers/gateway-process.js'
import type { HubBroker, HubRecorder } from '../helpers/hub-broker.js'
import { closeHubScenario, startHubScenario, type HubScenario } from '../helpers/hub-scenario.js'
import { awaitDelivery, deliveryProblems, Ledger, publishSequence, testDevices } from '../helpers/ledger.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const devices = testDevices('meter', 'r', 3)
const PER_DEVICE = 200
// Over two 4 KiB pages per message; more than SQLite's page cache (2 MB) and WAL (checkpointed every 4 MB) in all.
const PAD = 10_000

interface Health {
  status: string
  reasons: string[]
  store?: { salvage: { reason: string; movedTo: string; tables: { table: string; rows: number; readErrors: number }[] } }
}

describe('gateway.db damaged while the gateway runs', () => {
  let s: HubScenario | undefined
  let hub: HubBroker
  let recorder: HubRecorder
  let gateway: GatewayProcess
  let clients: MqttClient[] = []

  beforeEach(async (ctx) => {
    s = await startHubScenario(ctx, { gw, children: devices, recordFilter: 'upload_data/meter/#', recorderId: 'hub-recorder-corruption-running', config: { devices } })
    ;({ hub, recorder, gateway, clients } = s)
    await hub.stop()
  })

  afterEach(() => closeHubScenario(s && { ...s, clients }))

  /** Every device gets PER_DEVICE big messages acknowledged (the hub is down); an early overflow chain of the outbox is broken in the file. */
  async function damagedBacklog(ledger: Ledger, o: { stopFirst: boolean }): Promise<void> {
    await gateway.start()
    clients = await Promise.all(devices.map((d) => connectDevice(gateway.externalUrl, d)))
    const acked = await Promise.all(devices.map((d, i) => publishSequence(clients[i], d, ledger, { count: PER_DEVICE, window: 20, padBytes: PAD })))
    expect(acked).toEqual(devices.map(() => PER_DEVICE))
    if (o.stopFirst) expect(await gateway.stop()).toBe(0)
    const db = path.join(gateway.dataDir, 'gateway.db')
    const { pages, pageSize } = overflowChainHeads(db, 'outbox')
    expect(pages.length).toBeGreaterThan(PER_DEVICE)
    overwrite(db, (pages[Math.floor(pages.length / 20)] - 1) * pageSize, pageSize)
    const ro = new Database(db, { readonly: true })
    try {
      expect(() => ro.prepare('SELECT payload FROM outbox').all(), 'the damage is in what the gateway reads').toThrow(/malformed|corrupt/i)
    } finally {
      ro.close()
    }
  }

  /** The salvage the gateway reports; what it salvaged (all but the broken chain's message) reaches the hub. */
  async function salvagedAndDelivered(ledger: Ledger, what: string): Promise<void> {
    const h = (await gateway.api<Health>('GET', '/api/health')).body
    expect(h.reasons).toContain('store_salvaged')
    const outbox = h.store!.salvage.tables.find((t) => t.table === 'outbox')!
    expect(outbox.readErrors).toBeGreaterThan(0)
    expect(existsSync(h.store!.salvage.movedTo), 'the damaged file is kept').toBe(true)
    const report = await awaitDelivery(ledger, recorder.messages, gateway, { timeoutMs: 60_000 })
    expect(deliveryProblems(report)).toEqual([])
    // Lost: only the message whose payload ran over the damaged page.
    expect(report.missing.length).toBeGreaterThan(0)
    expect(report.missing.length).toBeLessThanOrEqual(2)
    expect(report.arrived.size).toBe(ledger.ackedCount - report.missing.length)
    expect(gateway.running).toBe(true)
    console.log(`${what}: ${report.arrived.size} of ${ledger.ackedCount} acknowledged messages at the hub, ${outbox.rows} outbox rows salvaged, ${outbox.readErrors} failed read(s)`)
  }

  it('damaged under the running gateway: the drain finds it, IHE_STORE_CORRUPT, exit 70; the next start salvages and the readable messages reach the hub', async () => {
    const ledger = new Ledger()
    await damagedBacklog(ledger, { stopFirst: false })

    // The hub is back: the drain reads the damaged page.
    await hub.start()
    await expect.poll(() => gateway.running, { timeout: 30_000 }).toBe(false)
    expect(gateway.exitCode).toBe(70)
    const fatal = gateway.logs().split('\n').filter((l) => l.includes('IHE_STORE_CORRUPT'))
    expect(fatal, 'said once').toHaveLength(1)
    expect(fatal[0]).toContain('gateway.db is damaged')
    expect(fatal[0]).toContain('the next start checks it and salvages')
    expect(gateway.logs()).not.toContain('uncaught exception')
    expect(existsSync(path.join(gateway.dataDir, 'gateway.lock')), 'no clean stop: the lock stays').toBe(true)

    // The next start (systemd's Restart=always) finds the unclean stop, runs quick_check, salvages.
    await gateway.start()
    expect(gateway.logs().split('\n').filter((l) => l.includes('without a clean stop') && l.includes('quick_check'))).toHaveLength(1)
    await salvagedAndDelivered(ledger, 'damaged while running')
  }, 150_000)

  it('damaged after a clean stop: the start\'s cheap check follows the overflow chains, salvages at once, nothing exits', async () => {
    const ledger = new Ledger()
    await damagedBacklog(ledger, { stopFirst: true })
    await gateway.start()
    expect(gateway.logs()).not.toContain('IHE_STORE_CORRUPT')
    await hub.start()
    await salvagedAndDelivered(ledger, 'damaged after a clean stop')
  }, 150_000)

  it('the command queue damaged after a clean stop (the cheap check does not read it): IHE_STORE_CORRUPT, exit 70 where it is read; the next start salvages and the device gets the readable commands', async () => {
    const target = devices[0]
    await gateway.start()
    const COMMANDS = 400
    for (let i = 0; i < COMMANDS; i++) {
      const r = await gateway.api('POST', `/api/devices/${target.productId}/${target.deviceId}/commands`, { name: 'set', payload: { i, pad: 'x'.repeat(300) } })
      expect(r.status, JSON.stringify(r.body)).toBeLessThan(300)
    }
    expect(await gateway.stop()).toBe(0)
    const db = path.join(gateway.dataDir, 'gateway.db')
    damage(db, 'page', 'commands')

    // The start reads the queue (held commands), or the device's connect does (its pending ones).
    let exitedAtStart = false
    try {
      await gateway.start()
    } catch {
      exitedAtStart = true
    }
    if (!exitedAtStart) {
      const c = await connectDevice(gateway.externalUrl, target).catch(() => undefined)
      if (c) clients.push(c)
      await expect.poll(() => gateway.running, { timeout: 30_000 }).toBe(false)
    }
    expect(gateway.exitCode).toBe(70)
    const fatal = gateway.logs().split('\n').filter((l) => l.includes('IHE_STORE_CORRUPT'))
    expect(fatal, 'said once').toHaveLength(1)
    expect(fatal[0]).toContain('gateway.db is damaged')
    expect(gateway.logs()).not.toContain('uncaught exception')

    await gateway.start()
    const h = (await gateway.api<Health>('GET', '/api/health')).body
    expect(h.reasons).toContain('store_salvaged')
    const commands = h.store!.salvage.tables.find((t) => t.table === 'commands')!
    expect(commands.readErrors).toBeGreaterThan(0)
    const got = new Set<number>()
    const device = await connectDevice(gateway.externalUrl, target)
    clients.push(device)
    device.on('message', (_t, payload) => got.add((JSON.parse(payload.toString()) as { i: number }).i))
    await expect.poll(() => got.size, { timeout: 30_000 }).toBe(commands.rows)
    expect(got.size).toBeGreaterThan(COMMANDS - 50)
    console.log(`command queue damaged (${exitedAtStart ? 'found at start' : 'found at the device connect'}): ${got.size} of ${COMMANDS} commands delivered after the salvage`)
  }, 150_000)
})
