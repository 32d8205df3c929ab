// The stand-in cloud broker must enforce PROTOCOL.md's device ACL, or scenario tests that rely
// on it (a gateway publishing for its children) would pass against a broker that allows anything.
import type { MqttClient } from 'mqtt'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { connectDevice, newMessageId, publishQos1, type ConnectError } from '../helpers/device.js'
import { HubBroker } from '../helpers/hub-broker.js'

const thermo1 = { productId: 'thermo', deviceId: 't1', secret: 's1' }
const thermo2 = { productId: 'thermo', deviceId: 't2', secret: 's2' }
const gateway = {
  productId: 'gateways',
  deviceId: 'gw-01',
  secret: 'gw-secret',
  children: [{ productId: 'meter', deviceId: 'm1' }],
}

describe('HubBroker', () => {
  let hub: HubBroker
  const clients: MqttClient[] = []

  async function device(login: { productId: string; deviceId: string; secret: string }): Promise<MqttClient> {
    const client = await connectDevice(hub.url, login)
    clients.push(client)
    return client
  }

  beforeEach(async () => {
    hub = new HubBroker({ devices: [thermo1, thermo2], gateway })
    await hub.start()
  })

  afterEach(async () => {
    await Promise.allSettled(clients.splice(0).map((c) => c.endAsync(true)))
    await hub.close()
  })

  it('delivers a device upload to the hub', async () => {
    const recorder = await hub.subscribeAll()
    const t1 = await device(thermo1)
    const topic = `upload_data/thermo/t1/temperature/${newMessageId()}`
    await publishQos1(t1, topic, '{"c":21.5}')

    const got = await recorder.waitFor((m) => m.topic === topic)
    expect(got.payload.toString()).toBe('{"c":21.5}')
    expect(got.qos).toBe(1)
  })

  it('drops a publish on another device topic', async () => {
    const recorder = await hub.subscribeAll()
    const t1 = await device(thermo1)
    const foreign = `upload_data/thermo/t2/temperature/${newMessageId()}`
    const own = `upload_data/thermo/t1/temperature/${newMessageId()}`
    await publishQos1(t1, foreign, 'forged')
    // Mosquitto handles one connection's publishes in order: once the later allowed message has
    // reached the hub, the earlier forged one would have too if the ACL had let it through.
    await publishQos1(t1, own, 'marker')
    await recorder.waitFor((m) => m.topic === own)
    await expect(recorder.waitFor((m) => m.topic === foreign, 500)).rejects.toThrow(/expected a message/)
    expect(recorder.topics()).toEqual([own])
  })

  it('refuses a wrong secret with CONNACK 5', async () => {
    const err = (await connectDevice(hub.url, { ...thermo1, secret: 'wrong' }).catch((e: unknown) => e)) as ConnectError
    expect(err).toBeInstanceOf(Error)
    expect(err.code).toBe(5)
  })

  it('delivers a hub command to its device only', async () => {
    const t1 = await device(thermo1)
    const t2 = await device(thermo2)
    const received: string[] = []
    t1.on('message', (topic) => received.push(`t1 ${topic}`))
    t2.on('message', (topic) => received.push(`t2 ${topic}`))
    // The hub subscribes devices server-side; Mosquitto cannot, so the devices do it here.
    // Mosquitto 2.0.11 grants any SUBSCRIBE and applies the read ACL per delivered message, so
    // t2's greedy filter must still only bring it its own commands.
    await t1.subscribeAsync('cmd/thermo/t1/#', { qos: 1 })
    await t2.subscribeAsync('cmd/thermo/#', { qos: 1 })

    const forT1 = `cmd/thermo/t1/reboot/plain/${newMessageId()}`
    const forT2 = `cmd/thermo/t2/reboot/plain/${newMessageId()}`
    const t2Done = new Promise<void>((resolve) => t2.once('message', () => resolve()))
    const t1Done = new Promise<void>((resolve) => t1.once('message', () => resolve()))
    await hub.publishAsHub(forT1, '{}')
    await hub.publishAsHub(forT2, '{}')
    await Promise.all([t1Done, t2Done])
    expect(received.sort()).toEqual([`t1 ${forT1}`, `t2 ${forT2}`])
  })

  it('lets the gateway publish for its children and no one else', async () => {
    const recorder = await hub.subscribeAll('upload_data/#')
    const gw = await device(gateway)
    const forged = `upload_data/thermo/t1/temperature/${newMessageId()}`
    const child = `upload_data/meter/m1/energy/${newMessageId()}`
    const own = `upload_data/gateways/gw-01/$connection/${newMessageId()}`
    await publishQos1(gw, forged, 'x')
    await publishQos1(gw, child, 'x')
    await publishQos1(gw, own, 'x')
    await recorder.waitForCount(2)
    expect(recorder.topics()).toEqual([child, own])
  })

  it('keeps a queued QoS 1 message for the hub across a broker restart', async () => {
    const first = await hub.subscribeAll()
    await first.close() // the persistent session stays on the broker
    const t1 = await device(thermo1)
    const topic = `upload_data/thermo/t1/temperature/${newMessageId()}`
    await publishQos1(t1, topic, 'queued')

    await hub.stop()
    const url = hub.url
    await hub.start()
    expect(hub.url).toBe(url)

    const again = await hub.subscribeAll()
    const got = await again.waitFor((m) => m.topic === topic)
    expect(got.payload.toString()).toBe('queued')
  })
})
