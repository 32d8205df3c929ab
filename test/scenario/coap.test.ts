// The CoAP endpoint end to end (issue 10, PROTOCOL.md "CoAP access"): libcoap's coap-client-notls
// (Debian libcoap3-bin) plays the device against the real Gateway in this process, Mosquitto with
// the hub's ACL plays the cloud hub. What libcoap cannot send on purpose (a retransmitted
// Message-ID, an unknown critical option, a ping, garbage, a flood, a RST to a notification) is
// sent raw from a UDP socket with coap-packet, the codec the endpoint itself uses.
import { execFile } from 'node:child_process'
import dgram from 'node:dgram'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { generate, parse, type ParsedPacket } from 'coap-packet'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseConfig } from '../../src/config.js'
import { Gateway } from '../../src/gateway.js'
import { HubBroker, type HubRecorder } from '../helpers/hub-broker.js'

const COAP_CLIENT = process.env.COAP_CLIENT_BIN ?? 'coap-client-notls'
const gwLogin = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const dev = { productId: 'nbiot', deviceId: 'node-1', secret: 'node-1-secret' }
const sleepy = { productId: 'nbiot', deviceId: 'node-2', secret: 'node-2-secret' }
const raw = { productId: 'nbiot', deviceId: 'node-3', secret: 'node-3-secret' }
const MID = (n: number): string => `65a1b2c3d4e5f6071831${String(n).padStart(4, '0')}`
type Dev = typeof dev

interface CoapRun {
  /** The last response code libcoap logged (`2.04`, `4.01`, ...; after a Block1 upload's 2.31s, the final one). */
  code: string | undefined
  /** stdout: the payloads it received. */
  out: string
  /** libcoap's debug log (-v 7): every datagram with its options. */
  log: string
}

/** coap-client-notls with its debug log on; the last argument is the URI. */
function coapClient(args: string[], timeoutMs = 30_000): Promise<CoapRun> {
  return new Promise((resolve, reject) => {
    execFile(COAP_CLIENT, ['-v', '7', '-B', '5', ...args], { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err && err.killed) return reject(new Error(`${COAP_CLIENT} ${args.join(' ')} timed out`))
      const log = `${stdout}\n${stderr}`
      const code = [...log.matchAll(/t:(?:ACK|NON|CON) c:([245]\.\d\d)/g)].at(-1)?.[1]
      resolve({ code, out: stdout, log })
    })
  })
}

/** A raw CoAP endpoint of the test's own, optionally on another loopback address (127.0.0.2). */
class RawPeer {
  private readonly socket = dgram.createSocket('udp4')
  readonly received: ParsedPacket[] = []
  private waiters = new Set<() => void>()

  constructor(private readonly port: number) {
    this.socket.on('message', (msg) => {
      try {
        this.received.push(parse(msg))
      } catch {
        return
      }
      for (const w of this.waiters) w()
    })
  }

  async bind(address = '127.0.0.1'): Promise<void> {
    await new Promise<void>((r) => this.socket.bind(0, address, () => r()))
  }

  send(datagram: Buffer): void {
    this.socket.send(datagram, this.port, '127.0.0.1')
  }

  async waitFor(match: (p: ParsedPacket) => boolean, timeoutMs = 5_000): Promise<ParsedPacket> {
    const until = Date.now() + timeoutMs
    for (;;) {
      const found = this.received.find(match)
      if (found) return found
      if (Date.now() > until) throw new Error(`raw peer: nothing matching within ${timeoutMs} ms; got ${this.received.map((p) => `${p.code}#${p.messageId}`).join(', ')}`)
      await new Promise<void>((r) => {
        const t = setTimeout(r, 50)
        this.waiters.add(() => {
          clearTimeout(t)
          r()
        })
      })
      this.waiters.clear()
    }
  }

  close(): void {
    this.socket.close()
  }
}

const query = (d: Dev, secret = d.secret): string => `c=${d.deviceId}-client&u=${d.productId}/${d.deviceId}&p=${secret}`
const uriOptions = (topic: string, d: Dev): { name: string; value: Buffer }[] => [
  ...['mqtt', ...topic.split('/')].map((l) => ({ name: 'Uri-Path', value: Buffer.from(l) })),
  ...query(d).split('&').map((q) => ({ name: 'Uri-Query', value: Buffer.from(q) })),
]

async function until<T>(check: () => T | undefined | false, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = check()
    if (v !== undefined && v !== false) return v
    if (Date.now() > deadline) throw new Error(`${what} (waited ${timeoutMs} ms)`)
    await sleep(25)
  }
}

describe('CoAP endpoint with libcoap as the device', () => {
  let hub: HubBroker
  let recorder: HubRecorder
  let dataDir: string
  let gw: Gateway
  let port: number
  let uri: (topic: string, d?: Dev, secret?: string) => string
  const coapAdapter = (): { owns: (d: object) => boolean; port: number } => gw.adapter<{ owns: (d: object) => boolean; port: number }>('coap')!

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gwLogin, children: [dev, sleepy, raw] } })
    await hub.start()
    recorder = await hub.subscribeAll('#', { clientId: 'hub-recorder-coap' })
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'coap-'))
    const cfg = parseConfig(
      {
        gateway: { ...gwLogin, dataDir },
        broker: { listeners: [{ host: '127.0.0.1', port: 0, zone: 'external' }] },
        http: { host: '127.0.0.1', port: 0, apiToken: 'coap-test-token-0123456789' },
        coap: { host: '0.0.0.0', port: 0, keepalive: 60, rateLimit: { perSourcePerSecond: 500 } },
        northbound: { url: hub.url, mode: 'gateway' },
        devices: [dev, sleepy, raw],
        log: { level: process.env.TEST_GATEWAY_LOG ?? 'silent' },
      },
      process.cwd(),
    )
    gw = new Gateway(cfg)
    await gw.start()
    await until(() => gw.bridge.status().connected, 15_000, 'the hub link did not come up')
    port = coapAdapter().port
    // `#` percent-encoded as PROTOCOL.md says; libcoap turns it into the Uri-Path option `#`.
    uri = (topic, d = dev, secret = d.secret) => `coap://127.0.0.1:${port}/mqtt/${topic.replace(/#/g, '%23')}?${query(d, secret)}`
  })

  afterAll(async () => {
    await gw?.stop()
    await recorder?.close()
    await hub?.close()
    if (dataDir) await rm(dataDir, { recursive: true, force: true })
  })

  it('publishes a CON PUT and a NON PUT as the device, answering 2.04 once durable', async () => {
    const con = await coapClient(['-m', 'put', '-e', '{"t":21.5}', uri(`upload_data/${dev.productId}/${dev.deviceId}/temperature/${MID(1)}`)])
    expect(con.code).toBe('2.04')
    const non = await coapClient(['-N', '-m', 'put', '-e', '{"fw":"1.0"}', uri(`update_status/${dev.productId}/${dev.deviceId}/${MID(2)}`)])
    expect(non.code).toBe('2.04')
    const m = await recorder.waitFor((x) => x.topic === `upload_data/${dev.productId}/${dev.deviceId}/temperature/${MID(1)}`, 10_000)
    expect(m.payload.toString()).toBe('{"t":21.5}')
    await recorder.waitFor((x) => x.topic === `update_status/${dev.productId}/${dev.deviceId}/${MID(2)}`, 10_000)
  })

  it('refuses a wrong password (4.01), another device\'s topic (4.03), a malformed topic (4.00) and GET without Observe (4.05)', async () => {
    expect((await coapClient(['-m', 'put', '-e', '1', uri(`upload_data/${dev.productId}/${dev.deviceId}/t/${MID(3)}`, dev, 'wrong')])).code).toBe('4.01')
    expect((await coapClient(['-m', 'put', '-e', '1', uri(`upload_data/${sleepy.productId}/${sleepy.deviceId}/t/${MID(4)}`)])).code).toBe('4.03')
    expect((await coapClient(['-m', 'put', '-e', '1', uri(`upload_data/${dev.productId}//t/${MID(5)}`)])).code).toBe('4.00')
    expect((await coapClient(['-m', 'put', '-e', '1', uri(`upload_data/${dev.productId}/${dev.deviceId}/t/not%20an%20id`)])).code).toBe('4.00')
    expect((await coapClient(['-m', 'get', uri(`cmd/${dev.productId}/${dev.deviceId}/+/+/+/#`)])).code).toBe('4.05')
    // Observing another device's commands is denied too.
    expect((await coapClient(['-m', 'get', '-s', '1', uri(`cmd/${sleepy.productId}/${sleepy.deviceId}/+/+/+/#`)])).code).toBe('4.03')
    await sleep(300)
    expect(recorder.topics().filter((t) => [3, 4, 5].some((n) => t.endsWith(MID(n))))).toEqual([])
  })

  it('sends a hub command to an observing device as a CON notification with the topic as Location-Path', async () => {
    const observing = coapClient(['-m', 'get', '-s', '4', uri(`cmd/${dev.productId}/${dev.deviceId}/+/+/+/#`)])
    await until(() => coapAdapter().owns(dev), 5_000, 'the observing device is not online')
    await hub.publishAsHub(`cmd/${dev.productId}/${dev.deviceId}/set_interval/plain/req-coap-1`, '{"s":30}')
    const run = await observing
    expect(run.out).toContain('{"s":30}')
    const notification = run.log.split('\n').find((l) => l.includes('t:CON c:2.05') && l.includes('{"s":30}'))
    expect(notification).toBeDefined()
    expect(notification).toContain('Location-Path:cmd, Location-Path:nbiot, Location-Path:node-1, Location-Path:set_interval, Location-Path:plain, Location-Path:req-coap-1')
    await until(() => gw.core.router.history(dev).find((c) => c.command.requestId === 'req-coap-1' && c.state === 'delivered'), 5_000, 'not recorded as delivered')
  })

  it('keeps commands for a sleepy device until it observes, and never delivers one that expired meanwhile', async () => {
    expect(coapAdapter().owns(sleepy)).toBe(false)
    const soon = Math.floor(Date.now() / 1000) + 2
    await hub.publishAsHub(`cmd/${sleepy.productId}/${sleepy.deviceId}/stale/plain/req-exp/${soon}`, 'STALE')
    await hub.publishAsHub(`cmd/${sleepy.productId}/${sleepy.deviceId}/wake/plain/req-live`, 'LIVE')
    await until(() => gw.core.router.history(sleepy).filter((c) => c.state === 'queued').length === 2, 10_000, 'commands not queued')
    // Asleep past the first one's ExpiresAt.
    await until(() => Date.now() / 1000 > soon + 1, 5_000, 'clock')
    const run = await coapClient(['-m', 'get', '-s', '3', uri(`cmd/${sleepy.productId}/${sleepy.deviceId}/+/+/+/#`, sleepy)])
    expect(run.out).toContain('LIVE')
    expect(run.out).not.toContain('STALE')
    await until(() => gw.core.router.history(sleepy).find((c) => c.command.requestId === 'req-live' && c.state === 'delivered'), 5_000, 'not delivered')
  })

  it('takes a 64 KiB block-wise PUT (Block1, libcoap changing the token per block) as one message', async () => {
    const body = Buffer.alloc(65536)
    for (let i = 0; i < body.length; i++) body[i] = 65 + ((i * 7) % 26)
    const file = path.join(dataDir, 'upload.bin')
    await writeFile(file, body)
    const run = await coapClient(['-b', '1024', '-m', 'put', '-f', file, uri(`upload_data/${dev.productId}/${dev.deviceId}/firmware_log/${MID(11)}`)])
    expect(run.log).toMatch(/c:2\.31 .*Block1:0\/M\//)
    expect(run.code).toBe('2.04')
    const m = await recorder.waitFor((x) => x.topic === `upload_data/${dev.productId}/${dev.deviceId}/firmware_log/${MID(11)}`, 10_000)
    expect(m.payload.equals(body)).toBe(true)
  })

  it('delivers a 64 KiB command as a block-wise notification (Block2) that libcoap puts together', async () => {
    const body = Buffer.alloc(65536)
    for (let i = 0; i < body.length; i++) body[i] = 97 + ((i * 11) % 26)
    const out = path.join(dataDir, 'command.bin')
    const observing = coapClient(['-b', '1024', '-m', 'get', '-s', '5', '-o', out, uri(`cmd/${dev.productId}/${dev.deviceId}/+/+/+/#`)])
    await until(() => coapAdapter().owns(dev), 5_000, 'the observing device is not online')
    await hub.publishAsHub(`cmd/${dev.productId}/${dev.deviceId}/ota_chunk/plain/req-big`, body)
    const run = await observing
    expect(run.log).toMatch(/Block2:0\/M\/1024/)
    expect((await readFile(out)).equals(body)).toBe(true)
    await until(() => gw.core.router.history(dev).find((c) => c.command.requestId === 'req-big' && c.state === 'delivered'), 5_000, 'not recorded as delivered')
  })

  it('publishes a retransmitted CON (same Message-ID) once, answering each copy', async () => {
    const peer = new RawPeer(port)
    await peer.bind()
    try {
      const topic = `upload_data/${raw.productId}/${raw.deviceId}/t/${MID(6)}`
      const datagram = generate({ code: 'PUT', confirmable: true, messageId: 4242, token: Buffer.from([1, 2]), options: uriOptions(topic, raw), payload: Buffer.from('once') })
      peer.send(datagram)
      await peer.waitFor((p) => p.messageId === 4242)
      peer.send(datagram)
      await until(() => peer.received.filter((p) => p.messageId === 4242).length === 2 || undefined, 5_000, 'the retransmission was not answered')
      expect(peer.received.filter((p) => p.messageId === 4242).map((p) => [p.code, p.ack])).toEqual([
        ['2.04', true],
        ['2.04', true],
      ])
      // A later message from the same device shows the hub has everything before it.
      const next = generate({ code: 'PUT', confirmable: true, messageId: 4243, token: Buffer.from([3]), options: uriOptions(`upload_data/${raw.productId}/${raw.deviceId}/t/${MID(7)}`, raw), payload: Buffer.from('next') })
      peer.send(next)
      await recorder.waitFor((x) => x.topic.endsWith(MID(7)), 10_000)
      expect(recorder.topics().filter((t) => t === topic)).toHaveLength(1)
    } finally {
      peer.close()
    }
  })

  it('answers an unknown critical option with 4.02, a ping with RST, and ignores garbage', async () => {
    const peer = new RawPeer(port)
    await peer.bind()
    try {
      const topic = `upload_data/${raw.productId}/${raw.deviceId}/t/${MID(8)}`
      peer.send(generate({ code: 'PUT', confirmable: true, messageId: 5001, token: Buffer.from([9]), options: [...uriOptions(topic, raw), { name: '65', value: Buffer.from('x') }], payload: Buffer.from('1') }))
      expect((await peer.waitFor((p) => p.messageId === 5001)).code).toBe('4.02')
      peer.send(generate({ code: '0.00', confirmable: true, messageId: 5002, token: Buffer.alloc(0), options: [], payload: Buffer.alloc(0) }))
      expect(await peer.waitFor((p) => p.messageId === 5002)).toMatchObject({ reset: true, code: '0.00' })
      for (const junk of [Buffer.from([0xff]), Buffer.from('GET / HTTP/1.1\r\n\r\n'), Buffer.from([0x40, 0x01]), Buffer.alloc(0)]) peer.send(junk)
      // Still serving.
      expect((await coapClient(['-m', 'put', '-e', '1', uri(`upload_data/${dev.productId}/${dev.deviceId}/t/${MID(9)}`)])).code).toBe('2.04')
      expect(recorder.topics().filter((t) => t === topic)).toEqual([])
    } finally {
      peer.close()
    }
  })

  it('keeps a queued command when the device resets its notification, and delivers it on the next observation', async () => {
    const peer = new RawPeer(port)
    await peer.bind()
    try {
      const filter = `cmd/${raw.productId}/${raw.deviceId}/+/+/+/#`
      peer.send(generate({ code: 'GET', confirmable: true, messageId: 6001, token: Buffer.from([7, 7]), options: [{ name: 'Observe', value: Buffer.alloc(0) }, ...uriOptions(filter, raw)] }))
      expect((await peer.waitFor((p) => p.messageId === 6001)).code).toBe('2.05')
      await hub.publishAsHub(`cmd/${raw.productId}/${raw.deviceId}/blink/plain/req-rst`, 'BLINK')
      const n = await peer.waitFor((p) => p.confirmable && p.payload.toString() === 'BLINK', 10_000)
      // RFC 7641 section 3.6: a RST to a notification ends the observation.
      peer.send(generate({ code: '0.00', reset: true, messageId: n.messageId, token: Buffer.alloc(0), options: [], payload: Buffer.alloc(0) }))
      await sleep(300)
      expect(gw.core.router.history(raw).find((c) => c.command.requestId === 'req-rst')?.state).toBe('queued')
      const run = await coapClient(['-m', 'get', '-s', '3', uri(filter, raw)])
      expect(run.out).toContain('BLINK')
      await until(() => gw.core.router.history(raw).find((c) => c.command.requestId === 'req-rst' && c.state === 'delivered'), 5_000, 'not delivered after the new observation')
    } finally {
      peer.close()
    }
  })

  it('ends an observation on deregistration (Observe 1): later commands wait for the next one', async () => {
    const peer = new RawPeer(port)
    await peer.bind()
    try {
      const filter = `cmd/${raw.productId}/${raw.deviceId}/+/+/+/#`
      const token = Buffer.from([8, 8])
      peer.send(generate({ code: 'GET', confirmable: true, messageId: 7001, token, options: [{ name: 'Observe', value: Buffer.alloc(0) }, ...uriOptions(filter, raw)] }))
      expect((await peer.waitFor((p) => p.messageId === 7001)).code).toBe('2.05')
      peer.send(generate({ code: 'GET', confirmable: true, messageId: 7002, token, options: [{ name: 'Observe', value: Buffer.from([1]) }, ...uriOptions(filter, raw)] }))
      expect((await peer.waitFor((p) => p.messageId === 7002)).code).toBe('2.05')
      await hub.publishAsHub(`cmd/${raw.productId}/${raw.deviceId}/blink/plain/req-dereg`, 'AFTER')
      await until(() => gw.core.router.history(raw).find((c) => c.command.requestId === 'req-dereg'), 10_000, 'command not accepted')
      await sleep(500)
      expect(peer.received.filter((p) => p.payload.toString() === 'AFTER')).toEqual([])
      expect(gw.core.router.history(raw).find((c) => c.command.requestId === 'req-dereg')?.state).toBe('queued')
      const run = await coapClient(['-m', 'get', '-s', '3', uri(filter, raw)])
      expect(run.out).toContain('AFTER')
    } finally {
      peer.close()
    }
  })

  it('keeps serving a well-behaved device while 10,000 datagrams flood in from 127.0.0.2', async () => {
    const flood = new RawPeer(port)
    await flood.bind('127.0.0.2')
    try {
      const ping = generate({ code: '0.00', confirmable: true, messageId: 1, token: Buffer.alloc(0), options: [], payload: Buffer.alloc(0) })
      const burst = async (): Promise<void> => {
        for (let i = 0; i < 10_000; i++) {
          flood.send(i % 2 ? ping : Buffer.from([0x50 + (i % 7), i & 0xff, 0xde, 0xad]))
          if (i % 500 === 0) await sleep(1)
        }
      }
      const dropped = async (reason: string): Promise<number> => {
        const metrics = await (await fetch(`http://127.0.0.1:${gw.web.port}/metrics`)).text()
        return Number(new RegExp(`iothub_edge_coap_dropped_total\\{reason="${reason}"\\} (\\d+)`).exec(metrics)?.[1] ?? 0)
      }
      const sending = burst()
      const served = await coapClient(['-m', 'put', '-e', '1', uri(`upload_data/${dev.productId}/${dev.deviceId}/t/${MID(10)}`)])
      await sending
      expect(served.code).toBe('2.04')
      await recorder.waitFor((x) => x.topic.endsWith(MID(10)), 10_000)
      // Garbage is counted as such; beyond coap.rateLimit.perSourcePerSecond (500 here) nothing is even
      // parsed. On a loaded machine the kernel drops much of a burst before the gateway reads it, so
      // fewer than 500 may reach it in one second: a few more bursts until the limit has engaged.
      expect(await dropped('malformed')).toBeGreaterThan(0)
      for (let round = 0; round < 5 && (await dropped('rate_limited')) === 0; round++) await burst()
      expect(await dropped('rate_limited')).toBeGreaterThan(0)
    } finally {
      flood.close()
    }
  })

  it('takes messages while the hub is down, answers $shadow from the copy meanwhile, and delivers every message once the hub is back', async () => {
    await hub.stop()
    await until(() => !gw.bridge.status().connected, 10_000, 'the gateway did not notice the hub going down')
    const ids = [20, 21, 22].map(MID)
    for (const id of ids) expect((await coapClient(['-m', 'put', '-e', id, uri(`upload_data/${dev.productId}/${dev.deviceId}/outage/${id}`)])).code).toBe('2.04')
    // While the hub is away the gateway answers $shadow from its copy, as a notification too.
    expect((await coapClient(['-m', 'put', uri(`get/${dev.productId}/${dev.deviceId}/$shadow/${MID(23)}`)])).code).toBe('2.04')
    const run = await coapClient(['-m', 'get', '-s', '3', uri(`cmd/${dev.productId}/${dev.deviceId}/+/+/+/#`)])
    expect(run.log).toMatch(/t:CON c:2\.05 .*Location-Path:\$update_shadow, Location-Path:plain/)
    await hub.start()
    for (const id of ids) await recorder.waitFor((x) => x.topic === `upload_data/${dev.productId}/${dev.deviceId}/outage/${id}`, 30_000)
  })

  // Last: the gateway's intake stays closed afterwards (as when it stops, or its disk is full).
  it('answers 5.03 while the gateway cannot store, and nothing reaches the hub', async () => {
    gw.core.closeIntake()
    const run = await coapClient(['-m', 'put', '-e', '1', uri(`upload_data/${dev.productId}/${dev.deviceId}/t/${MID(30)}`)])
    expect(run.code).toBe('5.03')
    await sleep(300)
    expect(recorder.topics().filter((t) => t.endsWith(MID(30)))).toEqual([])
  })
})
