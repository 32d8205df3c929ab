// A cloud outage (DESIGN.md, "Durability rules"): while the hub broker is down the gateway keeps
// acknowledging devices, holds everything in its outbox, and once the hub is back delivers every
// message it PUBACKed, in each device's order, with the MessageId fixed at intake (so any
// duplicate is a byte-identical copy the hub's duplicate filter can drop).
//
// The hub side is one recorder with a persistent session, subscribed (QoS 1) before the outage;
// the only publisher to the hub is the gateway. That keeps clear of Mosquitto 2.0.11's loss of
// acknowledged QoS 1 messages under many concurrent publishers (fixed upstream in 2.0.13); should
// anything go missing anyway, the failure says whether the gateway or the hub broker lost it.
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { connectDevice } from '../helpers/device.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HubBroker, type HubRecorder } from '../helpers/hub-broker.js'
import { awaitDelivery, checkDelivery, deliveryProblems, explainMissing, Ledger, publishSequence, testDevices } from '../helpers/ledger.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const devices = testDevices('meter', 'm', 20)
const PER_DEVICE = 1_000
const WINDOW = 20
const RECORDER_ID = 'hub-recorder-outage'

describe('hub outage', () => {
  let hub: HubBroker
  let recorder: HubRecorder
  let gateway: GatewayProcess
  const clients: MqttClient[] = []

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: devices } })
    await hub.start()
    recorder = await hub.subscribeAll('upload_data/meter/#', { clientId: RECORDER_ID })
    gateway = new GatewayProcess({ gateway: gw, northbound: { url: hub.url }, devices, log: { level: 'info' } })
    await gateway.start()
    await gateway.waitForHealth((h) => h.northbound.connected, 15_000, 'northbound connected')
  })

  afterAll(async () => {
    await Promise.allSettled(clients.splice(0).map((c) => c.endAsync(true)))
    await gateway?.close()
    await hub?.close()
  })

  it(`buffers ${devices.length * PER_DEVICE} messages from ${devices.length} devices while the hub is down and delivers every one, in order per device`, async ({ onTestFailed }) => {
    onTestFailed(() => console.log(gateway.failure('output when the test failed').message))
    const total = devices.length * PER_DEVICE
    const ledger = new Ledger()

    await hub.stop()
    await gateway.waitForHealth((h) => !h.northbound.connected, 15_000, 'northbound disconnected')
    for (const d of devices) clients.push(await connectDevice(gateway.externalUrl, d))
    const acked = await Promise.all(devices.map((d, i) => publishSequence(clients[i], d, ledger, { count: PER_DEVICE, window: WINDOW })))

    // Every publish got its PUBACK while the hub was unreachable, and all of it waits in the outbox.
    expect(acked).toEqual(devices.map(() => PER_DEVICE))
    const buffered = await gateway.health()
    expect(buffered.northbound.connected).toBe(false)
    expect(buffered.outbox.messages).toBeGreaterThanOrEqual(total)
    expect(checkDelivery(ledger, recorder.messages).arrived.size).toBe(0)

    await hub.start()
    const report = await awaitDelivery(ledger, recorder.messages, gateway, { timeoutMs: 60_000 })
    if (report.missing.length) {
      expect.fail(await explainMissing(report, { gateway, hub, recorded: recorder.messages, recorderClientId: RECORDER_ID, oneGatewayRun: true }))
    }
    expect(deliveryProblems(report)).toEqual([])
    expect(report.arrived.size).toBe(total)
    // Delivered means gone from the outbox (only the gateway's own status may still be on its way).
    await gateway.waitForHealth((h) => h.outbox.messages <= 1, 15_000, 'outbox drained')
  }, 85_000)
})
