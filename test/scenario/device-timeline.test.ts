// A device's timeline (GET /api/devices/{p}/{d}/events, the device page's "Events") lists besides
// its sessions and commands the alarms a rule raised and cleared for it, and the errors the gateway
// logged about it (a refused login, a refused publish), each with its error code. A device's own
// `alarm` data is data, not an alarm; errors of ids that are not registered devices are not kept.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { MqttClient } from 'mqtt'
import { connectDevice, newMessageId, publishQos1, refusedWith } from '../helpers/device.js'
import { GatewayProcess } from '../helpers/gateway-process.js'

const gw = { productId: 'gateways', deviceId: 'gw-tl', secret: 'gw-tl-secret' }
const boiler = { productId: 'boiler', deviceId: 'b1', secret: 'secret-b1' }
const other = { productId: 'boiler', deviceId: 'b2', secret: 'secret-b2' }

interface Event {
  ts: number
  type: string
  detail?: Record<string, unknown>
}

describe('device timeline', () => {
  let gateway: GatewayProcess
  let client: MqttClient | undefined
  const from = Date.now() - 60_000

  beforeAll(async () => {
    gateway = new GatewayProcess({
      gateway: gw,
      devices: [boiler, other],
      rules: [
        {
          name: 'boiler-overheat',
          from: 'upload_data/boiler/+/temperature',
          actions: [{ alarm: { name: 'overheat', set: 'payload.celsius > 90.0', clear: 'payload.celsius < 85.0', value: 'payload.celsius' } }],
        },
      ],
    })
    await gateway.start()
  }, 60_000)

  afterAll(async () => {
    await client?.endAsync()
    await gateway?.close()
  })

  const events = async (device = 'boiler/b1'): Promise<Event[]> => (await gateway.api<{ events: Event[] }>('GET', `/api/devices/${device}/events?from=${from}`)).body.events
  const types = async (device?: string): Promise<string[]> => (await events(device)).map((e) => e.type)

  it('an alarm a rule raised and cleared for the device, with the rule, the alarm and its value', async () => {
    client = await connectDevice(gateway.externalUrl, boiler)
    const c = client
    for (const celsius of [95, 97, 88, 84]) await publishQos1(c, `upload_data/boiler/b1/temperature/${newMessageId()}`, JSON.stringify({ celsius }))
    // The device's own `alarm` DataType is its data: no alarm event from it.
    await publishQos1(c, `upload_data/boiler/b1/alarm/${newMessageId()}`, JSON.stringify({ alarm: 'overheat', rule: 'boiler-overheat', state: 'raised', value: 1 }))
    await expect.poll(() => types(), { timeout: 15_000 }).toEqual(expect.arrayContaining(['connected', 'alarm_raised', 'alarm_cleared']))
    const list = await events()
    expect(list.filter((e) => e.type === 'alarm_raised')).toEqual([expect.objectContaining({ detail: { alarm: 'overheat', rule: 'boiler-overheat', value: 95 } })])
    expect(list.filter((e) => e.type === 'alarm_cleared')).toEqual([expect.objectContaining({ detail: { alarm: 'overheat', rule: 'boiler-overheat', value: 84 } })])
    const raised = list.find((e) => e.type === 'alarm_raised')!
    expect(raised.ts).toBeLessThanOrEqual(list.find((e) => e.type === 'alarm_cleared')!.ts)
  })

  it('errors the gateway logged about the device: a refused login and a refused publish, with their codes', async () => {
    await refusedWith(gateway.externalUrl, { ...other, secret: 'not-the-secret' })
    // Publishing on another device's topic is refused by the ACL (and named as this device's error).
    await publishQos1(client!, `upload_data/boiler/b2/temperature/${newMessageId()}`, JSON.stringify({ celsius: 20 }))
    await expect.poll(async () => (await events('boiler/b2')).filter((e) => e.type === 'error').map((e) => e.detail?.code), { timeout: 15_000 }).toContain('IHE_AUTH_FAILED')
    await expect.poll(async () => (await events()).filter((e) => e.type === 'error').map((e) => e.detail?.code), { timeout: 15_000 }).toContain('IHE_ACL_DENIED')
    const acl = (await events()).find((e) => e.type === 'error' && e.detail?.code === 'IHE_ACL_DENIED')!
    expect(acl.detail?.msg).toBe('publish refused by ACL')

    // An id that is no device of this gateway: counted in the log, not kept in a timeline.
    await refusedWith(gateway.externalUrl, { productId: 'ghost', deviceId: 'g1', secret: 'whatever' })
    // ... while a later error of a registered device (a topic that is not PROTOCOL.md's) is.
    await publishQos1(client!, `upload_data/boiler/b1/${newMessageId()}`, '{}')
    await expect.poll(async () => (await events()).filter((e) => e.type === 'error').map((e) => e.detail?.code), { timeout: 15_000 }).toContain('IHE_BAD_TOPIC')
    expect(gateway.logs()).toContain('"device":"ghost/g1"')
    expect(await events('ghost/g1')).toEqual([])
  })
})
