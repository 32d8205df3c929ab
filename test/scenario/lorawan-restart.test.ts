// ChirpStack keeps publishing while the gateway is stopped (issue 8, "Event intake"): the gateway's
// persistent session at ChirpStack's broker (fixed client id, clean=false, MQTT 5 session expiry)
// holds the events, and after the restart every one of them reaches the hub. The gateway runs as a
// real process (bin/iothub-edge.js with a config file carrying `lorawan:`); ChirpStack's broker is a
// real Mosquitto with its queue limit raised above the 2,000 events (Mosquitto's default of 1,000
// bounds what a restart can hold: docs/operators/lorawan.md).
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HubBroker, type HubRecorder } from '../helpers/hub-broker.js'
import { ChirpstackBroker, ChirpstackSim } from '../helpers/chirpstack.js'
import { metricValue } from '../helpers/metrics.js'
import { setTimeout as sleep } from 'node:timers/promises'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const DEVICES = Array.from({ length: 20 }, (_, i) => `70b3d5${String(i).padStart(10, '0')}`)
const PER_DEVICE = 100
const RECORDER_ID = 'hub-recorder-lorawan-restart'

async function until<T>(check: () => Promise<T | undefined | false>, timeoutMs: number, what: () => string): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await check()
    if (v !== undefined && v !== false) return v
    if (Date.now() > deadline) throw new Error(`${what()} (waited ${timeoutMs} ms)`)
    await sleep(100)
  }
}

describe('LoRaWAN events published while the gateway is stopped', () => {
  let hub: HubBroker
  let recorder: HubRecorder
  let broker: ChirpstackBroker
  let cs: ChirpstackSim
  let gateway: GatewayProcess
  const metrics = async (): Promise<string> => (await fetch(`http://127.0.0.1:${gateway.httpPort}/metrics`)).text()
  const markers = (): Set<string> =>
    new Set(recorder.messages.filter((m) => m.topic.includes('/fport_1/')).map((m) => Buffer.from((JSON.parse(m.payload.toString()) as { raw: string }).raw, 'base64').toString()))

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: DEVICES.map((d) => ({ productId: 'lorawan', deviceId: d })) } })
    await hub.start()
    recorder = await hub.subscribeAll('upload_data/lorawan/#', { clientId: RECORDER_ID })
    broker = new ChirpstackBroker({ maxQueuedMessages: 10_000 })
    await broker.start()
    cs = new ChirpstackSim(broker.url, 'json')
    await cs.start()
    gateway = new GatewayProcess({
      gateway: gw,
      northbound: { url: hub.url },
      lorawan: { chirpstack: { mqtt: { url: broker.url } }, autoRegister: { productIdFrom: 'fixed', productId: 'lorawan' } },
      log: { level: 'info' },
    })
    await gateway.start()
    await gateway.waitForHealth((h) => h.northbound.connected, 15_000, 'northbound connected')
  }, 60_000)

  afterAll(async () => {
    await gateway?.close()
    await cs?.stop()
    await broker?.close()
    await hub?.close()
  })

  it(`delivers all ${DEVICES.length * PER_DEVICE} events ChirpStack published during the restart`, async ({ onTestFailed }) => {
    onTestFailed(() => console.log(gateway.failure('output when the test failed').message))
    const total = DEVICES.length * PER_DEVICE
    // One event through first: the gateway's session and its subscription exist at the broker.
    await until(async () => metricValue(await metrics(), 'iothub_edge_lorawan_broker_connected') === 1, 15_000, () => 'the adapter did not connect to ChirpStack\'s broker')
    await cs.publish('up', { devEui: DEVICES[0] }, { deduplicationId: cs.nextId(), fPort: 2, data: Buffer.from('hello').toString('base64') })
    await recorder.waitFor((m) => m.topic.includes('/fport_2/'), 15_000, 'the first event')

    await gateway.stop()
    for (let n = 0; n < PER_DEVICE; n++) {
      // QoS 1 with a window: each publish resolves on the broker's PUBACK (queued for the session).
      await Promise.all(DEVICES.map((d, i) =>
        cs.publish('up', { devEui: d }, { deduplicationId: cs.nextId(), fPort: 1, fCnt: n, data: Buffer.from(`${i}:${n}`).toString('base64') })))
    }
    expect(markers().size).toBe(0)

    await gateway.start()
    await until(async () => (markers().size >= total ? true : undefined), 120_000, () => `only ${markers().size} of ${total} events reached the hub`)
    const got = markers()
    const missing = DEVICES.flatMap((_, i) => Array.from({ length: PER_DEVICE }, (_, n) => `${i}:${n}`)).filter((k) => !got.has(k))
    expect(missing).toEqual([])
    // Per device, in ChirpStack's order (the outbox keeps order per device).
    for (const [i, d] of DEVICES.entries()) {
      const seq = recorder.messages
        .filter((m) => m.topic.startsWith(`upload_data/lorawan/${d}/fport_1/`))
        .map((m) => Buffer.from((JSON.parse(m.payload.toString()) as { raw: string }).raw, 'base64').toString())
      const firstCopies = seq.filter((k, j) => seq.indexOf(k) === j)
      expect(firstCopies).toEqual(Array.from({ length: PER_DEVICE }, (_, n) => `${i}:${n}`))
    }
  }, 180_000)
})

describe('LoRaWAN events while the gateway is killed (kill -9) mid-stream', () => {
  let hub: HubBroker
  let recorder: HubRecorder
  let broker: ChirpstackBroker
  let cs: ChirpstackSim
  let gateway: GatewayProcess
  const metrics = async (): Promise<string> => (await fetch(`http://127.0.0.1:${gateway.httpPort}/metrics`)).text()
  const markers = (): Set<string> =>
    new Set(recorder.messages.filter((m) => m.topic.includes('/fport_1/')).map((m) => Buffer.from((JSON.parse(m.payload.toString()) as { raw: string }).raw, 'base64').toString()))

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: DEVICES.map((d) => ({ productId: 'lorawan', deviceId: d })) } })
    await hub.start()
    recorder = await hub.subscribeAll('upload_data/lorawan/#', { clientId: `${RECORDER_ID}-kill9` })
    broker = new ChirpstackBroker({ maxQueuedMessages: 10_000 })
    await broker.start()
    cs = new ChirpstackSim(broker.url, 'json')
    await cs.start()
    gateway = new GatewayProcess({
      gateway: gw,
      northbound: { url: hub.url },
      lorawan: { chirpstack: { mqtt: { url: broker.url } }, autoRegister: { productIdFrom: 'fixed', productId: 'lorawan' } },
      log: { level: 'info' },
    })
    await gateway.start()
    await gateway.waitForHealth((h) => h.northbound.connected, 15_000, 'northbound connected')
  }, 60_000)

  afterAll(async () => {
    await gateway?.close()
    await cs?.stop()
    await broker?.close()
    await hub?.close()
  })

  it('loses none of the events it had not acknowledged when it was killed', async ({ onTestFailed }) => {
    onTestFailed(() => console.log(gateway.failure('output when the test failed').message))
    await until(async () => metricValue(await metrics(), 'iothub_edge_lorawan_broker_connected') === 1, 15_000, () => 'the adapter did not connect to ChirpStack\'s broker')
    await cs.publish('up', { devEui: DEVICES[0] }, { deduplicationId: cs.nextId(), fPort: 2, data: Buffer.from('hello').toString('base64') })
    await recorder.waitFor((m) => m.topic.includes('/fport_2/'), 15_000, 'the first event')

    const total = DEVICES.length * PER_DEVICE
    const publishing = (async () => {
      for (let n = 0; n < PER_DEVICE; n++) {
        await Promise.all(DEVICES.map((d, i) =>
          cs.publish('up', { devEui: d }, { deduplicationId: cs.nextId(), fPort: 1, fCnt: n, data: Buffer.from(`${i}:${n}`).toString('base64') })))
      }
    })()
    // Killed while it is taking the events in: some reached the hub, most did not yet.
    await until(async () => (markers().size >= 100 ? true : undefined), 60_000, () => 'no events reached the hub before the kill')
    await gateway.kill9()
    await publishing
    await gateway.start()
    await until(async () => (markers().size >= total ? true : undefined), 120_000, () => `only ${markers().size} of ${total} events reached the hub`)
    const got = markers()
    expect(DEVICES.flatMap((_, i) => Array.from({ length: PER_DEVICE }, (_, n) => `${i}:${n}`)).filter((k) => !got.has(k))).toEqual([])
  }, 180_000)
})
