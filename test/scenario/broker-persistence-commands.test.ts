// A command from the hub to a device with a persistent session (CleanSession=0) that leaves before
// it PUBACKs (issue 17, broker-robust item 1). Two queues could send it again at the reconnect: the
// broker's session queue (broker.db) and the gateway's command queue (gateway.db). The device must
// get it once per delivery attempt: at the reconnect exactly one PUBLISH, DUP=1 and its original
// packet identifier [MQTT-3.3.1-1] [MQTT-4.4.0-1], and none again once it has PUBACKed it. Also
// across a kill -9 of the gateway. Real peers: Mosquitto as the hub, the gateway process, the
// device as raw MQTT bytes (to read DUP and packet ids exactly).
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { newMessageId } from '../helpers/device.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HubBroker } from '../helpers/hub-broker.js'
import { CONNACK, PUBLISH, RawClient, connectPacket, pubackPacket, readPublish } from '../helpers/raw-mqtt.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const lamp = { productId: 'lamp', deviceId: 'persistent', secret: 'secret-persistent' }
const CLIENT_ID = `${lamp.productId}/${lamp.deviceId}/session`

type Publish = ReturnType<typeof readPublish>

describe('a command to a persistent-session device that left before its PUBACK', () => {
  let hub: HubBroker
  let gateway: GatewayProcess
  const open: RawClient[] = []

  beforeEach(({ onTestFailed }) => {
    onTestFailed(() => console.log(gateway.failure('output when the test failed').message))
  })

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [lamp] } })
    await hub.start()
    gateway = new GatewayProcess({ gateway: gw, northbound: { url: hub.url }, devices: [lamp], log: { level: 'info' } })
    await gateway.start()
  })

  afterAll(async () => {
    for (const c of open.splice(0)) c.end()
    await gateway?.close()
    await hub?.close()
  })

  async function online(want: boolean): Promise<void> {
    await expect
      .poll(async () => (await gateway.api<{ online: boolean }>('GET', `/api/devices/${lamp.productId}/${lamp.deviceId}`)).body.online, { timeout: 15_000 })
      .toBe(want)
  }

  /** The device's connection with CleanSession=0, once the gateway counts it online. */
  async function connect(): Promise<{ client: RawClient; sessionPresent: boolean }> {
    const client = await RawClient.open(gateway.externalPort)
    open.push(client)
    client.send(connectPacket({ clientId: CLIENT_ID, clean: false, username: `${lamp.productId}/${lamp.deviceId}`, password: lamp.secret }))
    const ack = await client.next('CONNACK')
    expect(ack.type).toBe(CONNACK)
    expect(ack.body[1], 'CONNACK return code').toBe(0)
    return { client, sessionPresent: (ack.body[0] & 1) === 1 }
  }

  /** PUBLISHes up to and including the first on `topic` (acknowledging none). */
  async function publishesUntil(client: RawClient, topic: string): Promise<Publish[]> {
    const got: Publish[] = []
    for (;;) {
      const p = readPublish(await client.nextOf(PUBLISH, `the command on ${topic}`, 15_000))
      got.push(p)
      if (p.topic === topic) return got
    }
  }

  function leave(client: RawClient): void {
    client.end()
    open.splice(open.indexOf(client), 1)
  }

  /**
   * After the reconnect: the command comes exactly once, with DUP=1 and `firstId`; once PUBACKed it
   * is delivered (API) and never sent again. A second command is the sync point: the router sends
   * a device its commands in order, so a second copy of the first would come before it.
   */
  async function onceAfterReconnect(topic: string, firstId: number): Promise<void> {
    const { client, sessionPresent } = await connect()
    expect(sessionPresent, 'CONNACK session present').toBe(true)
    const got = await publishesUntil(client, topic)
    const copies = got.filter((p) => p.topic === topic)
    expect(copies).toHaveLength(1)
    expect(copies[0]).toMatchObject({ qos: 1, dup: true, id: firstId })
    client.send(pubackPacket(firstId))

    const next = `cmd/${lamp.productId}/${lamp.deviceId}/setLevel/plain/${newMessageId()}`
    await hub.publishAsHub(next, '{"level":2}')
    const after = await publishesUntil(client, next)
    expect(after.map((p) => p.topic)).toEqual([next])
    expect(after[0].dup, 'a first delivery attempt carries DUP=0').toBe(false)
    client.send(pubackPacket(after[0].id!))
    const requestId = topic.split('/').at(-1)
    await expect
      .poll(async () => (await gateway.api<{ commands: { requestId: string; state: string }[] }>('GET', `/api/devices/${lamp.productId}/${lamp.deviceId}/commands`)).body.commands.find((c) => c.requestId === requestId)?.state, { timeout: 15_000 })
      .toBe('delivered')

    // And once more away and back: nothing is left to send in either queue.
    leave(client)
    await online(false)
    const again = await connect()
    await online(true)
    const last = `cmd/${lamp.productId}/${lamp.deviceId}/setLevel/plain/${newMessageId()}`
    await hub.publishAsHub(last, '{"level":3}')
    const tail = await publishesUntil(again.client, last)
    expect(tail.map((p) => p.topic)).toEqual([last])
    again.client.send(pubackPacket(tail[0].id!))
    leave(again.client)
    await online(false)
  }

  /** A fresh command, received and not acknowledged; the device then leaves. Returns its packet id. */
  async function receivedNotAcknowledged(topic: string): Promise<number> {
    const { client } = await connect()
    await online(true)
    await hub.publishAsHub(topic, '{"level":1}')
    const [first] = (await publishesUntil(client, topic)).filter((p) => p.topic === topic)
    expect(first).toMatchObject({ qos: 1, dup: false })
    return first.id!
  }

  it('is sent again once at the reconnect, DUP=1 with its packet id, and never after its PUBACK', async () => {
    const topic = `cmd/${lamp.productId}/${lamp.deviceId}/setLevel/plain/${newMessageId()}`
    const id = await receivedNotAcknowledged(topic)
    leave(open.at(-1)!)
    await online(false)
    await onceAfterReconnect(topic, id)
  })

  it('the same across a kill -9 of the gateway while it waited for the PUBACK', async () => {
    const topic = `cmd/${lamp.productId}/${lamp.deviceId}/setLevel/plain/${newMessageId()}`
    const id = await receivedNotAcknowledged(topic)
    // broker.db's group commit has had its turn: what it keeps of the session is on disk.
    await sleep(200)
    await gateway.kill9()
    leave(open.at(-1)!)
    await gateway.start()
    await onceAfterReconnect(topic, id)
  })
})
