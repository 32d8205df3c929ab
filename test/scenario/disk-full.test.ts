// A full data disk (DESIGN.md, "Durability rules"): the gateway stops acknowledging instead of
// acknowledging what it cannot keep, says so (/api/health degraded, CONNACK 3 to new devices),
// does not crash, and resumes by itself once space is freed; every message it did PUBACK, before
// and after the full period, reaches the hub. The data folder lives on a 4 MiB tmpfs filled up by
// a filler file, so this needs root (CI runs as root); the tmpfs is unmounted even on failure.
import type { MqttClient } from 'mqtt'
import { rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { connectDevice, type ConnectError } from '../helpers/device.js'
import type { GatewayProcess } from '../helpers/gateway-process.js'
import type { HubBroker, HubRecorder } from '../helpers/hub-broker.js'
import { closeHubScenario, startHubScenario, type HubScenario } from '../helpers/hub-scenario.js'
import { awaitDelivery, deliveryProblems, explainMissing, Ledger, publishSequence } from '../helpers/ledger.js'
import { metricValue } from '../helpers/metrics.js'
import { isRoot, mountSmallDisk, type SmallDisk } from '../helpers/small-disk.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const dev = { productId: 'meter', deviceId: 'f1', secret: 'secret-f1' }
const TMPFS_SIZE = '4m'
/** What the filler leaves free: room for a few hundred messages, then the disk is full. */
const LEFT_FREE = 192 * 1024
const RECORDER_ID = 'hub-recorder-disk-full'

describe.skipIf(!isRoot)('data disk full', () => {
  let disk: SmallDisk | undefined
  let s: HubScenario | undefined
  let hub: HubBroker
  let recorder: HubRecorder
  let gateway: GatewayProcess
  const clients: MqttClient[] = []

  beforeAll(async () => {
    disk = mountSmallDisk(TMPFS_SIZE, 'tmpfs')
    s = await startHubScenario(undefined, { gw, children: [dev], recordFilter: 'upload_data/meter/#', recorderId: RECORDER_ID, options: { dataDir: path.join(disk.path, 'data') } })
    ;({ hub, recorder, gateway } = s)
    await hub.stop()
    await gateway.start()
  })

  afterAll(async () => {
    await closeHubScenario(s && { ...s, clients })
    disk?.unmount()
  })

  it('stops acknowledging, reports degraded and refuses CONNECT while full, resumes by itself, and loses nothing it acknowledged', async ({ onTestFailed }) => {
    onTestFailed(() => console.log(gateway.failure('output when the test failed').message))
    const ledger = new Ledger()
    const filler = path.join(disk!.path, 'filler')
    writeFileSync(filler, Buffer.alloc(Math.max(0, disk!.free() - LEFT_FREE)))

    // Publish until the gateway stops acknowledging: it closes the connection of a device whose
    // message it could not store.
    const first = await connectDevice(gateway.externalUrl, dev)
    clients.push(first)
    const closed = new Promise<void>((resolve) => first.once('close', () => resolve()))
    // A wide window makes big group commits; a failed one leaves WAL space behind that a tiny
    // write fits into with the disk still full (an intake that reopens too early shows below).
    const stream = publishSequence(first, dev, ledger, { count: 200_000, window: 100, padBytes: 400 })
    await Promise.race([closed, stream])
    expect(first.connected, 'the gateway closes the connection of a device whose message it cannot store').toBe(false)
    await first.endAsync(true) // settles the publishes still waiting: never acknowledged
    const ackedWhileFilling = await stream
    console.log(`disk full: ${ackedWhileFilling} PUBACKed before the gateway stopped acknowledging, ${ledger.byId.size - ackedWhileFilling} refused`)
    expect(ackedWhileFilling).toBeGreaterThan(0)
    expect(ledger.byId.size - ackedWhileFilling, 'the gateway must stop acknowledging once the disk is full').toBeGreaterThan(0)

    // Still running, and it says why it is not taking anything in.
    expect(gateway.running).toBe(true)
    const health = await gateway.api<{ status: string; reasons: string[] }>('GET', '/api/health')
    expect(health.status).toBe(503)
    expect(health.body.status).toBe('degraded')
    expect(health.body.reasons).toContain('disk_full')
    const metrics = (await gateway.api<string>('GET', '/metrics')).body
    expect(metricValue(metrics, 'iothub_edge_store_disk_full')).toBe(1)
    // New devices are turned away with CONNACK 3 (server unavailable), for as long as it lasts.
    const expectServerUnavailable = async (when: string): Promise<void> => {
      const err = (await connectDevice(gateway.externalUrl, dev).then(
        (c) => {
          clients.push(c)
          return new Error(`CONNECT accepted while the disk is full, ${when}`)
        },
        (e: unknown) => e,
      )) as ConnectError
      expect(err.code, err.message).toBe(3)
    }
    for (let i = 0; i < 3; i++) {
      await expectServerUnavailable(`attempt ${i + 1}`)
      await sleep(1_200) // the gateway probes the disk every second: it must keep refusing
    }

    // A restart while the disk is still full (a power cycle, a watchdog): it comes back up, degraded
    // from the start, still refusing new work, with everything it acknowledged still in its outbox.
    expect(await gateway.stop()).toBe(0)
    await gateway.start()
    const again = await gateway.api<{ status: string; reasons: string[] }>('GET', '/api/health')
    expect(again.status, JSON.stringify(again.body)).toBe(503)
    expect(again.body.reasons).toContain('disk_full')
    await expectServerUnavailable('after a restart')

    // Space again: intake resumes without a restart.
    rmSync(filler)
    await gateway.waitForHealth((h) => h.status === 'ok', 15_000, 'health ok after the filler is gone')
    const second = await connectDevice(gateway.externalUrl, dev)
    clients.push(second)
    const ackedAfter = await publishSequence(second, dev, ledger, { count: 500, window: 10, padBytes: 200 })
    expect(ackedAfter).toBe(500)
    await second.endAsync()
    expect(gateway.running).toBe(true)

    await hub.start()
    const report = await awaitDelivery(ledger, recorder.messages, gateway, { timeoutMs: 30_000 })
    if (report.missing.length) expect.fail(await explainMissing(report, { gateway, hub, recorded: recorder.messages, recorderClientId: RECORDER_ID, oneGatewayRun: true }))
    expect(deliveryProblems(report)).toEqual([])
    expect(ledger.ackedCount).toBe(ackedWhileFilling + 500)
  }, 80_000)
})
