// A small data disk filled by the gateway's own database and WAL (issue 17, item 5; decision
// 0015-wal-full-disk): the outbox quota is larger than the disk, the hub is down, devices publish
// until the disk is full and the gateway stops acknowledging. Once the hub is back the gateway must
// recover by itself: drain, give the WAL's space back, take in again, and lose nothing it
// acknowledged. Before the fix it stayed degraded for good: the deletions the hub's PUBACKs
// trigger, and the checkpoint, need room on the disk the WAL had taken. A 12 MiB tmpfs, so this
// needs root (CI runs as root); unmounted even on failure.
import type { MqttClient } from 'mqtt'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { connectDevice } from '../helpers/device.js'
import type { GatewayProcess } from '../helpers/gateway-process.js'
import type { HubBroker, HubRecorder } from '../helpers/hub-broker.js'
import { closeHubScenario, startHubScenario, type HubScenario } from '../helpers/hub-scenario.js'
import { awaitDelivery, deliveryProblems, explainMissing, Ledger, publishSequence, testDevices } from '../helpers/ledger.js'
import { isRoot, mountSmallDisk, type SmallDisk } from '../helpers/small-disk.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const devices = testDevices('meter', 'w', 4)
const TMPFS_SIZE = '12m'
const RECORDER_ID = 'hub-recorder-wal-full'

describe.skipIf(!isRoot)('data disk filled by the gateway’s own WAL', () => {
  let disk: SmallDisk | undefined
  let s: HubScenario | undefined
  let hub: HubBroker
  let recorder: HubRecorder
  let gateway: GatewayProcess
  let clients: MqttClient[] = []

  beforeAll(async () => {
    disk = mountSmallDisk(TMPFS_SIZE, 'walfull')
    s = await startHubScenario(undefined, {
      gw,
      children: devices,
      recordFilter: 'upload_data/meter/#',
      recorderId: RECORDER_ID,
      // Larger than the disk: the disk fills long before the quota evicts anything.
      config: { store: { outbox: { maxBytes: 256 * 1024 * 1024 }, history: { enabled: false } } },
      options: { dataDir: path.join(disk.path, 'data') },
    })
    ;({ hub, recorder, gateway } = s)
    await hub.stop()
    await gateway.start()
  })

  afterAll(async () => {
    await closeHubScenario(s && { ...s, clients })
    disk?.unmount()
  })

  it('recovers by itself once the hub drains the outbox: intake again, nothing acknowledged lost', async ({ onTestFailed }) => {
    onTestFailed(() => console.log(gateway.failure('output when the test failed').message))
    const ledger = new Ledger()
    clients = await Promise.all(devices.map((d) => connectDevice(gateway.externalUrl, d)))
    // Until the disk is full: the gateway closes the connection of a device whose message it
    // could not store, and says disk_full; the publishes still waiting then are not acknowledged.
    const closed = new Promise<void>((resolve) => clients.forEach((c) => c.once('close', () => resolve())))
    const streams = Promise.all(devices.map((d, i) => publishSequence(clients[i], d, ledger, { count: 1_000_000, window: 50, padBytes: 300 })))
    await Promise.race([closed, streams])
    await gateway.waitForHealth((h) => ((h as unknown as { reasons: string[] }).reasons ?? []).includes('disk_full'), 30_000, 'disk_full')
    await Promise.allSettled(clients.map((c) => c.endAsync(true)))
    clients = []
    const total = (await streams).reduce((a, b) => a + b, 0)
    console.log(`WAL full disk: ${total} PUBACKed before the disk was full`)
    expect(total).toBeGreaterThan(1_000)

    // The hub comes back: the gateway drains, and comes back to health on its own.
    await hub.start()
    await gateway.waitForHealth((h) => h.status === 'ok', 60_000, 'health ok after the hub drained the outbox')
    const report = await awaitDelivery(ledger, recorder.messages, gateway, { timeoutMs: 60_000 })
    if (report.missing.length) expect.fail(await explainMissing(report, { gateway, hub, recorded: recorder.messages, recorderClientId: RECORDER_ID, oneGatewayRun: true }))
    expect(deliveryProblems(report)).toEqual([])

    // It takes in again, and more than a token amount: the space the WAL held is usable.
    const again = await connectDevice(gateway.externalUrl, devices[0])
    clients.push(again)
    expect(await publishSequence(again, devices[0], ledger, { count: 2_000, window: 20, padBytes: 300 })).toBe(2_000)
    expect(gateway.running).toBe(true)
  }, 180_000)
})
