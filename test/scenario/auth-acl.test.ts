// Authentication and ACL of the gateway's own broker, as PROTOCOL.md "Broker-side rules" says the
// hub applies them: a device cannot log in with a wrong or foreign identity, is thrown out the
// moment it is disabled, cannot speak or listen for another device, and cannot see $SYS; the
// REST API is closed without the bearer token. All against the real gateway process.
import type { MqttClient } from 'mqtt'
import mqtt from 'mqtt'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { connectDevice, newMessageId, publishQos1, type ConnectError, type DeviceLogin, refusedWith } from '../helpers/device.js'
import { GatewayProcess, runCli } from '../helpers/gateway-process.js'
import { HubBroker, type HubRecorder } from '../helpers/hub-broker.js'
import { metricValue } from '../helpers/metrics.js'
import { inbox, suback } from '../helpers/mqtt-client.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const a = { productId: 'thermo', deviceId: 'a', secret: 'secret-a' }
const b = { productId: 'thermo', deviceId: 'b', secret: 'secret-b' }
const c = { productId: 'thermo', deviceId: 'c', secret: 'secret-c' }
const off = { productId: 'thermo', deviceId: 'off', secret: 'secret-off' }

const clients: MqttClient[] = []

async function connect(url: string, login: DeviceLogin): Promise<MqttClient> {
  const client = await connectDevice(url, login)
  clients.push(client)
  return client
}


function closed(client: MqttClient, timeoutMs: number, what: string): Promise<void> {
  if (!client.connected) return Promise.resolve()
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: connection still open after ${timeoutMs} ms`)), timeoutMs)
    client.once('close', () => {
      clearTimeout(timer)
      resolve()
    })
  })
}

afterEach(async () => {
  await Promise.allSettled(clients.splice(0).map((cl) => cl.endAsync(true)))
})

describe('gateway broker authentication and ACL (aclDenyAction: ignore)', () => {
  let hub: HubBroker
  let recorder: HubRecorder
  let gateway: GatewayProcess

  const metric = async (reason: string): Promise<number> => {
    const res = await gateway.api<string>('GET', '/metrics')
    expect(res.status).toBe(200)
    return metricValue(res.body, 'iothub_edge_rejected_total', { reason })
  }

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [a, b, c] } })
    await hub.start()
    recorder = await hub.subscribeAll('#')
    gateway = new GatewayProcess({
      gateway: gw,
      northbound: { url: hub.url },
      devices: [a, b, c, { ...off, enabled: false }],
    })
    await gateway.start()
    // The gateway's status report follows its command subscriptions on the same connection.
    await recorder.waitFor((m) => m.topic.startsWith(`update_status/${gw.productId}/${gw.deviceId}/`), 15_000, 'gateway status')
  })

  afterAll(async () => {
    await gateway?.close()
    await hub?.close()
  })

  it('refuses a wrong secret and an unknown device with CONNACK 4, and counts them', async () => {
    const before = await metric('auth_failed')
    expect(await refusedWith(gateway.externalUrl, { ...a, secret: 'not-the-secret' })).toBe(4)
    expect(await refusedWith(gateway.externalUrl, { productId: 'thermo', deviceId: 'nobody', secret: 'whatever' })).toBe(4)
    // A username that is not {ProductId}/{DeviceId} at all.
    expect(await refusedWith(gateway.externalUrl, { productId: 'thermo', deviceId: 'a/extra', secret: a.secret })).toBe(4)
    expect(await metric('auth_failed')).toBeGreaterThanOrEqual(before + 3)
    // The right secret still works after failures (no lock-out from the failure cache).
    await connect(gateway.externalUrl, a)
  })

  it('refuses a device seeded as disabled with CONNACK 5', async () => {
    expect(await refusedWith(gateway.externalUrl, off)).toBe(5)
  })

  it('disconnects a device disabled through the API at once, refuses it (5), and lets it back when re-enabled', async () => {
    const client = await connect(gateway.externalUrl, b)
    const gone = closed(client, 3_000, 'disabled device')
    const res = await gateway.api('PATCH', `/api/devices/${b.productId}/${b.deviceId}`, { enabled: false })
    expect(res.status).toBe(200)
    expect(res.body.device.enabled).toBe(false)
    await gone
    expect(await refusedWith(gateway.externalUrl, b)).toBe(5)

    const back = await gateway.api('PATCH', `/api/devices/${b.productId}/${b.deviceId}`, { enabled: true })
    expect(back.status).toBe(200)
    expect(back.body.device.enabled).toBe(true)
    const again = await connect(gateway.externalUrl, b)
    const messageId = newMessageId()
    await publishQos1(again, `upload_data/${b.productId}/${b.deviceId}/temperature/${messageId}`, '{"c":1}')
    await recorder.waitFor((m) => m.topic.endsWith(`/${messageId}`), 10_000, 'upload after re-enable')
  })

  it('`devices disable` run while the gateway runs acts through its API and kicks the device', async () => {
    const client = await connect(gateway.externalUrl, c)
    const disable = await runCli(['devices', 'disable', c.productId, c.deviceId, '-c', gateway.configFile], { cwd: gateway.tmpDir })
    expect(disable.code, disable.stderr).toBe(0)
    // Counted from the CLI's return (a CLI start alone can take seconds on a loaded box): the
    // device is kicked by then or within moments.
    await closed(client, 5_000, 'device disabled by the CLI')
    expect(await refusedWith(gateway.externalUrl, c)).toBe(5)
    const shown = await gateway.api('GET', `/api/devices/${c.productId}/${c.deviceId}`)
    expect(shown.body.device.enabled).toBe(false)

    const enable = await runCli(['devices', 'enable', c.productId, c.deviceId, '-c', gateway.configFile], { cwd: gateway.tmpDir })
    expect(enable.code, enable.stderr).toBe(0)
    await connect(gateway.externalUrl, c)
  })

  it("drops a device's publishes on another device's topics, never forwarding them, and counts them", async () => {
    const devA = await connect(gateway.externalUrl, a)
    const devB = await connect(gateway.externalUrl, b)
    const bInbox = inbox(devB)
    expect(await suback(devB, `tags/${b.productId}/+/cmd/+/+/+/#`, 1)).toBe(1)
    const before = await metric('acl_denied')
    const forged = [
      `upload_data/${b.productId}/${b.deviceId}/temperature/${newMessageId()}`,
      `update_status/${b.productId}/${b.deviceId}/${newMessageId()}`,
      `cmd_resp/${b.productId}/${b.deviceId}/reboot/${newMessageId()}/${newMessageId()}`,
      `upload_data/other_product/${a.deviceId}/temperature/${newMessageId()}`,
      // m2m to B claiming C as the sender: B holds a server-side subscription to it
      `m2m/${b.productId}/${b.deviceId}/${c.deviceId}/${newMessageId()}`,
      // down topics: devices may not publish commands, to B or to a whole tag
      `cmd/${b.productId}/${b.deviceId}/reboot/plain/${newMessageId()}`,
      `tags/${b.productId}/floor3/cmd/reboot/plain/${newMessageId()}`,
      // internal names devices may not use: the gateway's own $connection, unknown $ requests
      `upload_data/${a.productId}/${a.deviceId}/$connection/${newMessageId()}`,
      `get/${a.productId}/${a.deviceId}/$ota_upgrade/${newMessageId()}`,
    ]
    for (const topic of forged) await publishQos1(devA, topic, 'forged')
    const marker = `upload_data/${a.productId}/${a.deviceId}/temperature/${newMessageId()}`
    await publishQos1(devA, marker, 'marker')
    await recorder.waitFor((m) => m.topic === marker, 10_000, 'marker from A')
    // The gateway forwards in order per priority; give anything forged a little longer anyway.
    await new Promise((r) => setTimeout(r, 500))
    const forgedAtHub = recorder.topics().filter((t) => forged.includes(t))
    expect(forgedAtHub).toEqual([])
    expect(bInbox.topics).toEqual([])
    expect(devA.connected).toBe(true) // aclDenyAction: ignore
    expect(await metric('acl_denied')).toBeGreaterThanOrEqual(before + forged.length)
  })

  it("refuses a subscription to another device's commands (SUBACK 0x80); that device does not get them", async () => {
    const devA = await connect(gateway.externalUrl, a)
    const devB = await connect(gateway.externalUrl, b)
    const aInbox = inbox(devA)
    const bInbox = inbox(devB)
    const granted = await suback(devA, `cmd/${b.productId}/${b.deviceId}/+/+/+/#`, 1)
    expect(granted).toBe(128)
    const wildcard = await suback(devA, '#', 1)
    expect(wildcard).toBe(128)

    // B's $connection event reaching the hub means B's session (and its server-side subscriptions) is up.
    await recorder.waitFor(
      (m) => m.topic.startsWith(`upload_data/${b.productId}/${b.deviceId}/$connection/`) && m.payload.toString().includes(`"${devB.options.clientId}"`),
      10_000,
      "B's $connection",
    )
    const topic = `cmd/${b.productId}/${b.deviceId}/reboot/plain/${newMessageId()}`
    await hub.publishAsHub(topic, 'for b only')
    expect((await bInbox.waitFor(topic, 10_000)).payload.toString()).toBe('for b only')
    await expect(aInbox.waitFor(topic, 500)).rejects.toThrow(/no matching message/)
    expect(aInbox.topics).toEqual([])
  })

  it('applies the subscribe ACL from the first packet after CONNACK', async () => {
    // The broker sets up the server-side subscriptions as the session opens; a device that
    // subscribes in that same moment must not slip through with them. MQTT.js sends a SUBSCRIBE
    // made before the CONNACK right after it.
    const codes = await Promise.all(
      Array.from({ length: 10 }, async () => {
        const client = mqtt.connect(gateway.externalUrl, {
          protocolVersion: 4,
          username: `${a.productId}/${a.deviceId}`,
          password: a.secret,
          clientId: `${a.productId}/${a.deviceId}/${newMessageId()}`,
          reconnectPeriod: 0,
        })
        clients.push(client)
        client.on('error', () => undefined)
        return Promise.all([suback(client, `cmd/${b.productId}/${b.deviceId}/+/+/+/#`, 1), suback(client, '$SYS/#', 0)])
      }),
    )
    expect(codes.flat()).toEqual(Array(20).fill(128))
  })

  it("grants a device its own product's tag command subscription, and refuses another product's", async () => {
    const devA = await connect(gateway.externalUrl, a)
    const own = await suback(devA, `tags/${a.productId}/+/cmd/+/+/+/#`, 1)
    expect(own).toBe(1)
    const oneTag = await suback(devA, `tags/${a.productId}/floor3/cmd/+/+/+/#`, 1)
    expect(oneTag).toBe(1)
    const other = await suback(devA, 'tags/other_product/+/cmd/+/+/+/#', 1)
    expect(other).toBe(128)
  })

  it('refuses $SYS/# on the external listener and grants it on the internal one', async () => {
    const devA = await connect(gateway.externalUrl, a)
    const refused = await suback(devA, '$SYS/#', 0)
    expect(refused).toBe(128)

    // Internal listener: trusted local tools, no username or password.
    const tool = await mqtt.connectAsync(gateway.internalUrl, { protocolVersion: 4, clientId: `tool-${newMessageId()}`, reconnectPeriod: 0 }, false)
    clients.push(tool)
    const toolInbox = inbox(tool)
    const granted = await suback(tool, '$SYS/#', 0)
    expect(granted).toBe(0)
    // aedes announces every new client on $SYS/{brokerId}/new/clients (its heartbeat is once a minute).
    const devB = await connect(gateway.externalUrl, b)
    const announced = await toolInbox.waitFor((t, p) => /^\$SYS\/[^/]+\/new\/clients$/.test(t) && p.toString() === devB.options.clientId, 5_000)
    expect(announced.topic.startsWith('$SYS/')).toBe(true)
    // Nobody publishes into $SYS but the broker itself, not even a trusted local tool.
    await tool.publishAsync('$SYS/fake/clients/total', 'forged', { qos: 1 })
    const devC = await connect(gateway.externalUrl, c)
    await toolInbox.waitFor((t, p) => /^\$SYS\/[^/]+\/new\/clients$/.test(t) && p.toString() === devC.options.clientId, 5_000)
    expect(toolInbox.topics).not.toContain('$SYS/fake/clients/total')
  })

  it('refuses /api requests without the bearer token (401) and answers /api/health without it', async () => {
    const base = `http://127.0.0.1:${gateway.httpPort}`
    for (const p of ['/api/devices', '/api/outbox', `/api/devices/${a.productId}/${a.deviceId}`]) {
      const none = await fetch(base + p)
      expect(none.status, `${p} without a token`).toBe(401)
      await none.arrayBuffer()
      const wrong = await fetch(base + p, { headers: { authorization: 'Bearer not-the-token-not-the-token' } })
      expect(wrong.status, `${p} with a wrong token`).toBe(401)
      await wrong.arrayBuffer()
    }
    const patch = await fetch(`${base}/api/devices/${a.productId}/${a.deviceId}`, {
      method: 'PATCH',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ enabled: false }),
    })
    expect(patch.status).toBe(401)
    await patch.arrayBuffer()
    expect((await gateway.api('GET', `/api/devices/${a.productId}/${a.deviceId}`)).body.device.enabled).toBe(true)

    const health = await fetch(`${base}/api/health`)
    expect(health.status).toBe(200)
    const body = (await health.json()) as { status: string }
    expect(body.status).toBe('ok')
    // And with the token the API answers.
    expect((await gateway.api('GET', '/api/devices')).status).toBe(200)
  })
})

describe('gateway broker with aclDenyAction: disconnect', () => {
  let gateway: GatewayProcess

  beforeAll(async () => {
    gateway = new GatewayProcess({ gateway: gw, broker: { aclDenyAction: 'disconnect' }, devices: [a, b] })
    await gateway.start()
  })

  afterAll(async () => {
    await gateway?.close()
  })

  it("closes the connection of a device that publishes on another device's topic", async () => {
    const devA = await connect(gateway.externalUrl, a)
    const gone = closed(devA, 5_000, 'device after a forbidden publish')
    devA.publish(`upload_data/${b.productId}/${b.deviceId}/temperature/${newMessageId()}`, 'forged', { qos: 1 }, () => undefined)
    await gone
    // An allowed publish keeps a connection open.
    const devB = await connect(gateway.externalUrl, b)
    await publishQos1(devB, `upload_data/${b.productId}/${b.deviceId}/temperature/${newMessageId()}`, 'ok')
    expect(devB.connected).toBe(true)
  })
})
