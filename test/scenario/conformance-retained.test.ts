// The order retained messages come in when one SUBSCRIBE matches several (docs/integrators/
// mqtt-conformance.md): topic order, a parent before its children, the same every time, with either
// broker.persistence, and from broker.db after a restart. MQTT 3.1.1 fixes the order of messages
// within a topic [MQTT-4.6.0-5] (a topic has one retained message); across topics the order is
// the broker's, and this one is documented. Raw MQTT 3.1.1 clients against the real gateway.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { CONNACK, PUBLISH, RawClient, SUBACK, connectPacket, publishPacket, readPublish, subscribePacket } from '../helpers/raw-mqtt.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }

// Retained in this order; topic order is below.
const retainedInOrder = ['order/1/2/3/4/5/6/7', 'order/1/2/3/4', 'order/1-x', 'order/1', 'order/0', 'order/1/2']
const topicOrder = ['order/0', 'order/1', 'order/1/2', 'order/1/2/3/4', 'order/1/2/3/4/5/6/7', 'order/1-x']

describe.each(['sqlite', 'memory'] as const)('retained messages in topic order with broker.persistence: %s', (persistence) => {
  let gateway: GatewayProcess
  const open: RawClient[] = []
  let seq = 0

  beforeAll(async () => {
    gateway = new GatewayProcess({ gateway: gw, broker: { persistence, listeners: [{ host: '127.0.0.1', zone: 'internal' }] } })
    await gateway.start()
  })

  afterAll(async () => {
    for (const c of open.splice(0)) c.end()
    await gateway?.close()
  })

  async function connected(): Promise<RawClient> {
    const c = await RawClient.open(gateway.internalPort)
    open.push(c)
    c.send(connectPacket({ clientId: `retained-${persistence}-${++seq}` }))
    expect((await c.next('CONNACK')).type).toBe(CONNACK)
    return c
  }

  async function retain(topic: string, payload: string): Promise<void> {
    const c = await connected()
    c.send(publishPacket({ topic, payload, retain: true, qos: 1, id: 1 }))
    await c.next(`PUBACK of ${topic}`)
    c.end()
  }

  /** The topics of the retained messages one SUBSCRIBE to `filter` brings, in the order they came. */
  async function retainedFor(filter: string, count: number): Promise<string[]> {
    const c = await connected()
    c.send(subscribePacket(1, [[filter, 0]]))
    expect((await c.next('SUBACK')).type).toBe(SUBACK)
    const topics: string[] = []
    while (topics.length < count) {
      const m = readPublish(await c.nextOf(PUBLISH, `retained message ${topics.length + 1} of ${count}`))
      expect(m.retain, m.topic).toBe(true)
      topics.push(m.topic)
    }
    // Nothing more: a PINGRESP comes next.
    c.send(Buffer.from([0xc0, 0x00]))
    expect((await c.next('PINGRESP')).type).toBe(13)
    c.end()
    return topics
  }

  it('a parent topic comes before its children, whatever order they were retained in; the same order again after a message is cleared and retained anew', async () => {
    for (const t of retainedInOrder) await retain(t, `kept ${t}`)
    expect(await retainedFor('order/#', topicOrder.length)).toEqual(topicOrder)
    // Cleared (empty retained message) and retained again: last in, but still in its place.
    await retain('order/1/2/3/4', '')
    expect(await retainedFor('order/#', topicOrder.length - 1)).toEqual(topicOrder.filter((t) => t !== 'order/1/2/3/4'))
    await retain('order/1/2/3/4', 'again')
    expect(await retainedFor('#', topicOrder.length)).toEqual(topicOrder)
    expect(await retainedFor('order/+', 3)).toEqual(['order/0', 'order/1', 'order/1-x'])
  })

  it(persistence === 'sqlite' ? 'the same order from broker.db after a restart' : 'nothing retained after a restart (memory)', async () => {
    await gateway.restart()
    if (persistence === 'sqlite') expect(await retainedFor('order/#', topicOrder.length)).toEqual(topicOrder)
    else expect(await retainedFor('order/#', 0)).toEqual([])
  })

  it('[MQTT-4.6.0-5] a topic keeps its newest retained message only, in the order published', async () => {
    await retain('order/one', 'first')
    await retain('order/one', 'second')
    const c = await connected()
    c.send(subscribePacket(1, [['order/one', 0]]))
    expect((await c.next('SUBACK')).type).toBe(SUBACK)
    expect(readPublish(await c.next('the retained message'))).toMatchObject({ topic: 'order/one', payload: 'second', retain: true })
  })
})

describe('broker.allowEmptyClientId: false', () => {
  let gateway: GatewayProcess
  const open: RawClient[] = []

  beforeAll(async () => {
    gateway = new GatewayProcess({ gateway: gw, broker: { allowEmptyClientId: false, listeners: [{ host: '127.0.0.1', zone: 'internal' }] } })
    await gateway.start()
  })

  afterAll(async () => {
    for (const c of open.splice(0)) c.end()
    await gateway?.close()
  })

  it('[MQTT-3.1.3-9] an empty client id gets CONNACK 0x02 (identifier rejected) and the connection is closed, whatever CleanSession says; a client id is let in', async () => {
    for (const clean of [true, false]) {
      const c = await RawClient.open(gateway.internalPort)
      open.push(c)
      c.send(connectPacket({ clientId: '', clean }))
      const got = await c.closedBy(`empty client id, CleanSession=${clean ? 1 : 0}`)
      expect(got.map((f) => [f.type, f.body.toString('hex')])).toEqual([[CONNACK, '0002']])
    }
    const ok = await RawClient.open(gateway.internalPort)
    open.push(ok)
    ok.send(connectPacket({ clientId: 'has-an-id', clean: true }))
    expect((await ok.next('CONNACK')).body.toString('hex')).toBe('0000')
    expect(gateway.logs()).toMatch(/"rule":"\[MQTT-3\.1\.3-9\]"/)
  })
})
