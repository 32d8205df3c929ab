// A QoS 1 message the local broker PUBACKed is durable in the away device's session (issue 17 item
// 2; docs/operators/broker-sessions.md "When a message is safe"). aedes 1.2.0 wrote the PUBACK first
// and queued the message for offline persistent sessions after it, so a kill -9 in between lost a
// message its publisher had been told was delivered. patches/aedes+1.2.0.patch sends the PUBACK once
// the message is queued (broker.db committed), in the order the PUBLISHes came [MQTT-4.6.0-2].
//
// Real peers: the gateway process, killed with SIGKILL from inside the publisher's PUBACK callback;
// MQTT.js as the device (persistent session, away) and as a local tool on the internal listener
// publishing QoS 1 with many messages in flight.
import { randomBytes } from 'node:crypto'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { GatewayProcess } from '../helpers/gateway-process.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const away = { productId: 'lamp', deviceId: 'away', secret: 'secret-away' }
const CLIENT_ID = 'lamp/away/persistent'
const FILTER = 'tags/lamp/night/cmd/+/+/+/#'
/** Messages the tool keeps in flight, and after how many PUBACKs the gateway is killed. */
const WINDOW = 50
const KILL_AFTER = 150
const ROUNDS = 3
/** Big enough that a window's queue commit takes a while to write: a kill right after an early PUBACK lands before it. */
const PAYLOAD = 48 * 1024

function connect(url: string, opts: IClientOptions): Promise<MqttClient> {
  const client = mqtt.connect(url, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5_000, ...opts })
  client.on('error', () => undefined)
  return new Promise((resolve, reject) => {
    client.once('connect', () => resolve(client))
    client.once('close', () => reject(new Error(`${opts.clientId}: closed before CONNACK`)))
  })
}

describe('a QoS 1 message PUBACKed for an away persistent session survives a kill -9 right after the PUBACK', () => {
  let gateway: GatewayProcess
  const clients: MqttClient[] = []

  beforeEach(async (ctx) => {
    // Room in the session's queue for everything in flight (the limits are another test's subject).
    gateway = new GatewayProcess({ gateway: gw, devices: [away], log: { level: 'info' }, broker: { maxQueuedBytes: 256 * 1024 * 1024, maxQueuedMessages: 100_000 } })
    ctx.onTestFailed(() => console.log(gateway.failure('output when the test failed').message))
    await gateway.start()
  })

  afterEach(async () => {
    await Promise.allSettled(clients.map((c) => c.endAsync(true)))
    await gateway.close()
  })

  const device = (): Promise<MqttClient> => connect(gateway.externalUrl, { clientId: CLIENT_ID, clean: false, username: `${away.productId}/${away.deviceId}`, password: away.secret })

  /** The tool publishes until the KILL_AFTER-th PUBACK, in whose callback the gateway is killed; the topics PUBACKed before the kill. */
  async function publishUntilKilled(round: number): Promise<string[]> {
    const tool = await connect(gateway.internalUrl, { clientId: `local-tool-${randomBytes(3).toString('hex')}`, clean: true })
    clients.push(tool)
    const pid = gateway.pid!
    const acked: string[] = []
    let killed = false
    let sent = 0
    await new Promise<void>((resolve) => {
      const next = (): void => {
        if (killed) return
        const topic = `tags/lamp/night/cmd/dim/json/r${round}m${sent++}`
        tool.publish(topic, JSON.stringify({ round, topic, pad: 'x'.repeat(PAYLOAD) }), { qos: 1 }, (err) => {
          if (err || killed) return
          acked.push(topic)
          if (acked.length === KILL_AFTER) {
            killed = true
            process.kill(pid, 'SIGKILL')
            resolve()
            return
          }
          next()
        })
      }
      for (let i = 0; i < WINDOW; i++) next()
    })
    await tool.endAsync(true)
    return acked
  }

  it(`every message PUBACKed before the kill reaches the device when it comes back (${ROUNDS} rounds)`, async () => {
    const first = await device()
    clients.push(first)
    expect((await first.subscribeAsync(FILTER, { qos: 1 }))[0].qos).toBe(1)
    await first.endAsync()

    for (let round = 0; round < ROUNDS; round++) {
      // The device is away; the local tool's messages are queued for its session.
      const acked = await publishUntilKilled(round)
      await expect.poll(() => gateway.running, { timeout: 5_000 }).toBe(false)
      await gateway.start()

      const got = new Set<string>()
      const back = mqtt.connect(gateway.externalUrl, { protocolVersion: 4, reconnectPeriod: 0, clientId: CLIENT_ID, clean: false, username: `${away.productId}/${away.deviceId}`, password: away.secret })
      clients.push(back)
      back.on('message', (topic) => got.add(topic))
      let sessionPresent = false
      await new Promise<void>((resolve, reject) => {
        back.once('connect', (connack) => ((sessionPresent = connack.sessionPresent), resolve()))
        back.once('close', () => reject(new Error('device closed before CONNACK')))
      })
      expect(sessionPresent).toBe(true)
      const deadline = Date.now() + 15_000
      while (acked.some((t) => !got.has(t)) && Date.now() < deadline) await sleep(50)
      const missing = acked.filter((t) => !got.has(t))
      expect(missing, `round ${round}: PUBACKed to the tool, never delivered to the device after the kill -9`).toEqual([])
      await back.endAsync()
    }
  }, 120_000)
})
