// Exit code 70 (EX_SOFTWARE; docs/operators/troubleshooting.md "Exit codes", decision 0014): the
// store found damaged while the gateway runs. Devices get a backlog larger than SQLite's page cache
// acknowledged while the hub (Mosquitto) is down; then the older half of the outbox's pages is
// overwritten under the running gateway. When the hub is back, the hub link reads those pages: the
// gateway logs IHE_STORE_CORRUPT and exits 70 without a clean stop, so that the next start (systemd
// restarts it) runs quick_check, salvages what can be read, and delivers it.
import path from 'node:path'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { middleLeafPages, overwrite } from '../helpers/damaged-db.js'
import { connectDevice } from '../helpers/device.js'
import type { GatewayProcess } from '../helpers/gateway-process.js'
import type { HubBroker } from '../helpers/hub-broker.js'
import { closeHubScenario, startHubScenario, type HubScenario } from '../helpers/hub-scenario.js'
import { Ledger, publishSequence, testDevices } from '../helpers/ledger.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const devices = testDevices('meter', 'r', 4)
const PER_DEVICE = 1_500

describe('gateway.db damaged while the gateway runs', () => {
  let s: HubScenario | undefined
  let hub: HubBroker
  let gateway: GatewayProcess

  beforeEach(async (ctx) => {
    s = await startHubScenario(ctx, { gw, children: devices, recordFilter: 'upload_data/meter/#', recorderId: 'hub-recorder-corruption-running' })
    ;({ hub, gateway } = s)
    await hub.stop()
  })

  afterEach(() => closeHubScenario(s))

  it('exits 70 (IHE_STORE_CORRUPT) without a clean stop; the next start checks, salvages and runs', async () => {
    await gateway.start()
    const ledger = new Ledger()
    s!.clients = await Promise.all(devices.map((d) => connectDevice(gateway.externalUrl, d)))
    // ~4 MB of rows: the oldest pages have left SQLite's 2 MB page cache.
    const acked = await Promise.all(devices.map((d, i) => publishSequence(s!.clients[i], d, ledger, { count: PER_DEVICE, window: 20, padBytes: 600 })))
    expect(acked).toEqual(devices.map(() => PER_DEVICE))

    const db = path.join(gateway.dataDir, 'gateway.db')
    const { pages, pageSize } = middleLeafPages(db, 'outbox')
    for (const page of pages.slice(0, Math.floor(pages.length / 2))) overwrite(db, (page - 1) * pageSize, pageSize)

    await hub.start()
    await expect.poll(() => gateway.running, { timeout: 30_000 }).toBe(false)
    expect(gateway.exitCode).toBe(70)
    expect(gateway.logs()).toContain('IHE_STORE_CORRUPT')

    await gateway.start()
    expect(gateway.logs()).toMatch(/ended without a clean stop.*quick_check/)
    const h = (await gateway.api<{ reasons: string[] }>('GET', '/api/health')).body
    expect(h.reasons).toContain('store_salvaged')
  }, 120_000)
})
