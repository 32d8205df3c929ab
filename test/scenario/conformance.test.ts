// MQTT 3.1.1 conformance of the gateway's broker, one test per spec statement (OASIS MQTT 3.1.1,
// cited as [MQTT-x.y.z-n]), on the internal listener (trusted tools, no login) and the
// authenticated external one (devices). Raw bytes over TCP where a real client would refuse to
// send the packet, against the real gateway process. What the broker does on each refusal:
// docs/integrators/mqtt-conformance.md.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { metricValue } from '../helpers/metrics.js'
import {
  CONNACK,
  PUBLISH,
  RawClient,
  SUBACK,
  connectPacket,
  pubackPacket,
  publishPacket,
  readPublish,
  remainingLength,
  subscribePacket,
  unsubscribePacket,
  type RawConnect,
} from '../helpers/raw-mqtt.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const dev = { productId: 'thermo', deviceId: 'a', secret: 'secret-a' }

let gateway: GatewayProcess
let seq = 0
const open: RawClient[] = []

beforeAll(async () => {
  // Both listeners refuse one topic space, as the Paho interop suite expects of a broker under test.
  const denyTopics = ['conformance/nosubscribe/#']
  gateway = new GatewayProcess({
    gateway: gw,
    devices: [dev],
    broker: { listeners: (['external', 'internal'] as const).map((zone) => ({ host: '127.0.0.1', zone, denyTopics })) },
  })
  await gateway.start()
})

afterAll(async () => {
  for (const c of open.splice(0)) c.end()
  await gateway?.close()
})

interface Zone {
  zone: 'internal' | 'external'
  port: () => number
  /** what a CONNECT needs on this listener (a device's login on the external one) */
  login: Pick<RawConnect, 'username' | 'password'>
  /** a filter this listener grants (the device ACL on the external one) */
  grantedFilter: string
}

const zones: Zone[] = [
  { zone: 'internal', port: () => gateway.internalPort, login: {}, grantedFilter: 'conformance/granted' },
  {
    zone: 'external',
    port: () => gateway.externalPort,
    login: { username: `${dev.productId}/${dev.deviceId}`, password: dev.secret },
    grantedFilter: `tags/${dev.productId}/+/cmd/+/+/+/#`,
  },
]

const clientId = (what: string): string => `${dev.productId}/${dev.deviceId}/${what}-${++seq}`

async function raw(port: number): Promise<RawClient> {
  const c = await RawClient.open(port)
  open.push(c)
  return c
}

/** A raw client past CONNACK 0 (the session-present flag and all). */
async function connected(z: Zone, c: Omit<RawConnect, 'username' | 'password'> = { clientId: clientId('raw') }): Promise<{ client: RawClient; sessionPresent: boolean }> {
  const client = await raw(z.port())
  client.send(connectPacket({ ...c, ...z.login }))
  const ack = await client.next('CONNACK')
  expect(ack.type).toBe(CONNACK)
  expect(ack.body[1], 'CONNACK return code').toBe(0)
  return { client, sessionPresent: (ack.body[0] & 1) === 1 }
}

/** Sends `bytes` on a fresh connection (after a good CONNECT if `afterConnect`) and expects the broker to close it without answering. */
async function closesOn(z: Zone, bytes: Buffer, afterConnect: boolean, what: string): Promise<void> {
  const client = afterConnect ? (await connected(z)).client : await raw(z.port())
  client.send(bytes)
  const before = await client.closedBy(what)
  expect(before.map((f) => f.type), `${what}: nothing may be answered before the close`).toEqual([])
}

const badUtf8 = Buffer.from([0x74, 0x6f, 0xed, 0xa0, 0x80]) // "to" + an encoded surrogate U+D800
const withNull = Buffer.from([0x74, 0x6f, 0x70, 0x00, 0x00])
const withControl = Buffer.from([0x74, 0x6f, 0x70, 0x01, 0x70])

describe.each(zones)('MQTT 3.1.1 on the $zone listener', (z) => {
  it('[MQTT-3.1.3-8] an empty client id with CleanSession=0 gets CONNACK 0x02 and the connection is closed', async () => {
    const client = await raw(z.port())
    client.send(connectPacket({ clientId: '', clean: false, ...z.login }))
    const got = await client.closedBy('empty client id, CleanSession=0')
    expect(got.map((f) => [f.type, f.body.toString('hex')])).toEqual([[CONNACK, '0002']])
    // [MQTT-3.1.3-6]: with CleanSession=1 the broker assigns an id and lets it in.
    const ok = await raw(z.port())
    ok.send(connectPacket({ clientId: '', clean: true, ...z.login }))
    expect((await ok.next('CONNACK')).body.toString('hex')).toBe('0000')
  })

  it('[MQTT-1.5.3-1] ill-formed UTF-8 in a client id, will topic, user name, topic name or topic filter closes the connection', async () => {
    await closesOn(z, connectPacket({ clientId: badUtf8, ...z.login }), false, 'client id')
    await closesOn(z, connectPacket({ clientId: clientId('will'), will: { topic: badUtf8 }, ...z.login }), false, 'will topic')
    await closesOn(z, connectPacket({ clientId: clientId('user'), username: badUtf8, password: 'x' }), false, 'user name')
    await closesOn(z, publishPacket({ topic: badUtf8, payload: 'x' }), true, 'PUBLISH topic')
    await closesOn(z, subscribePacket(1, [[badUtf8, 0]]), true, 'SUBSCRIBE filter')
    await closesOn(z, unsubscribePacket(1, [badUtf8]), true, 'UNSUBSCRIBE filter')
  })

  it('[MQTT-1.5.3-2] U+0000 in a string closes the connection; so does a control character (section 1.5.3)', async () => {
    await closesOn(z, connectPacket({ clientId: withNull, ...z.login }), false, 'client id with U+0000')
    await closesOn(z, publishPacket({ topic: withNull, payload: 'x' }), true, 'topic with U+0000')
    await closesOn(z, subscribePacket(1, [[withNull, 0]]), true, 'filter with U+0000')
    await closesOn(z, connectPacket({ clientId: withControl, ...z.login }), false, 'client id with U+0001')
    await closesOn(z, publishPacket({ topic: withControl, payload: 'x' }), true, 'topic with U+0001')
  })

  it('[MQTT-4.7.3-1] an empty will topic closes the connection before any CONNACK', async () => {
    await closesOn(z, connectPacket({ clientId: clientId('empty-will'), will: { topic: '', payload: 'gone' }, ...z.login }), false, 'empty will topic')
    await closesOn(z, subscribePacket(1, [['', 0]]), true, 'empty topic filter')
  })

  it('[MQTT-3.1.2-14] will QoS 3 closes the connection', async () => {
    await closesOn(z, connectPacket({ clientId: clientId('will-qos3'), will: { topic: 'conformance/will', qos: 3 }, ...z.login }), false, 'will QoS 3')
  })

  it('[MQTT-3.1.2-22] a password without a user name closes the connection', async () => {
    await closesOn(z, connectPacket({ clientId: clientId('no-user'), password: 'secret' }), false, 'password flag without user name flag')
  })

  it('[MQTT-3.1.2-2] an unsupported protocol level gets CONNACK 0x01 and the connection is closed', async () => {
    const client = await raw(z.port())
    client.send(connectPacket({ clientId: clientId('level6'), level: 6, ...z.login }))
    const got = await client.closedBy('protocol level 6')
    expect(got.map((f) => [f.type, f.body.toString('hex')])).toEqual([[CONNACK, '0001']])
  })

  it('[MQTT-2.3.1-1] packet identifier 0 in PUBLISH QoS 1, SUBSCRIBE, UNSUBSCRIBE or PUBACK closes the connection', async () => {
    await closesOn(z, publishPacket({ topic: 'conformance/id0', payload: 'x', qos: 1, id: 0 }), true, 'PUBLISH QoS 1, id 0')
    await closesOn(z, subscribePacket(0, [[z.grantedFilter, 0]]), true, 'SUBSCRIBE id 0')
    await closesOn(z, unsubscribePacket(0, [z.grantedFilter]), true, 'UNSUBSCRIBE id 0')
    await closesOn(z, pubackPacket(0), true, 'PUBACK id 0')
  })

  it('[MQTT-4.8.0-1] [MQTT-3.1.0-1] a length no such packet can have, a type a client never sends, closes the connection at its fixed header, without waiting for the body', async () => {
    const header = (first: number, length: number): Buffer => Buffer.concat([Buffer.from([first]), remainingLength(length)])
    await closesOn(z, header(0xe0, 154_000_000), true, 'a DISCONNECT announcing 154 MB')
    await closesOn(z, header(0x40, 3_000_000), true, 'a PUBACK announcing 3 MB')
    await closesOn(z, header(0x10, 100_000_000), false, 'a CONNECT announcing 100 MB')
    await closesOn(z, header(0x30, 1_000_000), false, 'a PUBLISH before CONNECT')
    await closesOn(z, header(0x00, 1_900_000), true, 'a packet of the forbidden type 0 announcing 1.9 MB')
    await closesOn(z, header(0x90, 1_000_000), true, 'a SUBACK from the client announcing 1 MB')
  })

  it('[MQTT-3.3.1-2] DUP set on a QoS 0 PUBLISH closes the connection', async () => {
    await closesOn(z, publishPacket({ topic: 'conformance/dup0', payload: 'x', qos: 0, dup: true }), true, 'QoS 0 with DUP')
  })

  it('MQTT 3.1 (sections 3.6, 3.8): a PUBREL or SUBSCRIBE sent again with DUP is answered; on 3.1.1 the bit is reserved [MQTT-2.2.2-2]', async () => {
    const { client } = await connected(z, { clientId: clientId('v31'), level: 3 })
    client.send(publishPacket({ topic: 'conformance/v31', payload: 'x', qos: 2, id: 1 }))
    expect((await client.next('PUBREC')).type).toBe(5)
    client.send(Buffer.from([0x6a, 0x02, 0x00, 0x01])) // PUBREL, DUP=1
    const pubcomp = await client.next('PUBCOMP for the PUBREL with DUP')
    expect([pubcomp.type, pubcomp.body.toString('hex')]).toEqual([7, '0001'])
    client.send(Buffer.concat([Buffer.from([0x8a]), subscribePacket(2, [[z.grantedFilter, 1]]).subarray(1)])) // SUBSCRIBE, DUP=1
    expect((await client.nextOf(SUBACK, 'SUBACK for the SUBSCRIBE with DUP')).body.toString('hex')).toBe('000201')
    await closesOn(z, Buffer.from([0x6a, 0x02, 0x00, 0x01]), true, 'PUBREL with DUP on MQTT 3.1.1')
  })

  it("[MQTT-3.8.4-5] [MQTT-3.9.3-1] a listener's denyTopics: a SUBSCRIBE inside them gets return code 0x80, the rest of it is granted", async () => {
    const { client } = await connected(z)
    client.send(subscribePacket(8, [['conformance/nosubscribe/a', 1], [z.grantedFilter, 1], ['conformance/nosubscribe/#', 0]]))
    const ack = await client.nextOf(SUBACK, 'SUBACK')
    expect(ack.body.toString('hex')).toBe('0008' + '80' + '01' + '80')
  })

  it('a $share/ filter is granted as its inner filter would be (conformance-shared.test.ts); $queue/ is refused with SUBACK 0x80, the rest of the SUBSCRIBE granted', async () => {
    const { client } = await connected(z)
    client.send(subscribePacket(7, [[`$share/group/${z.grantedFilter}`, 1], [z.grantedFilter, 1], [`$queue/${z.grantedFilter}`, 0]]))
    const ack = await client.nextOf(SUBACK, 'SUBACK')
    expect(ack.body.toString('hex')).toBe('0007' + '01' + '01' + '80')
  })

  it('[MQTT-3.2.2-2] a persistent session without subscriptions is reported present on reconnect', async () => {
    const id = clientId('session')
    const first = await connected(z, { clientId: id, clean: false })
    expect(first.sessionPresent, 'first connection: no session yet [MQTT-3.2.2-3]').toBe(false)
    first.client.end()
    await first.client.closedBy('own close')
    const again = await connected(z, { clientId: id, clean: false })
    expect(again.sessionPresent).toBe(true)
    again.client.end()
    // [MQTT-3.2.2-1]: CleanSession=1 ends the session; it is gone for the next persistent connection.
    const clean = await connected(z, { clientId: id, clean: true })
    expect(clean.sessionPresent).toBe(false)
    clean.client.end()
    await clean.client.closedBy('own close')
    expect((await connected(z, { clientId: id, clean: false })).sessionPresent).toBe(false)
  })

  it('counts each refusal as a malformed packet and logs it with its code and rule', async () => {
    const count = async (): Promise<number> => metricValue((await gateway.api<string>('GET', '/metrics')).body, 'iothub_edge_rejected_total', { reason: 'malformed_packet' })
    const before = await count()
    await closesOn(z, publishPacket({ topic: 'conformance/count', payload: 'x', qos: 1, id: 0 }), true, 'PUBLISH id 0')
    await expect.poll(count).toBeGreaterThan(before)
    expect(gateway.logs()).toMatch(/"code":"IHE_MQTT_PROTOCOL_VIOLATION".*"rule":"\[MQTT-2\.3\.1-1\]"|"rule":"\[MQTT-2\.3\.1-1\]".*"code":"IHE_MQTT_PROTOCOL_VIOLATION"/)
  })
})

describe('MQTT 3.1.1 delivery of commands on the external listener', () => {
  const z = zones[1]

  it('[MQTT-3.3.1-1] a command re-sent to a persistent-session device after a reconnect carries DUP=1 and the same packet id', async () => {
    const id = clientId('cmd-dup')
    const first = await connected(z, { clientId: id, clean: false })
    const sent = await gateway.api('POST', `/api/devices/${dev.productId}/${dev.deviceId}/commands`, { name: 'reboot', payload: 'now' })
    expect(sent.status).toBe(202)
    const delivered = readPublish(await first.client.nextOf(PUBLISH, 'the command'))
    expect(delivered).toMatchObject({ qos: 1, dup: false, payload: 'now' })
    expect(delivered.topic).toContain(sent.body.requestId)
    // No PUBACK: the device loses its connection with the command unacknowledged.
    first.client.end()
    await first.client.closedBy('own close')
    const back = await connected(z, { clientId: id, clean: false })
    expect(back.sessionPresent).toBe(true)
    const again = readPublish(await back.client.nextOf(PUBLISH, 'the command after reconnect'))
    expect(again).toMatchObject({ topic: delivered.topic, qos: 1, dup: true, id: delivered.id, payload: 'now' })
    back.client.send(pubackPacket(again.id!))
  })
})

// What aedes did wrong and the patch in patches/ fixes (docs/decisions/0016-aedes-patches.md).
// Pub/sub between two clients on any topic: the internal listener (the device ACL keeps devices
// on the external one from receiving each other's messages at all).
describe('MQTT 3.1.1 delivery on the internal listener', () => {
  const z = zones[0]

  it('[MQTT-3.3.1-1] a QoS 1 message sent again after a reconnect carries DUP=1', async () => {
    const id = clientId('dup')
    const topic = `conformance/dup/${seq}`
    const sub = await connected(z, { clientId: id, clean: false })
    sub.client.send(subscribePacket(1, [[topic, 1]]))
    expect((await sub.client.nextOf(SUBACK, 'SUBACK')).body.toString('hex')).toBe('000101')
    const pub = await connected(z)
    pub.client.send(publishPacket({ topic, payload: 'once', qos: 1, id: 9 }))
    const first = readPublish(await sub.client.nextOf(PUBLISH, 'first delivery'))
    expect(first).toMatchObject({ topic, qos: 1, dup: false, payload: 'once' })
    // No PUBACK: the subscriber goes away with the message unacknowledged.
    sub.client.end()
    await sub.client.closedBy('own close')
    const back = await connected(z, { clientId: id, clean: false })
    expect(back.sessionPresent).toBe(true)
    const again = readPublish(await back.client.nextOf(PUBLISH, 'delivery after reconnect'))
    expect(again).toMatchObject({ topic, qos: 1, dup: true, id: first.id, payload: 'once' })
    back.client.send(pubackPacket(again.id!))
  })

  it('[MQTT-4.3.2-1] [MQTT-4.3.3-1] acknowledging with the wrong packet type closes the connection', async () => {
    const wrongAck = async (qos: 1 | 2, ack: number, name: string): Promise<void> => {
      const topic = `conformance/ack${++seq}`
      const sub = await connected(z)
      sub.client.send(subscribePacket(1, [[topic, qos]]))
      await sub.client.nextOf(SUBACK, 'SUBACK')
      const pub = await connected(z)
      pub.client.send(publishPacket({ topic, payload: name, qos, id: 1 }))
      const got = readPublish(await sub.client.nextOf(PUBLISH, name))
      expect(got.qos).toBe(qos)
      sub.client.send(Buffer.from([ack, 0x02, got.id! >> 8, got.id! & 0xff]))
      expect(await sub.client.closedBy(name)).toEqual([])
    }
    await wrongAck(1, 0x50, 'PUBREC for a QoS 1 message')
    await wrongAck(1, 0x70, 'PUBCOMP for a QoS 1 message')
    await wrongAck(2, 0x40, 'PUBACK for a QoS 2 message')
  })

  it("a wider filter delivers nothing on the listener's denyTopics, retained or live", async () => {
    const base = `conformance/nosubscribe/${++seq}`
    const pub = await connected(z)
    pub.client.send(publishPacket({ topic: `${base}/kept`, payload: 'kept', retain: true, qos: 1, id: 1 }))
    await pub.client.next('PUBACK of the retained message')
    const sub = await connected(z)
    sub.client.send(subscribePacket(2, [['conformance/#', 0]]))
    expect((await sub.client.next('SUBACK')).body.toString('hex')).toBe('000200')
    pub.client.send(publishPacket({ topic: `${base}/live`, payload: 'live' }), publishPacket({ topic: `conformance/allowed${seq}`, payload: 'allowed' }))
    // The first and only message is the one outside denyTopics (retained ones of other tests aside).
    for (;;) {
      const got = readPublish(await sub.client.nextOf(PUBLISH, 'the allowed message'))
      expect(got.topic.startsWith('conformance/nosubscribe/'), got.topic).toBe(false)
      if (got.topic === `conformance/allowed${seq}`) break
    }
  })

  it('[MQTT-4.7.1-3] `+` matches an empty level, for live and retained messages', async () => {
    const base = `conformance/empty${++seq}`
    const pub = await connected(z)
    pub.client.send(publishPacket({ topic: `${base}//baz`, payload: 'kept', retain: true, qos: 1, id: 1 }))
    await pub.client.next('PUBACK of the retained message')
    const sub = await connected(z)
    sub.client.send(subscribePacket(2, [[`${base}/+/baz`, 0]]))
    expect((await sub.client.next('SUBACK')).type).toBe(SUBACK)
    expect(readPublish(await sub.client.next('retained'))).toMatchObject({ topic: `${base}//baz`, retain: true, payload: 'kept' })
    pub.client.send(publishPacket({ topic: `${base}//baz`, payload: 'live' }))
    expect(readPublish(await sub.client.next('live'))).toMatchObject({ topic: `${base}//baz`, retain: false, payload: 'live' })
  })

  it('[MQTT-3.8.4-6] messages come at most at the QoS granted, through wildcards and when retained', async () => {
    const base = `conformance/qos${++seq}`
    const pub = await connected(z)
    pub.client.send(publishPacket({ topic: `${base}/r`, payload: 'retained-qos2', retain: true, qos: 2, id: 1 }))
    await pub.client.next('PUBREC')
    pub.client.send(Buffer.from([0x62, 0x02, 0x00, 0x01]))
    await pub.client.next('PUBCOMP')
    const sub = await connected(z)
    sub.client.send(subscribePacket(3, [[`${base}/#`, 1]]))
    expect((await sub.client.next('SUBACK')).body.toString('hex')).toBe('000301')
    const retained = readPublish(await sub.client.next('retained'))
    expect(retained).toMatchObject({ topic: `${base}/r`, qos: 1, retain: true })
    sub.client.send(pubackPacket(retained.id!))
    pub.client.send(publishPacket({ topic: `${base}/live`, payload: 'live-qos2', qos: 2, id: 2 }))
    const live = readPublish(await sub.client.nextOf(PUBLISH, 'live'))
    expect(live).toMatchObject({ topic: `${base}/live`, qos: 1, payload: 'live-qos2' })
  })

  it('[MQTT-3.1.4-2] a persistent session taken over by a new persistent connection goes on without publishing the will', async () => {
    const topic = `conformance/will${++seq}`
    const watcher = await connected(z)
    watcher.client.send(subscribePacket(5, [[topic, 0]]))
    expect((await watcher.client.next('SUBACK')).type).toBe(SUBACK)
    const id = clientId('takeover')
    const old = await connected(z, { clientId: id, clean: false, will: { topic, payload: 'gone' } })
    const taker = await connected(z, { clientId: id, clean: false })
    expect(taker.sessionPresent).toBe(true)
    await old.client.closedBy('the taken-over connection')
    taker.client.send(publishPacket({ topic, payload: 'still here' }))
    // The first thing the watcher sees is the new connection's message, not the will.
    expect(readPublish(await watcher.client.next('message from the new connection')).payload).toBe('still here')
  })

  it('[MQTT-3.3.1-9] a SUBSCRIBE right behind a retained PUBLISH on the same connection gets that message, retained, once', async () => {
    const topic = `conformance/pipelined${++seq}`
    const { client } = await connected(z)
    client.send(publishPacket({ topic, payload: 'retained', retain: true }), subscribePacket(4, [[topic, 0]]))
    expect((await client.next('SUBACK')).type).toBe(SUBACK)
    expect(readPublish(await client.next('the retained message'))).toMatchObject({ topic, retain: true, payload: 'retained' })
    // Nothing else: no second, live copy. A PINGREQ's answer marks the end of what came.
    client.send(Buffer.from([0xc0, 0x00]))
    expect((await client.next('PINGRESP')).type).toBe(13)
  })
})
