// The technician's live view of a gateway process, with Mosquitto as the hub and a real MQTT
// device: the SSE stream (GET /api/events, read over HTTP as a browser would) shows the hub link in
// health, a device connecting and leaving, its uplinks, an alarm a rule raised, a command going
// through its states and the log; the device table shows what the device reported (firmware from its update_status,
// battery from its payload, protocol, failed logins, queued commands) and its last messages.
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { connectDevice, newMessageId, publishQos1, refusedWith } from '../helpers/device.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HubBroker } from '../helpers/hub-broker.js'
import { metricValue } from '../helpers/metrics.js'
import { SseClient } from '../helpers/sse.js'

const gw = { productId: 'gateways', deviceId: 'gw-live', secret: 'gw-secret-live-1' }
const dev = { productId: 'thermo', deviceId: 't1', secret: 'secret-t1-live' }
const valve = { productId: 'valves', deviceId: 'v1', secret: 'secret-v1-live' }

describe('live stream and device activity', () => {
  let hub: HubBroker
  let gateway: GatewayProcess
  let stream: SseClient
  const clients: MqttClient[] = []

  const openStream = (): Promise<SseClient> =>
    new SseClient(`http://127.0.0.1:${gateway.httpPort}/api/events`, { authorization: `Bearer ${gateway.apiToken}` }).open()
  const listed = async (ref: { productId: string; deviceId: string }): Promise<any> =>
    (await gateway.api('GET', '/api/devices')).body.devices.find((d: any) => d.productId === ref.productId && d.deviceId === ref.deviceId)

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [dev, valve] } })
    await hub.start()
    gateway = new GatewayProcess({
      gateway: gw,
      northbound: { url: hub.url },
      devices: [dev, valve],
      rules: [{ name: 'too-hot', from: 'upload_data/thermo/+/telemetry', actions: [{ alarm: { name: 'hot', set: 'payload.temperature > 30.0', clear: 'payload.temperature < 25.0', value: 'payload.temperature' } }] }],
      log: { level: 'info', format: 'json' },
    })
    await gateway.start()
    await gateway.waitForHealth((h) => h.northbound.connected, 20_000, 'hub connected')
  })

  afterAll(async () => {
    await stream?.close()
    await Promise.allSettled(clients.map((c) => c.endAsync(true)))
    await gateway?.close()
    await hub?.close()
  })

  it('needs the token, like the rest of /api', async () => {
    const refused = await new SseClient(`http://127.0.0.1:${gateway.httpPort}/api/events`).open()
    expect(refused.status).toBe(401)
  })

  it('streams health, a device connecting, its uplinks, a command and the log', async () => {
    stream = await openStream()
    expect(stream.status).toBe(200)
    expect(stream.contentType).toContain('text/event-stream')
    // The current health at once.
    const first = await stream.waitFor('health')
    expect(first.data.northbound.connected).toBe(true)
    expect(metricValue((await gateway.api<string>('GET', '/metrics')).body, 'iothub_edge_live_stream_clients')).toBe(1)

    const client = await connectDevice(gateway.externalUrl, dev)
    clients.push(client)
    await stream.waitFor('device', (d) => d.productId === 'thermo' && d.deviceId === 't1' && d.online === true)
    await stream.waitFor('log', (l) => l.msg === 'device connected' && l.device === 'thermo/t1' && l.levelName === 'info')

    const id = newMessageId()
    await publishQos1(client, `upload_data/thermo/t1/telemetry/${id}`, JSON.stringify({ temperature: 21.5, battery: 87 }))
    const up = await stream.waitFor('uplink', (u) => u.messageId === id)
    expect(up.data).toMatchObject({ productId: 'thermo', deviceId: 't1', kind: 'upload_data', dataType: 'telemetry', transport: 'mqtt', payload: { temperature: 21.5, battery: 87 } })
    // A rule raises an alarm on it: the stream says so, as GET /api/alarms lists it.
    await publishQos1(client, `upload_data/thermo/t1/telemetry/${newMessageId()}`, JSON.stringify({ temperature: 35.5 }))
    const alarm = await stream.waitFor('alarm', (a) => a.alarm === 'hot')
    expect(alarm.data).toMatchObject({ rule: 'too-hot', alarm: 'hot', productId: 'thermo', deviceId: 't1', state: 'raised', value: 35.5, since: expect.any(Number) })
    expect((await gateway.api('GET', '/api/alarms')).body.alarms).toEqual([alarm.data])
    const raw = newMessageId()
    await publishQos1(client, `upload_data/thermo/t1/raw/${raw}`, Buffer.from([0xff, 0x00, 0x10]))
    expect((await stream.waitFor('uplink', (u) => u.messageId === raw)).data.payload).toEqual({ base64: Buffer.from([0xff, 0x00, 0x10]).toString('base64') })

    // A command for a device that is not connected waits (queued), and is counted in its row.
    const sent = await gateway.api('POST', '/api/devices/valves/v1/commands', { name: 'open', payload: { percent: 40 } })
    expect(sent.status).toBe(202)
    const queued = await stream.waitFor('command', (c) => c.requestId === sent.body.requestId)
    expect(queued.data).toMatchObject({ productId: 'valves', deviceId: 'v1', name: 'open', state: 'queued', origin: 'local' })
    expect(await listed(valve)).toMatchObject({ queuedCommands: 1, online: false })
    // The valve comes (the gateway subscribes it to its commands): the command is delivered, the row has nothing waiting any more.
    const v = await connectDevice(gateway.externalUrl, valve)
    clients.push(v)
    await stream.waitFor('command', (c) => c.requestId === sent.body.requestId && c.state === 'delivered', 20_000)
    expect(await listed(valve)).toMatchObject({ queuedCommands: 0, online: true, protocol: 'mqtt' })
  })

  it('lists each device with its protocol, battery, firmware and errors, and its last messages newest first', async () => {
    const client = clients[0]
    await publishQos1(client, `update_status/thermo/t1/${newMessageId()}`, JSON.stringify({ version: '1.4.2', rssi: -70 }))
    // Two failed logins name the device in the log: its error count.
    expect(await refusedWith(gateway.externalUrl, { ...dev, secret: 'wrong-secret' })).toBeTruthy()
    await expect.poll(async () => (await listed(dev)).errors, { timeout: 10_000 }).toBeGreaterThanOrEqual(1)
    const row = await listed(dev)
    expect(row).toMatchObject({ online: true, protocol: 'mqtt', battery: 87, firmwareVersion: '1.4.2', rssi: null, snr: null, queuedCommands: 0 })
    expect(row.lastError).toMatchObject({ msg: 'device refused', code: expect.stringMatching(/^IHE_/) })

    const ids: string[] = []
    for (let i = 0; i < 25; i++) {
      ids.push(newMessageId())
      await publishQos1(client, `upload_data/thermo/t1/count/${ids[i]}`, JSON.stringify({ n: i }))
    }
    await expect.poll(async () => (await gateway.api('GET', '/api/devices/thermo/t1/messages')).body.messages[0]?.messageId, { timeout: 10_000 }).toBe(ids[24])
    const { messages } = (await gateway.api('GET', '/api/devices/thermo/t1/messages')).body
    expect(messages).toHaveLength(20)
    expect(messages.map((m: any) => m.messageId)).toEqual(ids.slice(5).reverse())
    expect(messages[0]).toMatchObject({ kind: 'upload_data', dataType: 'count', payload: { n: 24 }, ts: expect.any(Number) })
    expect((await gateway.api('GET', '/api/devices/thermo/t1/messages?limit=3')).body.messages).toHaveLength(3)
    expect((await gateway.api('GET', '/api/devices/thermo/nope/messages')).status).toBe(404)
    // The battery stays what the device last said, although the 20 kept messages no longer carry it.
    expect((await listed(dev)).battery).toBe(87)
  })

  it('shows a device leaving, and the hub going down and the outbox growing in health', async () => {
    await clients[0].endAsync()
    await stream.waitFor('device', (d) => d.deviceId === 't1' && d.online === false)
    const from = stream.events.length
    await hub.stop()
    await stream.waitFor('health', (h) => h.northbound.connected === false && typeof h.northbound.downSince === 'number', 20_000, from)
    await stream.waitFor('log', (l) => l.level >= 40, 20_000, from)
    // What the valve sends meanwhile waits in the outbox: health says how much.
    for (let i = 0; i < 3; i++) await publishQos1(clients[1], `upload_data/valves/v1/position/${newMessageId()}`, String(i))
    await stream.waitFor('health', (h) => h.northbound.connected === false && h.outbox.messages >= 3, 20_000, from)
  })

  it('serves the recent logs, filtered by level, and as a download', async () => {
    const all = (await gateway.api('GET', '/api/logs?limit=2000')).body.logs
    expect(all.some((l: any) => l.msg === 'gateway started' && l.levelName === 'info')).toBe(true)
    const warn = (await gateway.api('GET', '/api/logs?level=warn')).body.logs
    expect(warn.length).toBeGreaterThan(0)
    expect(warn.every((l: any) => l.level >= 40)).toBe(true)
    expect(warn.some((l: any) => l.msg === 'device refused')).toBe(true)
    const two = (await gateway.api('GET', '/api/logs?limit=2')).body.logs
    expect(two).toHaveLength(2)
    expect(two[1].time).toBeGreaterThanOrEqual(two[0].time)
    expect((await gateway.api('GET', '/api/logs?level=loud')).status).toBe(400)

    const download = await gateway.api<string>('GET', '/api/logs/download?level=warn')
    expect(download.status).toBe(200)
    expect(download.headers.get('content-type')).toContain('text/plain')
    expect(download.headers.get('content-disposition')).toMatch(/^attachment; filename=".+\.ndjson"$/)
    const lines = download.body.trim().split('\n').map((l) => JSON.parse(l) as { level: number })
    expect(lines.length).toBe(warn.length)
    // The stdout log is unchanged by the ring: the same lines are there.
    expect(gateway.logs()).toContain('"msg":"device refused"')
  })

  it('ends the stream when the gateway stops, and counts no client after', async () => {
    const second = await openStream()
    await second.waitFor('health')
    await second.close()
    await expect.poll(async () => metricValue((await gateway.api<string>('GET', '/metrics')).body, 'iothub_edge_live_stream_clients'), { timeout: 10_000 }).toBe(1)
    expect(await gateway.stop()).toBe(0)
    await expect.poll(() => stream.closed, { timeout: 10_000 }).toBe(true)
  })

  it('after a restart, still shows what devices last reported (firmware, battery, protocol)', async () => {
    await gateway.start()
    expect(await listed(dev)).toMatchObject({ firmwareVersion: '1.4.2', battery: 87, protocol: 'mqtt', online: false, errors: 0 })
    // The messages themselves were not kept.
    expect((await gateway.api('GET', '/api/devices/thermo/t1/messages')).body.messages).toEqual([])
  })
})
