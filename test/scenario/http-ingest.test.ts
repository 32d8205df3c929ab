// HTTP device ingest end to end (issue 10): curl plays the device against the real Gateway (its HTTP
// listener on a free port, SQLite in a temp dir), Mosquitto with the hub's ACL plays the cloud hub.
// What a device relies on: its own credentials and nobody else's, a key that makes a retry safe,
// commands from the hub and local $ntp answers through the long-poll, and nothing lost while the
// hub is away.
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseConfig } from '../../src/config.js'
import { Gateway } from '../../src/gateway.js'
import { HubBroker, type HubRecorder } from '../helpers/hub-broker.js'

const gwLogin = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const dev = { productId: 'terminal', deviceId: 'and-1', secret: 'and-1-secret' }
const other = { productId: 'terminal', deviceId: 'and-2', secret: 'and-2-secret' }
const MID = (n: number): string => `65a1b2c3d4e5f6071830${String(n).padStart(4, '0')}`

interface CurlResult {
  status: number
  headers: Record<string, string>
  body: string
}

/** One request with curl, as a device would make it; `-i` gives the status line and headers. */
function curl(args: string[], timeoutMs = 30_000): Promise<CurlResult> {
  return new Promise((resolve, reject) => {
    execFile('curl', ['-sS', '-i', '--max-time', String(timeoutMs / 1000), ...args], { timeout: timeoutMs + 5_000 }, (err, stdout) => {
      if (err) return reject(new Error(`curl ${args.join(' ')}: ${err.message}`))
      // A 100 Continue may come first; the last header block is the answer.
      const blocks = stdout.split('\r\n\r\n')
      let i = 0
      while (blocks[i + 1] !== undefined && /^HTTP\/[\d.]+ 100/.test(blocks[i])) i++
      const [statusLine, ...headerLines] = blocks[i].split('\r\n')
      const headers = Object.fromEntries(headerLines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]))
      resolve({ status: Number(statusLine.split(' ')[1]), headers, body: blocks.slice(i + 1).join('\r\n\r\n') })
    })
  })
}

async function until<T>(check: () => T | undefined | false, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = check()
    if (v !== undefined && v !== false) return v
    if (Date.now() > deadline) throw new Error(`${what} (waited ${timeoutMs} ms)`)
    await sleep(25)
  }
}

describe('HTTP device ingest with curl as the device', () => {
  let hub: HubBroker
  let recorder: HubRecorder
  let dataDir: string
  let gw: Gateway
  let base: string
  const as = (d: { productId: string; deviceId: string; secret: string }): string[] => ['-u', `${d.productId}/${d.deviceId}:${d.secret}`]

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gwLogin, children: [dev, other] } })
    await hub.start()
    recorder = await hub.subscribeAll('#', { clientId: 'hub-recorder-http-ingest' })
    dataDir = await mkdtemp(path.join(os.tmpdir(), 'http-ingest-'))
    const cfg = parseConfig(
      {
        gateway: { ...gwLogin, dataDir },
        broker: { listeners: [{ host: '127.0.0.1', port: 0, zone: 'external' }] },
        http: { host: '127.0.0.1', port: 0, apiToken: 'http-ingest-test-token' },
        httpDevices: { keepalive: 60, maxWaitSeconds: 30 },
        northbound: { url: hub.url, mode: 'gateway' },
        devices: [dev, other],
        log: { level: process.env.TEST_GATEWAY_LOG ?? 'silent' },
      },
      process.cwd(),
    )
    gw = new Gateway(cfg)
    await gw.start()
    await until(() => gw.bridge.status().connected, 15_000, 'the hub link did not come up')
    base = `http://127.0.0.1:${gw.web.port}/devices/${dev.productId}/${dev.deviceId}`
  })

  afterAll(async () => {
    await gw?.stop()
    await recorder?.close()
    await hub?.close()
    if (dataDir) await rm(dataDir, { recursive: true, force: true })
  })

  it('takes data with the device\'s own credentials: 201 once durable, the MessageId kept, the payload as sent', async () => {
    const res = await curl([...as(dev), '-H', 'content-type: application/json', '-H', `X-Message-Id: ${MID(1)}`, '--data-binary', '{"t":21.5}', `${base}/data/temperature`])
    expect(res.status).toBe(201)
    expect(JSON.parse(res.body)).toEqual({ messageId: MID(1) })
    const m = await recorder.waitFor((x) => x.topic === `upload_data/${dev.productId}/${dev.deviceId}/temperature/${MID(1)}`, 10_000)
    expect(m.payload.toString()).toBe('{"t":21.5}')
    // Without a key the gateway mints a MessageId.
    const status = await curl([...as(dev), '--data-binary', '{"fw":"1.2"}', `${base}/status`])
    expect(status.status).toBe(201)
    const minted = (JSON.parse(status.body) as { messageId: string }).messageId
    expect(minted).toMatch(/^[0-9a-f]{24}$/)
    await recorder.waitFor((x) => x.topic === `update_status/${dev.productId}/${dev.deviceId}/${minted}`, 10_000)
  })

  it('refuses a wrong password (401 with a Basic challenge), no credentials (401), and another device\'s URL (403)', async () => {
    const wrong = await curl(['-u', `${dev.productId}/${dev.deviceId}:nope`, '--data-binary', '1', `${base}/data/t`])
    expect(wrong.status).toBe(401)
    expect(wrong.headers['www-authenticate']).toMatch(/^Basic realm=/)
    expect((await curl(['--data-binary', '1', `${base}/data/t`])).status).toBe(401)
    // and-2 logs in correctly but posts as and-1: a device acts only as itself.
    const spoof = await curl([...as(other), '-H', `X-Message-Id: ${MID(2)}`, '--data-binary', '1', `${base}/data/t`])
    expect(spoof.status).toBe(403)
    // An internal name a device may not use (the gateway's own $connection).
    expect((await curl([...as(dev), '--data-binary', '{}', `${base}/data/$connection`])).status).toBe(403)
    // A key that cannot be a MessageId.
    const badKey = await curl([...as(dev), '-H', 'Idempotency-Key: has spaces', '--data-binary', '1', `${base}/data/t`])
    expect(badKey.status).toBe(400)
    expect(JSON.parse(badKey.body)).toMatchObject({ error: 'bad_request', message: expect.stringContaining('Idempotency-Key') })
    await sleep(300)
    expect(recorder.topics().filter((t) => t.includes(MID(2)))).toEqual([])
  })

  it('stores a message once when the device repeats it with the same Idempotency-Key', async () => {
    const key = MID(3)
    const first = await curl([...as(dev), '-H', `Idempotency-Key: ${key}`, '--data-binary', '{"n":1}', `${base}/data/counter`])
    const again = await curl([...as(dev), '-H', `Idempotency-Key: ${key}`, '--data-binary', '{"n":1}', `${base}/data/counter`])
    expect(first.status).toBe(201)
    expect(again.status).toBe(200)
    expect(JSON.parse(again.body)).toEqual({ messageId: key, duplicate: true })
    const topic = `upload_data/${dev.productId}/${dev.deviceId}/counter/${key}`
    await recorder.waitFor((x) => x.topic === topic, 10_000)
    // A later message proves the hub got everything before it: the repeat is not among it.
    expect((await curl([...as(dev), '-H', `Idempotency-Key: ${MID(4)}`, '--data-binary', '{}', `${base}/data/counter`])).status).toBe(201)
    await recorder.waitFor((x) => x.topic.endsWith(MID(4)), 10_000)
    expect(recorder.topics().filter((t) => t === topic)).toHaveLength(1)
  })

  it('hands a hub command to a pending long-poll; the command counts as delivered', async () => {
    const poll = curl([...as(dev), `${base}/commands?wait=20`])
    await until(() => gw.adapter<{ owns: (d: object) => boolean }>('http-devices')?.owns(dev), 5_000, 'the polling device is not online')
    await hub.publishAsHub(`cmd/${dev.productId}/${dev.deviceId}/set_interval/plain/req-http-1`, '{"s":30}')
    const res = await poll
    expect(res.status).toBe(200)
    const cmds = JSON.parse(res.body) as { topic: string; name: string; requestId: string; encoding: string; expiresAt: number | null; payload: string }[]
    expect(cmds).toHaveLength(1)
    expect(cmds[0]).toMatchObject({ topic: `cmd/${dev.productId}/${dev.deviceId}/set_interval/plain/req-http-1`, name: 'set_interval', encoding: 'plain', requestId: 'req-http-1', expiresAt: null })
    expect(Buffer.from(cmds[0].payload, 'base64').toString()).toBe('{"s":30}')
    await until(() => gw.core.router.history(dev).find((c) => c.command.requestId === 'req-http-1' && c.state === 'delivered'), 5_000, 'not recorded as delivered')
    // The device replies; the reply reaches the hub with the RequestId it answers.
    const reply = await curl([...as(dev), '-H', `X-Message-Id: ${MID(5)}`, '--data-binary', '{"ok":true}', `${base}/cmd_resp/set_interval/req-http-1`])
    expect(reply.status).toBe(201)
    await recorder.waitFor((x) => x.topic === `cmd_resp/${dev.productId}/${dev.deviceId}/set_interval/req-http-1/${MID(5)}`, 10_000)
  })

  it('keeps a command for a device that is not polling and hands it over on its next poll', async () => {
    await hub.publishAsHub(`cmd/${dev.productId}/${dev.deviceId}/reboot/plain/req-http-2`, '{}')
    const res = await curl([...as(dev), `${base}/commands?wait=20`])
    expect(res.status).toBe(200)
    expect((JSON.parse(res.body) as { requestId: string }[]).map((c) => c.requestId)).toEqual(['req-http-2'])
    // Nothing waiting: 204 after the wait.
    expect((await curl([...as(dev), `${base}/commands?wait=1`])).status).toBe(204)
  })

  it('does not hand over a command whose ExpiresAt passed while it waited for a poll; the next one still comes', async () => {
    // The device counts as online (it polled a moment ago) but is not polling now.
    expect((await curl([...as(dev), `${base}/commands?wait=0`])).status).toBe(204)
    const expiresAt = Math.floor(Date.now() / 1000) + 2
    await hub.publishAsHub(`cmd/${dev.productId}/${dev.deviceId}/open_valve/plain/req-http-exp/${expiresAt}`, '{}')
    await hub.publishAsHub(`cmd/${dev.productId}/${dev.deviceId}/close_valve/plain/req-http-after`, '{}')
    await new Promise((r) => setTimeout(r, (expiresAt + 1) * 1000 - Date.now()))
    const res = await curl([...as(dev), `${base}/commands?wait=10`])
    expect(res.status).toBe(200)
    expect((JSON.parse(res.body) as { requestId: string }[]).map((c) => c.requestId)).toEqual(['req-http-after'])
  })

  it('answers $ntp locally, through the long-poll', async () => {
    const sentAt = Date.now()
    const get = await curl([...as(dev), '--data-binary', JSON.stringify({ device_time: sentAt }), `${base}/get/$ntp`])
    expect(get.status).toBe(201)
    const res = await curl([...as(dev), `${base}/commands?wait=10`])
    expect(res.status).toBe(200)
    const [answer] = JSON.parse(res.body) as { name: string; topic: string; payload: string }[]
    expect(answer.name).toBe('$set_ntp')
    expect(answer.topic).toMatch(new RegExp(`^cmd/${dev.productId}/${dev.deviceId}/\\$set_ntp/plain/`))
    const body = JSON.parse(Buffer.from(answer.payload, 'base64').toString()) as Record<string, number>
    expect(body.device_time).toBe(sentAt)
    expect(body.iothub_send).toBeGreaterThanOrEqual(body.iothub_recv)
  })

  it('ends a disabled device\'s long-poll and refuses it from then on (403)', async () => {
    const poll = curl([...as(other), `http://127.0.0.1:${gw.web.port}/devices/${other.productId}/${other.deviceId}/commands?wait=25`])
    await until(() => gw.adapter<{ owns: (d: object) => boolean }>('http-devices')?.owns(other), 5_000, 'the polling device is not online')
    gw.store.registry.setEnabled(other, false)
    expect((await poll).status).toBe(204)
    expect(gw.adapter<{ owns: (d: object) => boolean }>('http-devices')?.owns(other)).toBe(false)
    const refused = await curl([...as(other), '--data-binary', '1', `http://127.0.0.1:${gw.web.port}/devices/${other.productId}/${other.deviceId}/data/t`])
    expect(refused.status).toBe(403)
    gw.store.registry.setEnabled(other, true)
  })

  it('takes messages while the hub is down, answers $shadow from the copy meanwhile, and delivers every message once the hub is back', async () => {
    await hub.stop()
    await until(() => !gw.bridge.status().connected, 10_000, 'the gateway did not notice the hub going down')
    const ids = [10, 11, 12, 13, 14].map(MID)
    for (const id of ids) {
      const res = await curl([...as(dev), '-H', `Idempotency-Key: ${id}`, '--data-binary', `{"id":"${id}"}`, `${base}/data/outage`])
      expect(res.status).toBe(201)
    }
    // While the hub is away the gateway answers $shadow from its copy, through the long-poll too.
    expect((await curl([...as(dev), '-X', 'POST', `${base}/get/$shadow`])).status).toBe(201)
    const poll = await curl([...as(dev), `${base}/commands?wait=10`])
    expect(poll.status).toBe(200)
    const [shadow] = JSON.parse(poll.body) as { name: string; payload: string }[]
    expect(shadow.name).toBe('$update_shadow')
    expect(JSON.parse(Buffer.from(shadow.payload, 'base64').toString())).toHaveProperty('version')
    await hub.start()
    for (const id of ids) await recorder.waitFor((x) => x.topic === `upload_data/${dev.productId}/${dev.deviceId}/outage/${id}`, 30_000)
  })

  // Last: the gateway's intake stays closed afterwards (as when it stops, or its disk is full).
  it('answers 503 with Retry-After while the gateway cannot store (intake closed)', async () => {
    gw.core.closeIntake()
    const res = await curl([...as(dev), '-H', `Idempotency-Key: ${MID(20)}`, '--data-binary', '{}', `${base}/data/t`])
    expect(res.status).toBe(503)
    expect(Number(res.headers['retry-after'])).toBeGreaterThan(0)
    expect(JSON.parse(res.body)).toMatchObject({ error: 'unavailable' })
  })
})
