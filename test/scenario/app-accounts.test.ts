// Local application accounts (broker.apps, docs/operators/local-apps.md): a SCADA or Home Assistant
// on the LAN logs in on the external listener with a user name and a password whose hash
// `iothub-edge hash-password` made, sees device data and the rules' `republish` within its
// subscribe filters, publishes within its publish filters on the local broker only (never as a
// device, never north), and is refused outside them. Anonymous clients stay out. Against the real
// gateway process, Mosquitto as the hub and MQTT.js clients.
import mqtt, { type MqttClient } from 'mqtt'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { connectDevice, newMessageId, publishQos1 } from '../helpers/device.js'
import { GatewayProcess, runCli } from '../helpers/gateway-process.js'
import { HubBroker, type HubRecorder } from '../helpers/hub-broker.js'
import { metricValue } from '../helpers/metrics.js'
import { inbox, suback } from '../helpers/mqtt-client.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const boiler = { productId: 'boiler', deviceId: 'b1', secret: 'secret-b1' }
const SCADA_PASSWORD = 'scada-correct-horse'
const WIDE_PASSWORD = 'wide-battery-staple'

const clients: MqttClient[] = []

async function hashOf(password: string): Promise<string> {
  const r = await runCli(['hash-password'], { input: `${password}\n` })
  expect(r.code, r.stderr).toBe(0)
  return r.stdout.trim()
}

/** An MQTT 3.1.1 client that logs in as an app (or anonymously); rejects with the CONNACK code. */
async function connectApp(url: string, username?: string, password?: string): Promise<MqttClient> {
  const client = await mqtt.connectAsync(url, { protocolVersion: 4, username, password, clientId: `app-${newMessageId()}`, reconnectPeriod: 0, connectTimeout: 5_000 })
  client.on('error', () => undefined)
  clients.push(client)
  return client
}

async function connackOf(url: string, username?: string, password?: string): Promise<number | string | undefined> {
  try {
    await connectApp(url, username, password)
  } catch (err) {
    return (err as { code?: number }).code
  }
  throw new Error(`${username ?? '(anonymous)'} was let in`)
}

afterEach(async () => {
  await Promise.allSettled(clients.splice(0).map((c) => c.endAsync(true)))
})

describe('iothub-edge hash-password', () => {
  it('prints a self-describing scrypt hash of the password on stdin, never echoing it; refuses an argument and a short password', async () => {
    const hash = await hashOf(SCADA_PASSWORD)
    expect(hash).toMatch(/^scrypt\$32768\$8\$1\$[A-Za-z0-9_-]{22}\$[A-Za-z0-9_-]{43}$/)
    expect(hash).not.toContain(SCADA_PASSWORD)
    expect(await hashOf(SCADA_PASSWORD)).not.toBe(hash) // salted
    const argv = await runCli(['hash-password', SCADA_PASSWORD])
    expect(argv.code).toBe(64)
    expect(argv.stdout).toBe('')
    expect(argv.stderr).toMatch(/stdin/)
    const short = await runCli(['hash-password'], { input: 'short\n' })
    expect(short.code).toBe(64)
    expect(short.stderr).toMatch(/at least 10 characters/)
  }, 120_000)
})

describe('local app accounts on the external listener', () => {
  let hub: HubBroker
  let recorder: HubRecorder
  let gateway: GatewayProcess

  const metric = async (name: string, labels: Record<string, string>): Promise<number> => {
    const res = await gateway.api<string>('GET', '/metrics')
    return metricValue(res.body, name, labels)
  }

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [boiler] } })
    await hub.start()
    recorder = await hub.subscribeAll('#')
    gateway = new GatewayProcess({
      gateway: gw,
      northbound: { url: hub.url },
      devices: [boiler],
      broker: {
        apps: [
          { username: 'scada', passwordHash: await hashOf(SCADA_PASSWORD), publish: ['scada/#'], subscribe: ['site/#', 'upload_data/boiler/+/+/+', 'scada/#'] },
          { username: 'wide', passwordHash: await hashOf(WIDE_PASSWORD), publish: ['#'], subscribe: ['#'] },
        ],
      },
      rules: [{ name: 'local-dashboard', from: 'upload_data/+/+/temperature', actions: [{ republish: { topic: 'site/{productId}/{deviceId}/{dataType}' } }] }],
    })
    await gateway.start()
  }, 120_000)

  afterAll(async () => {
    await gateway?.close()
    await hub?.close()
  })

  it('an app logs in and receives device data and the rules’ republish within its filters', async () => {
    const app = await connectApp(gateway.externalUrl, 'scada', SCADA_PASSWORD)
    const got = inbox(app)
    expect(await suback(app, 'site/#', 0)).toBe(0)
    expect(await suback(app, 'upload_data/boiler/+/temperature/+', 1)).toBe(1) // narrower than its filter
    const device = await connectDevice(gateway.externalUrl, boiler)
    clients.push(device)
    const id = newMessageId()
    await publishQos1(device, `upload_data/boiler/b1/temperature/${id}`, '{"celsius":21}')
    const up = await got.waitFor(`upload_data/boiler/b1/temperature/${id}`, 10_000)
    expect(up.payload.toString()).toBe('{"celsius":21}')
    const republished = await got.waitFor('site/boiler/b1/temperature', 10_000)
    expect(republished.payload.toString()).toBe('{"celsius":21}')
    // The device's reading still goes north as before.
    await recorder.waitFor((m) => m.topic === `upload_data/boiler/b1/temperature/${id}`, 10_000, 'the reading at the hub')
    expect(gateway.logs()).toMatch(/"app":"scada".*app account connected/)
    expect(await metric('iothub_edge_broker_apps_connected', { app: 'scada' })).toBe(1)
  })

  it('outside its subscribe filters: SUBACK 0x80, counted; `#` never includes $SYS', async () => {
    const before = await metric('iothub_edge_rejected_total', { reason: 'acl_denied' })
    const app = await connectApp(gateway.externalUrl, 'scada', SCADA_PASSWORD)
    expect(await suback(app, '#', 0)).toBe(0x80)
    expect(await suback(app, 'upload_data/+/+/+/+', 0)).toBe(0x80) // another product's data
    expect(await suback(app, 'cmd/boiler/b1/+/+/+/#', 0)).toBe(0x80)
    const wide = await connectApp(gateway.externalUrl, 'wide', WIDE_PASSWORD)
    expect(await suback(wide, '$SYS/#', 0)).toBe(0x80)
    expect(await metric('iothub_edge_rejected_total', { reason: 'acl_denied' })).toBe(before + 4)
    expect(gateway.logs()).toMatch(/"app":"scada".*"topic":"#".*subscription refused \(SUBACK 0x80\): outside the app account's subscribe filters/)
  })

  it('publishes within its filters reach other apps and local tools, never a device; outside them, or in the hub topic space, they are dropped', async () => {
    const tool = await mqtt.connectAsync(gateway.internalUrl, { protocolVersion: 4, clientId: `tool-${newMessageId()}`, reconnectPeriod: 0 })
    clients.push(tool)
    const seen = inbox(tool)
    await tool.subscribeAsync(['#'], { qos: 1 })
    const scada = await connectApp(gateway.externalUrl, 'scada', SCADA_PASSWORD)
    const wide = await connectApp(gateway.externalUrl, 'wide', WIDE_PASSWORD)
    const wideGot = inbox(wide)
    await wide.subscribeAsync('scada/#', { qos: 1 })
    await scada.publishAsync('scada/setpoint', '55', { qos: 1 })
    expect((await wideGot.waitFor('scada/setpoint', 10_000)).payload.toString()).toBe('55')
    await seen.waitFor('scada/setpoint', 10_000)

    // Refused publishes are acknowledged (MQTT 3.1.1 has no refusal) and go nowhere.
    await scada.publishAsync('other/x', 'outside', { qos: 1 })
    const spoofed = newMessageId()
    await wide.publishAsync(`upload_data/boiler/b1/temperature/${spoofed}`, '{"celsius":99}', { qos: 1 })
    await wide.publishAsync('cmd/boiler/b1/open/plain/r1', 'x', { qos: 1 })
    await scada.publishAsync('scada/after', 'marker', { qos: 1 })
    await wide.publishAsync('wide/after', 'marker', { qos: 1 })
    await seen.waitFor('scada/after', 10_000)
    await seen.waitFor('wide/after', 10_000)
    expect(seen.topics).not.toContain('other/x')
    expect(seen.topics.filter((t) => t.startsWith('upload_data/') || t.startsWith('cmd/'))).toEqual([])

    // Never north: the device's next message reaches the hub, the app's "uplink" before it did not.
    const device = await connectDevice(gateway.externalUrl, boiler)
    clients.push(device)
    const marker = newMessageId()
    await publishQos1(device, `upload_data/boiler/b1/marker/${marker}`, '{}')
    await recorder.waitFor((m) => m.topic.endsWith(`/marker/${marker}`), 10_000, 'the device marker')
    expect(recorder.messages.filter((m) => m.topic.endsWith(spoofed) || m.topic.startsWith('scada/'))).toEqual([])
    expect(gateway.logs()).toMatch(/"app":"wide".*publish refused: outside the app account's publish filters/)
  })

  it('a device cannot subscribe to an app’s topics', async () => {
    const device = await connectDevice(gateway.externalUrl, boiler)
    clients.push(device)
    expect(await suback(device, 'scada/#', 0)).toBe(0x80)
  })

  it('a wrong password or an unknown account gets CONNACK 4, anonymous stays out; counted, logged without the password', async () => {
    const before = await metric('iothub_edge_rejected_total', { reason: 'auth_failed' })
    expect(await connackOf(gateway.externalUrl, 'scada', 'wrong-password-1')).toBe(4)
    expect(await connackOf(gateway.externalUrl, 'scada', 'wrong-password-1')).toBe(4) // the cached failure, same answer
    expect(await connackOf(gateway.externalUrl, 'scada')).toBe(4)
    expect(await connackOf(gateway.externalUrl, 'nobody', SCADA_PASSWORD)).toBe(4)
    expect(await connackOf(gateway.externalUrl)).toBe(4)
    expect(await metric('iothub_edge_rejected_total', { reason: 'auth_failed' })).toBe(before + 5)
    const log = gateway.logs()
    expect(log).toMatch(/"code":"IHE_AUTH_FAILED".*"app":"scada".*"result":"bad_password".*app account refused|"app":"scada".*"result":"bad_password".*"code":"IHE_AUTH_FAILED"/)
    expect(log).not.toContain('wrong-password-1')
    expect(log).not.toContain(SCADA_PASSWORD)
    // The right password still works after the failures.
    await connectApp(gateway.externalUrl, 'scada', SCADA_PASSWORD)
  })
})
