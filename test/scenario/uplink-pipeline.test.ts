// The way up as named steps, with the rules slot before the outbox (src/core/uplink-pipeline.ts):
// what a rule does there is what the hub receives; a message a rule drops is still acknowledged to
// its device (it was handled); a rule that fails does not acknowledge (the device sends it again).
// Real peers: an MQTT.js device on the gateway's broker, Mosquitto as the hub.
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseConfig } from '../../src/config.js'
import { Gateway } from '../../src/gateway.js'
import type { BrokerAdapter } from '../../src/southbound/broker/broker-adapter.js'
import { HubBroker, type HubRecorder } from '../helpers/hub-broker.js'
import { connectDevice } from '../helpers/device.js'
import { metricValue } from '../helpers/metrics.js'

const gwLogin = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const dev = { productId: 'boiler', deviceId: 'b-1', secret: 'b-1-secret' }
const MID = (n: number): string => `65a1b2c3d4e5f6071829${String(n).padStart(4, '0')}`

function publish(client: MqttClient, topic: string, payload: string): Promise<'acked' | 'refused'> {
  return new Promise((resolve) => {
    const onClose = (): void => resolve('refused')
    client.once('close', onClose)
    client.publish(topic, payload, { qos: 1 }, (err) => {
      client.off('close', onClose)
      resolve(err ? 'refused' : 'acked')
    })
  })
}

describe('the uplink pipeline and its rules slot', () => {
  let hub: HubBroker
  let rec: HubRecorder
  let dataDir: string
  let gw: Gateway
  let device: MqttClient

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gwLogin, children: [dev] } })
    await hub.start()
    rec = await hub.subscribeAll(`upload_data/${dev.productId}/${dev.deviceId}/#`)
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'uplink-pipeline-'))
    gw = new Gateway(
      parseConfig({
        gateway: { ...gwLogin, dataDir },
        broker: { listeners: [{ host: '127.0.0.1', port: 0, zone: 'external' }] },
        http: { host: '127.0.0.1', port: 0, apiToken: 'uplink-pipeline-test-token' },
        northbound: { url: hub.url, mode: 'gateway' },
        devices: [dev],
        log: { level: process.env.TEST_GATEWAY_LOG ?? 'silent' },
      }),
    )
    await gw.start()
    device = await connectDevice(`mqtt://127.0.0.1:${gw.adapter<BrokerAdapter>('broker')!.ports[0]}`, dev)
  })

  afterAll(async () => {
    await new Promise<void>((r) => (device ? device.end(true, {}, () => r()) : r()))
    await gw?.stop()
    await rec?.close()
    await hub?.close()
    if (dataDir) await rm(dataDir, { recursive: true, force: true })
  })

  it('runs its steps in a fixed order, the rules slot last before the outbox', () => {
    expect(gw.core.pipeline.steps.map((s) => s.name)).toEqual(['count', 'local-answers', 'local-replies', 'm2m-between-children', 'shadow-copy', 'rules'])
  })

  // The per-message count is summed in the gateway and handed to the metric when it is read: what a
  // scraper sees is every accepted message once, however often it reads.
  it('counts each accepted message once in iothub_edge_uplinks_total, by transport and kind, and tells the API when the device was last heard', async () => {
    const uplinks = async (kind: string): Promise<number> => metricValue(await gw.metrics.registry.metrics(), 'iothub_edge_uplinks_total', { transport: 'mqtt', kind })
    const before = { data: await uplinks('upload_data'), status: await uplinks('update_status') }
    const sent = Date.now()
    for (let n = 10; n < 15; n++) expect(await publish(device, `upload_data/${dev.productId}/${dev.deviceId}/temp/${MID(n)}`, '{"c":1}')).toBe('acked')
    expect(await publish(device, `update_status/${dev.productId}/${dev.deviceId}/${MID(15)}`, '{"v":"1.0"}')).toBe('acked')
    expect(await uplinks('upload_data')).toBe(before.data + 5)
    expect(await uplinks('upload_data')).toBe(before.data + 5)
    expect(await uplinks('update_status')).toBe(before.status + 1)
    expect(gw.core.pipeline.lastHeard(dev)).toBeGreaterThanOrEqual(sent)
    expect(gw.core.pipeline.lastHeard({ productId: dev.productId, deviceId: 'never-connected' })).toBeUndefined()
  })

  it('sends north what a rule makes of a message, acknowledges what it drops, and does not acknowledge what it fails on', async () => {
    gw.core.pipeline.setRules(async (up, next) => {
      const body = JSON.parse(up.payload.toString()) as { c?: number; noise?: boolean; boom?: boolean }
      if (body.boom) throw new Error('rule failed')
      if (body.noise) return // dropped on site
      if (typeof body.c === 'number') return next({ ...up, payload: Buffer.from(JSON.stringify({ ...body, f: (body.c * 9) / 5 + 32 })) })
      return next(up)
    })
    try {
      const topic = (n: number): string => `upload_data/${dev.productId}/${dev.deviceId}/temp/${MID(n)}`
      expect(await publish(device, topic(1), '{"noise":true}')).toBe('acked')
      expect(await publish(device, topic(2), '{"c":100}')).toBe('acked')
      const got = await rec.waitFor((m) => m.topic === topic(2), 10_000, 'the converted reading')
      expect(JSON.parse(got.payload.toString())).toEqual({ c: 100, f: 212 })
      expect(rec.topics()).not.toContain(topic(1))
      // A failing rule: not durable, so not acknowledged (the broker closes the connection).
      expect(await publish(device, topic(3), '{"boom":true}')).toBe('refused')
    } finally {
      gw.core.pipeline.setRules(undefined)
    }
  })
})
