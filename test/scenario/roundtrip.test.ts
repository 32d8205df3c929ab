// Round trip through the whole gateway process: a native device publishes every up topic of
// PROTOCOL.md to the gateway's broker, and the hub (Mosquitto, with the hub's ACL) sees the same
// topic, the same payload bytes and the same MessageId; a command the hub publishes reaches the
// device on its server-side subscription. Both northbound modes: one gateway connection speaking
// for its children, and one connection per child with the child's own credentials.
import type { MqttClient } from 'mqtt'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { connectDevice, newMessageId, publishQos1 } from '../helpers/device.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HubBroker, type HubBrokerOptions, type HubRecorder } from '../helpers/hub-broker.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const t1 = { productId: 'thermo', deviceId: 't1', secret: 'secret-t1' }
const t2 = { productId: 'thermo', deviceId: 't2', secret: 'secret-t2' }

const MESSAGE_ID = /^[0-9a-f]{24}$/

/** Every byte value, including NUL and sequences that are not UTF-8. */
const binary = Buffer.from(Array.from({ length: 512 }, (_, i) => (i * 7) % 256))

function upMessages(): { what: string; topic: string; payload: Buffer }[] {
  const { productId: p, deviceId: d } = t1
  const json = (o: unknown): Buffer => Buffer.from(JSON.stringify(o))
  return [
    { what: 'upload_data (JSON)', topic: `upload_data/${p}/${d}/temperature/${newMessageId()}`, payload: json({ c: 21.5, unit: 'C' }) },
    { what: 'upload_data (binary)', topic: `upload_data/${p}/${d}/raw_frame/${newMessageId()}`, payload: binary },
    { what: 'update_status', topic: `update_status/${p}/${d}/${newMessageId()}`, payload: json({ fw: '1.2.3', battery: 88 }) },
    { what: 'cmd_resp', topic: `cmd_resp/${p}/${d}/reboot/${newMessageId()}/${newMessageId()}`, payload: Buffer.from('rebooting') },
    { what: 'rpc_resp', topic: `rpc_resp/${p}/${d}/read_temp/${newMessageId()}/${newMessageId()}`, payload: json({ c: 22 }) },
    { what: 'get (JSON)', topic: `get/${p}/${d}/config/${newMessageId()}`, payload: json({ keys: ['interval'] }) },
    { what: 'get (empty payload)', topic: `get/${p}/${d}/firmware_info/${newMessageId()}`, payload: Buffer.alloc(0) },
    // A device that is not a child of this gateway: the hub delivers it (m2m between two children
    // is delivered locally and never goes north: test/scenario/cloud-to-device.test.ts).
    { what: 'm2m to a device elsewhere', topic: `m2m/${p}/elsewhere-7/${d}/${newMessageId()}`, payload: Buffer.from('hello elsewhere') },
    {
      what: 'update_ota_status',
      topic: `update_ota_status/${p}/${d}/${newMessageId()}`,
      payload: json({ type: 'firmware', version: '1.2.4', progress: 42, desc: 'downloading' }),
    },
  ]
}

interface ModeSetup {
  hub: HubBrokerOptions
  northbound: Record<string, unknown>
}

const modes: Record<'gateway' | 'devices', ModeSetup> = {
  // The hub knows only the gateway; the gateway's ACL covers its children's topics.
  gateway: { hub: { devices: [], gateway: { ...gw, children: [t1, t2] } }, northbound: { mode: 'gateway' } },
  // The hub knows every child and the gateway as ordinary devices, each with its own ACL.
  devices: { hub: { devices: [gw, t1, t2] }, northbound: { mode: 'devices' } },
}

describe.each(Object.keys(modes) as (keyof typeof modes)[])('round trip, northbound mode %s', (mode) => {
  let hub: HubBroker
  let recorder: HubRecorder
  let gateway: GatewayProcess
  const clients: MqttClient[] = []

  async function device(login: typeof t1): Promise<MqttClient> {
    const client = await connectDevice(gateway.externalUrl, login)
    clients.push(client)
    return client
  }

  beforeAll(async () => {
    hub = new HubBroker(modes[mode].hub)
    await hub.start()
    recorder = await hub.subscribeAll('#')
    gateway = new GatewayProcess({
      gateway: gw,
      northbound: { url: hub.url, ...modes[mode].northbound },
      devices: [
        { productId: t1.productId, deviceId: t1.deviceId, secret: t1.secret },
        { productId: t2.productId, deviceId: t2.deviceId, secret: t2.secret },
      ],
      log: { level: 'debug' },
    })
    await gateway.start()
  })

  afterEach(async () => {
    await Promise.allSettled(clients.splice(0).map((c) => c.endAsync(true)))
  })

  afterAll(async () => {
    await gateway?.close()
    await hub?.close()
  })

  it("reports the gateway's own update_status when it connects to the hub", async () => {
    const status = await recorder.waitFor((m) => m.topic.startsWith(`update_status/${gw.productId}/${gw.deviceId}/`), 15_000, 'gateway status')
    const messageId = status.topic.split('/')[3]
    expect(messageId).toMatch(MESSAGE_ID)
    expect(status.qos).toBe(1)
    const body = JSON.parse(status.payload.toString('utf8')) as Record<string, unknown>
    expect(body).toEqual(expect.objectContaining({ version: expect.any(String), outbox_messages: expect.any(Number) }))
  })

  it('uploads a $connection event when a device connects', async () => {
    const client = await device(t1)
    const clientId = client.options.clientId
    const conn = await recorder.waitFor(
      (m) => m.topic.startsWith(`upload_data/${t1.productId}/${t1.deviceId}/$connection/`) && m.payload.toString().includes(`"${clientId}"`),
      10_000,
      '$connection for t1',
    )
    expect(conn.topic.split('/')).toHaveLength(5)
    expect(conn.topic.split('/')[4]).toMatch(MESSAGE_ID)
    const body = JSON.parse(conn.payload.toString('utf8')) as Record<string, unknown>
    expect(body.connected).toBe(true)
    expect(body.client_id).toBe(clientId)
    expect(body.transport).toBe('mqtt')
    expect(body.disconnect_at).toBeNull()
  })

  it('delivers every up topic to the hub with the same topic, payload bytes and MessageId', async () => {
    const client = await device(t1)
    const messages = upMessages()
    for (const m of messages) await publishQos1(client, m.topic, m.payload)
    for (const m of messages) {
      const got = await recorder.waitFor((r) => r.topic === m.topic, 10_000, `${m.what} on ${m.topic}`)
      expect(got.payload.equals(m.payload), `${m.what}: payload bytes differ`).toBe(true)
      expect(got.qos, m.what).toBe(1)
      expect(got.retain, m.what).toBe(false)
    }
  })

  it('hands a hub command to the connected device on its server-side subscription', async () => {
    const client = await device(t1)
    const received: { topic: string; payload: Buffer }[] = []
    client.on('message', (topic, payload) => received.push({ topic, payload }))
    // Once the hub has this device's $connection event, the link that carries it (and, before
    // it, the command subscription on that link) is in place at the hub.
    await recorder.waitFor(
      (m) => m.topic.startsWith(`upload_data/${t1.productId}/${t1.deviceId}/$connection/`) && m.payload.toString().includes(`"${client.options.clientId}"`),
      10_000,
      '$connection for t1',
    )
    const requestId = newMessageId()
    const topic = `cmd/${t1.productId}/${t1.deviceId}/reboot/plain/${requestId}`
    const payload = Buffer.from(JSON.stringify({ delay_s: 3 }))
    const arrived = new Promise<{ topic: string; payload: Buffer }>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`device got no command within 10 s; got ${JSON.stringify(received.map((r) => r.topic))}`)), 10_000)
      client.on('message', (t, p) => {
        if (t.startsWith('cmd/')) {
          clearTimeout(timer)
          resolve({ topic: t, payload: p })
        }
      })
    })
    await hub.publishAsHub(topic, payload)
    const cmd = await arrived
    expect(cmd.topic).toBe(topic)
    expect(cmd.payload.equals(payload)).toBe(true)
  })
})
