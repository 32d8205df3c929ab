// What /api/health tells a technician about the hub link beyond up/down: why it is down (the last
// error, redacted, with the gateway's error code), when it tries again, and how fast the outbox
// drains once the hub is back. Mosquitto is the hub: once refusing the gateway's password, once
// stopped with a backlog waiting.
import { gunzipSync } from 'node:zlib'
import { afterAll, describe, expect, it } from 'vitest'
import { connectDevice, newMessageId, publishQos1 } from '../helpers/device.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HubBroker } from '../helpers/hub-broker.js'

const gw = { productId: 'gateways', deviceId: 'gw-hl', secret: 'gw-hl-secret' }
const dev = { productId: 'thermo', deviceId: 't1', secret: 'secret-t1' }
const WRONG_PASSWORD = 'not-the-hub-password-4711'

interface Health {
  northbound: {
    connected: boolean
    downSince: number | null
    lastError: { at: number; code: string; reason: string | null; message: string } | null
    nextRetryAt: number | null
  }
  outbox: { messages: number; drainRate: { last10s: number; last60s: number } }
}

describe('hub link in health', () => {
  let hub: HubBroker | undefined
  const gateways: GatewayProcess[] = []

  afterAll(async () => {
    await Promise.allSettled(gateways.map((g) => g.close()))
    await hub?.close()
  })

  const health = async (g: GatewayProcess): Promise<Health> => (await g.api<Health>('GET', '/api/health')).body

  it('a hub that refuses the password: the refusal is the last error (connack 5, IHE_NORTHBOUND, no password in it) and a retry is scheduled in the future', async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [dev] } })
    await hub.start()
    const g = new GatewayProcess({ gateway: gw, northbound: { url: hub.url, password: WRONG_PASSWORD }, devices: [dev] })
    gateways.push(g)
    await g.start()
    await expect.poll(async () => (await health(g)).northbound.lastError?.reason, { timeout: 15_000 }).toBe('connack:5')
    const h = await health(g)
    expect(h.northbound.connected).toBe(false)
    expect(h.northbound.lastError).toMatchObject({ code: 'IHE_NORTHBOUND', message: expect.stringMatching(/not authori[sz]ed/i) })
    expect(h.northbound.lastError!.at).toBeLessThanOrEqual(Date.now())
    expect(JSON.stringify(h)).not.toContain(WRONG_PASSWORD)
    // Between attempts the next one is ahead (an attempt itself takes milliseconds against a local hub).
    await expect.poll(async () => { const r = (await health(g)).northbound.nextRetryAt; return r !== null && r > Date.now() }, { timeout: 15_000 }).toBe(true)
    // The same in the diagnostics bundle a support engineer asks for (its health.json).
    const res = await fetch(`http://127.0.0.1:${g.httpPort}/api/diagnostics`, { headers: { authorization: `Bearer ${g.apiToken}` } })
    expect(res.status).toBe(200)
    const tar = gunzipSync(Buffer.from(await res.arrayBuffer())).toString('utf8')
    expect(tar).toMatch(/"reason": ?"connack:5"/)
    expect(tar).not.toContain(WRONG_PASSWORD)
    await g.close()
  })

  it('a stopped hub: ECONNREFUSED with a next retry; once it is back the backlog drains and the drain rate is above zero', async () => {
    if (!hub) {
      hub = new HubBroker({ devices: [], gateway: { ...gw, children: [dev] } })
      await hub.start()
    }
    // The hub's side, subscribed before it stops (a persistent session: it gets what comes later).
    const recorder = await hub.subscribeAll('upload_data/thermo/#')
    await hub.stop()
    // A slow drain (maxRate) so the backlog takes seconds: what a technician watches on the overview.
    const g = new GatewayProcess({ gateway: gw, northbound: { url: hub.url, maxRate: 100 }, devices: [dev] })
    gateways.push(g)
    await g.start()
    await expect.poll(async () => (await health(g)).northbound.lastError?.reason, { timeout: 15_000 }).toBe('ECONNREFUSED')
    await expect.poll(async () => { const r = (await health(g)).northbound.nextRetryAt; return r !== null && r > Date.now() }, { timeout: 15_000 }).toBe(true)
    const down = await health(g)
    expect(down.outbox.drainRate).toEqual({ last10s: 0, last60s: 0 })

    const client = await connectDevice(g.externalUrl, dev)
    const n = 300
    for (let i = 0; i < n; i++) await publishQos1(client, `upload_data/thermo/t1/temperature/${newMessageId()}`, JSON.stringify({ c: i }))
    await client.endAsync()
    await expect.poll(async () => (await health(g)).outbox.messages, { timeout: 15_000 }).toBeGreaterThanOrEqual(n)

    try {
      await hub.start()
      await expect.poll(async () => (await health(g)).northbound.connected, { timeout: 60_000 }).toBe(true)
      // While it drains (and for the window after), the hub's acknowledgements per second show.
      await expect.poll(async () => (await health(g)).outbox.drainRate.last10s, { timeout: 15_000 }).toBeGreaterThan(0)
      await expect.poll(() => recorder.messages.length, { timeout: 30_000 }).toBeGreaterThanOrEqual(n)
      const up = await health(g)
      expect(up.outbox.drainRate.last60s).toBeGreaterThan(0)
      expect(up.northbound.nextRetryAt).toBeNull()
      // The last error stays, with its time, after the link is up again.
      expect(up.northbound.lastError?.reason).toBe('ECONNREFUSED')
    } finally {
      await recorder.close()
    }
  })
})
