// Session state across a gateway restart that MQTT 3.1.1 makes visible in CONNACK (broker.db,
// broker.persistence: sqlite, the default): a persistent session without subscriptions or queued
// messages is still a session [MQTT-3.2.2-2]. Raw MQTT 3.1.1 clients against the real gateway.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { CONNACK, RawClient, connectPacket } from '../helpers/raw-mqtt.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }

let gateway: GatewayProcess
const open: RawClient[] = []

beforeAll(async () => {
  gateway = new GatewayProcess({ gateway: gw, broker: { listeners: [{ host: '127.0.0.1', zone: 'internal' }] } })
  await gateway.start()
})

afterAll(async () => {
  for (const c of open.splice(0)) c.end()
  await gateway?.close()
})

/** Connects, reads the CONNACK (return code 0) and disconnects: whether a session was present. */
async function sessionPresent(clientId: string, clean: boolean): Promise<boolean> {
  const c = await RawClient.open(gateway.internalPort)
  open.push(c)
  c.send(connectPacket({ clientId, clean }))
  const ack = await c.next('CONNACK')
  expect(ack.type).toBe(CONNACK)
  expect(ack.body[1], 'CONNACK return code').toBe(0)
  c.send(Buffer.from([0xe0, 0x00])) // DISCONNECT
  await c.closedBy('DISCONNECT')
  return (ack.body[0] & 1) === 1
}

describe('MQTT 3.1.1 sessions across a gateway restart', () => {
  it('[MQTT-3.2.2-2] a persistent session without subscriptions is reported present after a restart; [MQTT-3.2.2-1] one ended by CleanSession=1 is not', async () => {
    expect(await sessionPresent('kept-session', false), 'first connection [MQTT-3.2.2-3]').toBe(false)
    expect(await sessionPresent('ended-session', false)).toBe(false)
    expect(await sessionPresent('ended-session', true), 'CleanSession=1 [MQTT-3.2.2-1]').toBe(false)
    await gateway.restart()
    expect(await sessionPresent('kept-session', false)).toBe(true)
    expect(await sessionPresent('ended-session', false)).toBe(false)
  })
})
