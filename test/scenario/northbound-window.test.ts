// The hub link's window: how much it sends before the hub has acknowledged. A hub that is slow to
// answer (a congested cloud broker, a thin uplink) must never get more than `northbound.inflight`
// messages, nor more than 4 MiB of them, ahead of its PUBACKs; and once it answers, everything
// arrives. The hub here is a plain MQTT 3.1.1 server (mqtt-packet over TCP) that holds back its
// PUBACKs until the test lets them go, which no real broker can be told to do.
import net from 'node:net'
import mqttPacket from 'mqtt-packet'
import { afterEach, describe, expect, it } from 'vitest'
import { connectDevice, newMessageId, publishQos1 } from '../helpers/device.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { freePort } from '../helpers/ports.js'

const gwLogin = { productId: 'gateways', deviceId: 'gw-window', secret: 'gw-secret' }
const dev = { productId: 'cam', deviceId: 'c-1', secret: 'c-secret' }

/** A hub that answers CONNECT and SUBSCRIBE at once and PUBACKs only when released. */
class SlowHub {
  readonly received: { topic: string; id: number; bytes: number }[] = []
  private readonly sockets = new Set<net.Socket>()
  private held: { socket: net.Socket; id: number; bytes: number }[] = []
  private releasing = false
  private server?: net.Server
  port = 0

  async start(): Promise<void> {
    this.port = await freePort()
    this.server = net.createServer((socket) => {
      this.sockets.add(socket)
      socket.on('close', () => this.sockets.delete(socket))
      socket.on('error', () => {})
      const parser = mqttPacket.parser({ protocolVersion: 4 })
      const send = (p: mqttPacket.Packet): boolean => socket.write(mqttPacket.generate(p))
      parser.on('packet', (p) => {
        if (p.cmd === 'connect') send({ cmd: 'connack', returnCode: 0, sessionPresent: false })
        else if (p.cmd === 'subscribe') send({ cmd: 'suback', messageId: p.messageId, granted: p.subscriptions.map(() => 1) })
        else if (p.cmd === 'pingreq') send({ cmd: 'pingresp' })
        else if (p.cmd === 'publish') {
          this.received.push({ topic: p.topic, id: p.messageId ?? 0, bytes: p.topic.length + (p.payload as Buffer).length })
          // The gateway's clock probe is published beside the window (it is not in the outbox): answered at once.
          if (p.qos === 1) {
            if (this.releasing || p.topic.includes('/$ntp/')) send({ cmd: 'puback', messageId: p.messageId })
            else this.held.push({ socket, id: p.messageId!, bytes: p.topic.length + (p.payload as Buffer).length })
          }
        }
      })
      socket.on('data', (d) => parser.parse(d))
    })
    await new Promise<void>((resolve) => this.server!.listen(this.port, '127.0.0.1', resolve))
  }

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`
  }

  /** From now on every PUBLISH is acknowledged, those held first. */
  release(): void {
    this.releasing = true
    for (const h of this.held.splice(0)) h.socket.write(mqttPacket.generate({ cmd: 'puback', messageId: h.id }))
  }

  /** The PUBLISHes not acknowledged yet (the gateway's own status messages from its outbox count too). */
  get waiting(): { count: number; bytes: number; largest: number } {
    return { count: this.held.length, bytes: this.held.reduce((a, h) => a + h.bytes, 0), largest: Math.max(0, ...this.held.map((h) => h.bytes)) }
  }

  count(prefix: string): number {
    return this.received.filter((r) => r.topic.startsWith(prefix)).length
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy()
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()))
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms))

describe('the hub link window', () => {
  const cleanup: (() => Promise<void>)[] = []
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c()
  })

  async function setup(northbound: Record<string, unknown>): Promise<{ hub: SlowHub; publish: (topic: string, payload: Buffer) => Promise<void> }> {
    const hub = new SlowHub()
    await hub.start()
    cleanup.push(() => hub.close())
    const gateway = new GatewayProcess({ gateway: gwLogin, northbound: { url: hub.url, ...northbound }, devices: [dev], log: { level: 'warn' } })
    await gateway.start()
    cleanup.push(() => gateway.close())
    await gateway.waitForHealth((h) => h.northbound.connected, 30_000, 'link up')
    const d = await connectDevice(gateway.externalUrl, dev)
    cleanup.push(() => d.endAsync(true))
    return { hub, publish: (topic, payload) => publishQos1(d, topic, payload) }
  }

  it('sends at most northbound.inflight messages ahead of the hub, and the rest once it acknowledges', async () => {
    const { hub, publish } = await setup({ inflight: 5 })
    const prefix = `upload_data/${dev.productId}/${dev.deviceId}/t/`
    const n = 40
    // Each is acknowledged to the device once durable at the edge; none has been acknowledged by the hub.
    for (let i = 0; i < n; i++) await publish(prefix + newMessageId(), Buffer.from(String(i)))
    await expect.poll(() => hub.waiting.count, { timeout: 20_000, interval: 100 }).toBe(5)
    await sleep(1_500) // time enough for more to arrive, were the window not kept
    expect(hub.waiting.count).toBe(5)
    expect(hub.count(prefix)).toBeLessThanOrEqual(5)

    hub.release()
    await expect.poll(() => new Set(hub.received.filter((r) => r.topic.startsWith(prefix)).map((r) => r.topic)).size, { timeout: 30_000, interval: 200 }).toBe(n)
  })

  it('sends what waited behind a full window once each, in order within each priority, however far behind the link fell', async () => {
    const { hub, publish } = await setup({ inflight: 5 })
    // Replies first, then status, then telemetry (DESIGN.md's classes). 3,000 rows
    // while the window stays full: more than the link's read-ahead (512) and than what it keeps of
    // the commits in memory (2,048), so its read-ahead, the committed rows it kept and the reads back
    // from the outbox all take turns.
    const base = `${dev.productId}/${dev.deviceId}`
    const topicOf = (i: number): string =>
      i % 4 === 0 ? `cmd_resp/${base}/reboot/r${i}/${newMessageId()}` : i % 4 === 1 ? `update_status/${base}/${newMessageId()}` : `upload_data/${base}/t/${newMessageId()}`
    const n = 3000
    const sent: string[] = []
    for (let i = 0; i < n; i += 100) {
      const batch = Array.from({ length: 100 }, (_, k) => topicOf(i + k))
      sent.push(...batch)
      await Promise.all(batch.map((t, k) => publish(t, Buffer.from(String(i + k)))))
    }
    await expect.poll(() => hub.waiting.count, { timeout: 20_000, interval: 100 }).toBe(5)
    hub.release()
    const mine = (): string[] => hub.received.map((r) => r.topic).filter((t) => t.includes(`/${base}/`) && !t.includes('/$'))
    await expect.poll(() => new Set(mine()).size, { timeout: 60_000, interval: 200 }).toBe(n)
    await sleep(500)
    const got = mine()
    expect(got.length).toBe(n) // none twice
    for (const cls of [(t: string) => t.startsWith('cmd_resp/'), (t: string) => t.startsWith('update_status/'), (t: string) => t.includes('/t/')]) {
      expect(got.filter(cls)).toEqual(sent.filter(cls))
    }
  }, 120_000)

  it('keeps at most 4 MiB of large messages in flight, however many the window allows', async () => {
    const { hub, publish } = await setup({}) // the default window: 1,000 messages
    const prefix = `upload_data/${dev.productId}/${dev.deviceId}/image/`
    const n = 40
    const payload = Buffer.alloc(200 * 1024, 7) // 40 x 200 KiB = 8 MiB, twice the cap
    for (let i = 0; i < n; i++) await publish(prefix + newMessageId(), payload)
    // The link stops once 4 MiB are out: what waits for the hub is 4 MiB and at most one message more.
    await expect.poll(() => hub.waiting.bytes, { timeout: 20_000, interval: 100 }).toBeGreaterThanOrEqual(4 * 1024 * 1024)
    await sleep(1_500) // time enough for more to arrive, were the cap not kept
    const w = hub.waiting
    expect(w.bytes - w.largest).toBeLessThan(4 * 1024 * 1024)
    expect(hub.count(prefix)).toBeLessThan(n)

    hub.release()
    await expect.poll(() => new Set(hub.received.filter((r) => r.topic.startsWith(prefix)).map((r) => r.topic)).size, { timeout: 30_000, interval: 200 }).toBe(n)
  })
})
