// The hub link's manners: `northbound.maxRate` paces a backlog (so a site's uplink is not flooded
// after an outage), and an unreachable hub is retried with a growing delay, not hammered.
// Only bounds that a slower machine cannot break are asserted: pacing can make a drain slower,
// never faster; a busy machine makes fewer reconnect attempts, never more.
import { afterEach, describe, expect, it } from 'vitest'
import { HubBroker } from '../helpers/hub-broker.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { connectDevice, newMessageId, publishQos1 } from '../helpers/device.js'
import { freePort } from '../helpers/ports.js'
import { metricValue } from '../helpers/metrics.js'

const gwLogin = { productId: 'gateways', deviceId: 'gw-pace', secret: 'gw-secret' }
const dev = { productId: 'meter', deviceId: 'm-1', secret: 'm-secret' }

describe('northbound pacing and backoff', () => {
  const cleanup: (() => Promise<void>)[] = []
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c()
  })

  it('drains a backlog no faster than northbound.maxRate', async () => {
    const hub = new HubBroker({ devices: [], gateway: { ...gwLogin, children: [dev] } })
    await hub.start()
    cleanup.push(() => hub.close())
    const recorder = await hub.subscribeAll(`upload_data/${dev.productId}/#`)
    await hub.stop()
    const gateway = new GatewayProcess({ gateway: gwLogin, northbound: { url: hub.url, maxRate: 40 }, devices: [dev], log: { level: 'warn' } })
    await gateway.start()
    cleanup.push(() => gateway.close())
    const d = await connectDevice(gateway.externalUrl, dev)
    cleanup.push(() => d.endAsync(true))
    const n = 120
    for (let i = 0; i < n; i++) await publishQos1(d, `upload_data/${dev.productId}/${dev.deviceId}/t/${newMessageId()}`, String(i))

    await hub.start()
    await gateway.waitForHealth((h) => h.northbound.connected, 30_000, 'link up')
    const start = Date.now()
    await recorder.waitFor((m) => m.payload.toString() === String(n - 1), 30_000, 'the last telemetry')
    const seconds = (Date.now() - start) / 1000
    const telemetry = recorder.messages.filter((m) => m.topic.includes('/t/')).length
    expect(telemetry).toBeGreaterThanOrEqual(n)
    // At 40 msg/s, 120 messages (plus the gateway's own status and $connection) take at least ~3 s;
    // unpaced they would take a few milliseconds. A token bucket may start with up to 1 s of burst.
    expect(seconds).toBeGreaterThan(1.8)
  })

  it('retries an unreachable hub with a growing delay (1 s doubling), not once a second', async () => {
    const deadPort = await freePort() // nothing listens here
    const gateway = new GatewayProcess({ gateway: gwLogin, northbound: { url: `mqtt://127.0.0.1:${deadPort}` }, log: { level: 'warn' } })
    await gateway.start()
    cleanup.push(() => gateway.close())
    const started = Date.now()
    await new Promise((r) => setTimeout(r, 9_000))
    const res = await fetch(`http://127.0.0.1:${gateway.httpPort}/metrics`)
    const attempts = metricValue(await res.text(), 'iothub_edge_northbound_reconnects_total')
    const elapsed = (Date.now() - started) / 1000
    // Delays of 0.5-1, 1-2, 2-4, 4-8 s (jittered halves of 1, 2, 4, 8 s): at most 5 retries in ~9 s;
    // a fixed 1 s retry would have made about 9.
    expect(attempts).toBeGreaterThanOrEqual(2)
    expect(attempts, `${attempts} reconnect attempts in ${elapsed.toFixed(1)} s`).toBeLessThanOrEqual(5)
  })
})
