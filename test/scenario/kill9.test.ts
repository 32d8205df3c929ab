// kill -9 of the gateway (DESIGN.md, "Durability rules": an acknowledged message survives a crash
// or power cut). The test records exactly which publishes got a PUBACK before the kill; after a
// restart every one of them reaches the hub, duplicates only as byte-identical copies with the
// same MessageId, and each device's order is kept. The kill lands at a random point; the point
// is printed so a failure can be replayed.
import type { MqttClient } from 'mqtt'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { connectDevice } from '../helpers/device.js'
import type { GatewayProcess } from '../helpers/gateway-process.js'
import type { HubBroker, HubRecorder } from '../helpers/hub-broker.js'
import { closeHubScenario, startHubScenario, type HubScenario } from '../helpers/hub-scenario.js'
import { awaitDelivery, checkDelivery, deliveryProblems, explainMissing, Ledger, publishSequence, testDevices } from '../helpers/ledger.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const devices = testDevices('meter', 'k', 10)
const RECORDER_ID = 'hub-recorder-kill9'

/** An integer in [min, max), logged so that a failing run can be reproduced. */
function randomPoint(what: string, min: number, max: number): number {
  const n = min + Math.floor(Math.random() * (max - min))
  console.log(`kill9 scenario: ${what} = ${n}`)
  return n
}

async function until(cond: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(2)
  }
}

describe('gateway killed with SIGKILL', () => {
  let s: HubScenario | undefined
  let hub: HubBroker
  let recorder: HubRecorder
  let gateway: GatewayProcess
  let clients: MqttClient[] = []

  beforeEach(async (ctx) => {
    s = await startHubScenario(ctx, { gw, children: devices, recordFilter: 'upload_data/meter/#', recorderId: RECORDER_ID })
    ;({ hub, recorder, gateway, clients } = s)
  })

  afterEach(() => closeHubScenario(s && { ...s, clients }))

  async function connectAll(): Promise<void> {
    clients = await Promise.all(devices.map((d) => connectDevice(gateway.externalUrl, d)))
  }

  async function expectAllDelivered(ledger: Ledger): Promise<void> {
    const report = await awaitDelivery(ledger, recorder.messages, gateway, { timeoutMs: 45_000 })
    if (report.missing.length) {
      expect.fail(await explainMissing(report, { gateway, hub, recorded: recorder.messages, recorderClientId: RECORDER_ID }))
    }
    expect(deliveryProblems(report)).toEqual([])
  }

  it('while buffering (hub down): every message PUBACKed before the kill reaches the hub after a restart', async () => {
    const perDevice = 2_000
    const ledger = new Ledger()
    await hub.stop()
    await gateway.start()
    await connectAll()

    const killAt = randomPoint('PUBACKs before the kill', 2_000, devices.length * perDevice - 4_000)
    const streams = Promise.all(devices.map((d, i) => publishSequence(clients[i], d, ledger, { count: perDevice, window: 10 })))
    await until(() => ledger.ackedCount >= killAt, 30_000, `${killAt} PUBACKs`)
    await gateway.kill9()
    // Settle the publishes that were waiting for a PUBACK when the gateway died: not acknowledged.
    await Promise.all(clients.map((c) => c.endAsync(true)))
    await streams

    const acked = ledger.ackedCount
    const sent = ledger.byId.size
    console.log(`kill9 while buffering: ${acked} PUBACKed, ${sent - acked} sent without a PUBACK`)
    expect(acked).toBeGreaterThanOrEqual(killAt)
    expect(acked, 'the kill should interrupt the devices mid-stream').toBeLessThan(devices.length * perDevice)

    await gateway.start()
    // Before the hub is back: everything acknowledged is still in the outbox after the crash.
    const h = await gateway.health()
    expect(h.outbox.messages).toBeGreaterThanOrEqual(acked)
    await hub.start()
    await expectAllDelivered(ledger)
  }, 80_000)

  it('while draining a large backlog: every PUBACKed message arrives, duplicates only as the same MessageId and bytes', async () => {
    const perDevice = 3_000
    const total = devices.length * perDevice
    const ledger = new Ledger()
    await hub.stop()
    await gateway.start()
    await connectAll()
    const acked = await Promise.all(devices.map((d, i) => publishSequence(clients[i], d, ledger, { count: perDevice, window: 20 })))
    expect(acked).toEqual(devices.map(() => perDevice))
    await Promise.all(clients.map((c) => c.endAsync()))
    clients = []

    const killAt = randomPoint('messages at the hub before the kill', total / 10, total / 2)
    await hub.start()
    // The recorder only sees test messages, and none twice before the kill.
    await until(() => recorder.messages.length >= killAt, 45_000, `${killAt} messages at the hub`)
    await gateway.kill9()
    const before = checkDelivery(ledger, recorder.messages).arrived.size
    console.log(`kill9 while draining: ${before} of ${total} at the hub when the gateway died`)
    expect(before, 'the kill should land mid-drain').toBeLessThan(total)

    await gateway.start()
    await expectAllDelivered(ledger)
    const report = checkDelivery(ledger, recorder.messages)
    expect(report.arrived.size).toBe(total)
    console.log(`kill9 while draining: ${report.duplicates} duplicate(s) after the restart`)
  }, 80_000)
})
