// The OTA relay end to end (issue 11, PROTOCOL.md "OTA"): Mosquitto with the hub's ACL plays the
// hub and the hub simulator sends `$ota_upgrade` as a business system would; node's own HTTP server
// is the image server (one that honours Range, one that cuts the connection half-way, one that
// trickles so the gateway can be killed mid-download); the gateway runs as the CLI process; MQTT.js
// clients are the devices; curl and libcoap's coap-client-notls fetch the image from the gateway.
import { execFile } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { readdir, readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { CommandDevice, type ReceivedMessage } from '../helpers/command-device.js'
import { newMessageId } from '../helpers/device.js'
import { GatewayProcess, runCli } from '../helpers/gateway-process.js'
import { HUB_PASSWORD, HUB_USERNAME, HubBroker } from '../helpers/hub-broker.js'
import { ImageServer } from '../helpers/image-server.js'
import { freePort } from '../helpers/ports.js'
import { HubSim } from '../../src/tools/hub-sim.js'

const COAP_CLIENT = process.env.COAP_CLIENT_BIN ?? 'coap-client-notls'
const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const P = 'meter'
const child = (deviceId: string, tags: string[] = []): { productId: string; deviceId: string; secret: string; tags: string[] } => ({ productId: P, deviceId, secret: `secret-${deviceId}`, tags })
const a = child('a')
const b = child('b')
const crash = child('crash')
const bad = child('bad')
const big = child('big')
const beta1 = child('beta1', ['beta'])
const stable1 = child('stable1', ['stable'])
const away = child('away')
const coapDev = child('coap')
const brief = child('brief')
const tech = child('tech')
const roomy = child('roomy')
const children = [a, b, crash, bad, big, beta1, stable1, away, coapDev, brief, tech, roomy]
const CACHE_QUOTA = 3 * 1024 * 1024

function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<{ code: number; stdout: Buffer; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, encoding: 'buffer', maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr: stderr.toString() })
    })
  })
}

const curl = (args: string[]): ReturnType<typeof run> => run('curl', ['-sS', ...args])
const nowSeconds = (): number => Math.floor(Date.now() / 1000)
const otaCommands = (m: ReceivedMessage): boolean => m.topic.includes('/$ota_upgrade/')
const payloadOf = (m: ReceivedMessage): Record<string, unknown> => JSON.parse(m.payload.toString()) as Record<string, unknown>

describe('OTA relay through the gateway process', () => {
  let hub: HubBroker
  let sim: HubSim
  let gateway: GatewayProcess
  let images: ImageServer
  let coapPort: number
  const devices: CommandDevice[] = []

  async function connect(login: (typeof children)[number]): Promise<CommandDevice> {
    const d = await CommandDevice.connect(gateway.externalUrl, login)
    devices.push(d)
    const clientId = d.client.options.clientId!
    await sim.waitFor((u) => u.topic.startsWith(`upload_data/${P}/${login.deviceId}/$connection/`) && u.payload.includes(`"client_id":"${clientId}"`), 10_000, `$connection of ${clientId}`)
    return d
  }

  async function otaStatus(deviceId: string, progress: number): Promise<Record<string, unknown>> {
    const u = await sim.waitFor((x) => x.parsed.kind === 'update_ota_status' && x.parsed.deviceId === deviceId && JSON.parse(x.payload.toString()).progress === progress, 20_000, `update_ota_status ${progress} of ${deviceId}`)
    return JSON.parse(u.payload.toString()) as Record<string, unknown>
  }

  async function jobOf(job: string): Promise<{ devices: { device: string; state: string; bytesServed: number; progress: number | null }[] }> {
    const res = await gateway.api<{ jobs: { job: string; devices: { device: string; state: string; bytesServed: number; progress: number | null }[] }[] }>('GET', '/api/ota/jobs')
    expect(res.status).toBe(200)
    const j = res.body.jobs.find((x) => x.job === job)
    if (!j) throw new Error(`job ${job} not in GET /api/ota/jobs: ${JSON.stringify(res.body)}`)
    return j
  }

  async function waitForState(job: string, device: string, state: string, timeoutMs = 10_000): Promise<void> {
    const until = Date.now() + timeoutMs
    for (;;) {
      const j = await jobOf(job)
      if (j.devices.find((d) => d.device === device)?.state === state) return
      if (Date.now() > until) throw gateway.failure(`job ${job}: ${device} not ${state}: ${JSON.stringify(j)}`)
      await sleep(100)
    }
  }

  /** A command after every earlier one for the device: what the device has by then, it has. */
  async function marker(dev: CommandDevice): Promise<void> {
    const requestId = await sim.command(P, dev.deviceId, 'marker', '')
    await dev.waitFor((m) => m.topic.includes(`/marker/plain/${requestId}`), 10_000, 'marker command')
  }

  const cachedFiles = async (): Promise<string[]> => readdir(path.join(gateway.dataDir, 'ota', 'images')).catch(() => [])

  beforeAll(async () => {
    images = new ImageServer()
    await images.start()
    hub = new HubBroker({ devices: [], gateway: { ...gw, children } })
    await hub.start()
    sim = new HubSim({ url: hub.url, username: HUB_USERNAME, password: HUB_PASSWORD })
    await sim.start()
    coapPort = await freePort()
    gateway = new GatewayProcess({
      gateway: gw,
      northbound: { url: hub.url },
      devices: children,
      coap: { host: '127.0.0.1', port: coapPort, rateLimit: { perSourcePerSecond: 10_000 } },
      ota: { advertiseHost: '127.0.0.1', cacheMaxBytes: CACHE_QUOTA, download: { retryBaseSeconds: 0.2, idleTimeoutSeconds: 5 } },
      log: { level: 'info' },
    })
    await gateway.start()
    await sim.waitFor((u) => u.parsed.kind === 'update_status' && u.parsed.deviceId === gw.deviceId, 15_000, 'gateway status')
  })

  afterEach(async ({ task }) => {
    await Promise.allSettled(devices.splice(0).map((d) => d.close()))
    if (task.result?.state === 'fail') console.log(gateway.failure(`output after "${task.name}" failed`).message)
  })

  afterAll(async () => {
    await sim?.stop()
    await gateway?.close()
    await hub?.close()
    await images?.close()
  })

  it('fetches the image once (resuming a cut download), hands the device its own local URL, serves ranges, and lets the device speak for itself', async () => {
    const body = randomBytes(300_000)
    const img = images.add('fw-2.0.0.bin', body, 'cut')
    const devA = await connect(a)
    const devB = await connect(b)
    const job = await sim.command(P, a.deviceId, '$ota_upgrade', { url: img.url, version: '2.0.0', size: img.size, md5: img.md5, type: 'firmware' })
    const got = await devA.waitFor(otaCommands, 20_000, 'the $ota_upgrade')
    expect(got.topic).toBe(`cmd/${P}/${a.deviceId}/$ota_upgrade/plain/${job}`)
    const cmd = payloadOf(got)
    // Only url changes; the rest is the hub's.
    expect(cmd).toMatchObject({ version: '2.0.0', size: img.size, md5: img.md5, type: 'firmware' })
    expect(cmd.url).toMatch(new RegExp(`^http://127\\.0\\.0\\.1:${gateway.httpPort}/ota/[A-Za-z0-9_-]{32}$`))
    // The cut download was resumed from where it stopped, guarded by the server's ETag.
    const resumed = images.requests.filter((r) => r.name === 'fw-2.0.0.bin' && r.range)
    expect(resumed.length).toBeGreaterThan(0)
    expect(resumed[0].range).toMatch(/^bytes=[1-9]\d*-$/)
    expect(resumed[0].ifRange).toMatch(/^"[0-9a-f]{40}"$/)

    const url = String(cmd.url)
    const whole = await curl(['-f', url])
    expect(whole.code).toBe(0)
    expect(whole.stdout.equals(body)).toBe(true)
    const range = await curl(['-f', '--range', '1000-1999', url])
    expect(range.stdout.equals(body.subarray(1000, 2000))).toBe(true)
    // curl -C -: a device that has the first part resumes.
    const file = path.join(gateway.tmpDir, 'a-partial.bin')
    await writeFile(file, body.subarray(0, 123_456))
    expect((await curl(['-f', '-C', '-', '-o', file, url])).code).toBe(0)
    expect((await readFile(file)).equals(body)).toBe(true)
    const head = await curl(['-I', url])
    expect(head.stdout.toString()).toMatch(/^etag: "[0-9a-f]{16}"/im)
    expect(head.stdout.toString()).toMatch(/^accept-ranges: bytes/im)
    expect(head.stdout.toString()).toMatch(new RegExp(`^content-length: ${img.size}`, 'im'))
    expect((await curl(['-o', '/dev/null', '-w', '%{http_code}', '--range', `${img.size}-`, url])).stdout.toString()).toBe('416')

    // The same content from another URL: no second download, another local URL.
    const jobB = await sim.command(P, b.deviceId, '$ota_upgrade', { url: `${img.url}?mirror=2`, version: '2.0.0', size: img.size, md5: img.md5, type: 'firmware' })
    const gotB = payloadOf(await devB.waitFor(otaCommands, 20_000, "b's $ota_upgrade"))
    expect(gotB.url).not.toBe(url)
    expect((await curl(['-f', String(gotB.url)])).stdout.equals(body)).toBe(true)
    expect(images.fullRequests('fw-2.0.0.bin')).toBe(1)
    // One device cannot use another's job once its own ended, nor guess one.
    expect((await curl(['-o', '/dev/null', '-w', '%{http_code}', url.replace(/.{8}$/, 'AAAAAAAA')])).stdout.toString()).toBe('404')

    // The device's own progress passes through untouched.
    const mine = JSON.stringify({ type: 'firmware', version: '2.0.0', progress: 100, desc: 'downloaded' })
    await devA.publish(`update_ota_status/${P}/${a.deviceId}/${newMessageId()}`, mine)
    const up = await sim.waitFor((u) => u.parsed.kind === 'update_ota_status' && u.parsed.deviceId === a.deviceId, 10_000, "a's update_ota_status")
    expect(up.payload.toString()).toBe(mine)
    await devA.publish(`update_status/${P}/${a.deviceId}/${newMessageId()}`, JSON.stringify({ version: '2.0.0' }))
    await waitForState(job, `${P}/${a.deviceId}`, 'done')
    expect((await jobOf(job)).devices[0].bytesServed).toBeGreaterThanOrEqual(img.size)
    // Done: its URL is closed.
    expect((await curl(['-o', '/dev/null', '-w', '%{http_code}', url])).stdout.toString()).toBe('404')
    await waitForState(jobB, `${P}/${b.deviceId}`, 'downloading')
    // No gateway-made status for devices that got their chance.
    expect(sim.received((u) => u.parsed.kind === 'update_ota_status' && u.payload.includes('"desc":"gateway:'))).toEqual([])
  })

  it('resumes its own download where it stopped after a kill -9', async () => {
    const body = randomBytes(400_000)
    const img = images.add('fw-crash.bin', body, 'trickle')
    const job = await sim.command(P, crash.deviceId, '$ota_upgrade', { url: img.url, version: '3.0.0', size: img.size, md5: img.md5, type: 'firmware' })
    const served = images.images.get('fw-crash.bin')!
    for (let i = 0; served.trickled < 100_000; i++) {
      if (i > 400) throw gateway.failure('the gateway did not start downloading')
      await sleep(50)
    }
    await gateway.kill9()
    served.mode = 'whole'
    await gateway.start()
    const dev = await connect(crash)
    const got = await dev.waitFor(otaCommands, 20_000, 'the $ota_upgrade after the restart')
    expect(got.topic).toContain(job)
    const after = images.requests.filter((r) => r.name === 'fw-crash.bin').slice(1)
    expect(after[0].range).toMatch(/^bytes=\d+-$/)
    expect(Number(/\d+/.exec(after[0].range!)![0])).toBeGreaterThan(0)
    expect((await curl(['-f', String(payloadOf(got).url)])).stdout.equals(body)).toBe(true)
  })

  it('answers -2 upstream when the image does not match its md5, and serves nothing', async () => {
    const body = randomBytes(50_000)
    const img = images.add('fw-bad.bin', body)
    const dev = await connect(bad)
    await sim.command(P, bad.deviceId, '$ota_upgrade', { url: img.url, version: '9.9.9', size: img.size, md5: 'ffffffffffffffffffffffffffffffff', type: 'firmware' })
    const status = await otaStatus(bad.deviceId, -2)
    expect(status).toMatchObject({ type: 'firmware', version: '9.9.9' })
    expect(String(status.desc)).toMatch(/^gateway: md5 mismatch/)
    await marker(dev)
    expect(dev.messages.filter(otaCommands)).toEqual([])
    expect((await cachedFiles()).some((f) => f.startsWith('ffffffff'))).toBe(false)
  })

  it('answers -1 upstream when its own download fails, and the device never sees the command', async () => {
    const dev = await connect(bad)
    const url = `http://127.0.0.1:${images.port}/no-such-image.bin`
    await sim.command(P, bad.deviceId, '$ota_upgrade', { url, version: '9.9.8', size: 1000, md5: '0123456789abcdef0123456789abcdef', type: 'firmware' })
    const status = await otaStatus(bad.deviceId, -1)
    expect(status).toMatchObject({ type: 'firmware', version: '9.9.8' })
    expect(String(status.desc)).toMatch(/^gateway: download of .* failed after 1 attempt\(s\): server answered HTTP 404$/)
    await marker(dev)
    expect(dev.messages.filter(otaCommands)).toEqual([])
  })

  it('answers -4 when the image cache quota cannot hold the image', async () => {
    const body = randomBytes(CACHE_QUOTA + 1024)
    const img = images.add('fw-big.bin', body)
    const dev = await connect(big)
    await sim.command(P, big.deviceId, '$ota_upgrade', { url: img.url, version: '4.0.0', size: img.size, md5: img.md5, type: 'os' })
    const status = await otaStatus(big.deviceId, -4)
    expect(String(status.desc)).toMatch(/^gateway: image cache quota/)
    await marker(dev)
    expect(dev.messages.filter(otaCommands)).toEqual([])
    expect(images.requests.filter((r) => r.name === 'fw-big.bin')).toEqual([])
  })

  it('sends a tag OTA only to the children carrying the tag', async () => {
    const body = randomBytes(20_000)
    const img = images.add('fw-beta.bin', body)
    const inTag = await connect(beta1)
    const other = await connect(stable1)
    await inTag.client.subscribeAsync(`tags/${P}/beta/cmd/+/+/+/#`, { qos: 1 })
    await other.client.subscribeAsync(`tags/${P}/stable/cmd/+/+/+/#`, { qos: 1 })
    // The gateway holds the tag filter on the hub once its child subscribed (seen from Mosquitto's side).
    for (let i = 0; !(await hub.subscriptionsOf(`${gw.productId}/${gw.deviceId}/edge`)).has(`tags/${P}/beta/cmd/+/+/+/#`); i++) {
      if (i > 100) throw gateway.failure('the gateway did not subscribe the tag filter on the hub')
      await sleep(100)
    }
    const job = await sim.tagCommand(P, 'beta', '$ota_upgrade', { url: img.url, version: '5.0.0-beta', size: img.size, md5: img.md5, type: 'app' })
    const got = await inTag.waitFor(otaCommands, 20_000, 'the tag $ota_upgrade')
    expect(got.topic).toBe(`tags/${P}/beta/cmd/$ota_upgrade/plain/${job}`)
    expect((await curl(['-f', String(payloadOf(got).url)])).stdout.equals(body)).toBe(true)
    await marker(other)
    expect(other.messages.filter(otaCommands)).toEqual([])
    expect((await jobOf(job)).devices.map((d) => d.device)).toEqual([`${P}/${beta1.deviceId}`])
  })

  it('serves the image while the hub link is down; the device status reaches the hub afterwards', async () => {
    const body = randomBytes(100_000)
    const img = images.add('fw-away.bin', body)
    const dev = await connect(away)
    await sim.command(P, away.deviceId, '$ota_upgrade', { url: img.url, version: '6.0.0', size: img.size, md5: img.md5, type: 'firmware' })
    const url = String(payloadOf(await dev.waitFor(otaCommands, 20_000, 'the $ota_upgrade')).url)
    await hub.stop()
    try {
      expect((await curl(['-f', url])).stdout.equals(body)).toBe(true)
      await dev.publish(`update_ota_status/${P}/${away.deviceId}/${newMessageId()}`, JSON.stringify({ type: 'firmware', version: '6.0.0', progress: 100, desc: '' }))
    } finally {
      await hub.start()
    }
    await otaStatus(away.deviceId, 100)
  })

  it('serves CoAP devices block-wise (coap-client -b 256), two at once', async () => {
    const body = randomBytes(30_000)
    const img = images.add('fw-coap.bin', body)
    // The device speaks CoAP (its last session is CoAP), so its local URL is a CoAP one.
    const put = await run(COAP_CLIENT, ['-m', 'put', '-e', '{"version":"1.0.0"}', `coap://127.0.0.1:${coapPort}/mqtt/update_status/${P}/${coapDev.deviceId}/${newMessageId()}?c=c1&u=${P}/${coapDev.deviceId}&p=${coapDev.secret}`])
    expect(put.code).toBe(0)
    const job = await sim.command(P, coapDev.deviceId, '$ota_upgrade', { url: img.url, version: '7.0.0', size: img.size, md5: img.md5, type: 'firmware' })
    let url = ''
    for (let i = 0; !url; i++) {
      const res = await gateway.api<{ commands: { requestId: string; state: string; payload: string }[] }>('GET', `/api/devices/${P}/${coapDev.deviceId}/commands`)
      const c = res.body.commands.find((x) => x.requestId === job && x.state !== 'held')
      if (c) url = String((JSON.parse(c.payload) as { url: string }).url)
      else if (i > 200) throw gateway.failure('the CoAP device\'s command was not released')
      else await sleep(100)
    }
    expect(url).toMatch(new RegExp(`^coap://127\\.0\\.0\\.1:${coapPort}/ota/[A-Za-z0-9_-]{32}$`))
    const out1 = path.join(gateway.tmpDir, 'coap-1.bin')
    const out2 = path.join(gateway.tmpDir, 'coap-2.bin')
    const [r1, r2] = await Promise.all([run(COAP_CLIENT, ['-b', '256', '-B', '30', '-o', out1, url]), run(COAP_CLIENT, ['-b', '512', '-B', '30', '-o', out2, url])])
    expect(r1.code).toBe(0)
    expect(r2.code).toBe(0)
    expect((await readFile(out1)).equals(body)).toBe(true)
    expect((await readFile(out2)).equals(body)).toBe(true)
  })

  it('closes an expired job: its URL answers 404 and the image is released', async () => {
    const body = randomBytes(60_000)
    const img = images.add('fw-brief.bin', body)
    const dev = await connect(brief)
    const expiresAt = nowSeconds() + 4
    const job = await sim.command(P, brief.deviceId, '$ota_upgrade', { url: img.url, version: '8.0.0', size: img.size, md5: img.md5, type: 'firmware' }, { expiresAt })
    const url = String(payloadOf(await dev.waitFor(otaCommands, 10_000, 'the $ota_upgrade')).url)
    expect((await curl(['-f', url])).stdout.equals(body)).toBe(true)
    expect(await cachedFiles()).toContain(`${img.md5}-${img.size}.bin`)
    await sleep(Math.max(0, expiresAt * 1000 + 1_500 - Date.now()))
    expect((await curl(['-o', '/dev/null', '-w', '%{http_code}', url])).stdout.toString()).toBe('404')
    await waitForState(job, `${P}/${brief.deviceId}`, 'expired')
    expect(await cachedFiles()).not.toContain(`${img.md5}-${img.size}.bin`)
  })

  it('runs an offline campaign: a technician uploads an image and pushes it to a device', async () => {
    const body = randomBytes(40_000)
    const file = path.join(gateway.tmpDir, 'tech.bin')
    await writeFile(file, body)
    const md5 = createHash('md5').update(body).digest('hex')
    const upload = await curl([
      '-f',
      '-H',
      `authorization: Bearer ${gateway.apiToken}`,
      '-H',
      'content-type: application/octet-stream',
      '--data-binary',
      `@${file}`,
      `http://127.0.0.1:${gateway.httpPort}/api/ota/images?version=10.0.0&type=firmware`,
    ])
    expect(upload.code).toBe(0)
    expect(JSON.parse(upload.stdout.toString()).image).toMatchObject({ md5, size: body.length, version: '10.0.0', source: 'upload' })
    const dev = await connect(tech)
    const res = await gateway.api<{ job: string; devices: string[] }>('POST', '/api/ota/jobs', { image: md5, devices: [`${P}/${tech.deviceId}`] })
    expect(res.status).toBe(201)
    expect(res.body.devices).toEqual([`${P}/${tech.deviceId}`])
    const cmd = payloadOf(await dev.waitFor(otaCommands, 10_000, 'the local $ota_upgrade'))
    expect(cmd).toMatchObject({ version: '10.0.0', size: body.length, md5, type: 'firmware' })
    expect((await curl(['-f', String(cmd.url)])).stdout.equals(body)).toBe(true)
    await waitForState(res.body.job, `${P}/${tech.deviceId}`, 'downloading')
    expect(existsSync(path.join(gateway.dataDir, 'ota', 'images', `${md5}-${body.length}.bin`))).toBe(true)

    // The same from the CLI, as a technician on site would.
    const next = randomBytes(10_000)
    await writeFile(file, next)
    const nextMd5 = createHash('md5').update(next).digest('hex')
    const up = await runCli(['ota', 'upload', file, '--image-version', '10.0.1', '--type', 'firmware', '-c', gateway.configFile])
    expect(up.code, up.stderr).toBe(0)
    expect(JSON.parse(up.stdout).image).toMatchObject({ md5: nextMd5, version: '10.0.1' })
    const push = await runCli(['ota', 'push', nextMd5, '--devices', `${P}/${tech.deviceId}`, '--max-concurrent', '3', '-c', gateway.configFile])
    expect(push.code, push.stderr).toBe(0)
    const job = (JSON.parse(push.stdout) as { job: string }).job
    const second = await dev.waitFor((m) => otaCommands(m) && m.topic.endsWith(job), 10_000, 'the CLI $ota_upgrade')
    expect((await curl(['-f', String(payloadOf(second).url)])).stdout.equals(next)).toBe(true)
    const jobs = await runCli(['ota', 'jobs', '-c', gateway.configFile])
    expect((JSON.parse(jobs.stdout) as { jobs: { job: string; maxConcurrent: number }[] }).jobs.find((j) => j.job === job)?.maxConcurrent).toBe(3)
  })

  it('evicts the oldest image no job needs to make room under the quota, and counts it', async () => {
    const spare = randomBytes(1_600_000)
    const file = path.join(gateway.tmpDir, 'spare.bin')
    await writeFile(file, spare)
    const up = await runCli(['ota', 'upload', file, '--image-version', '0.9.0', '--type', 'firmware', '-c', gateway.configFile])
    expect(up.code, up.stderr).toBe(0)
    const spareKey = `${createHash('md5').update(spare).digest('hex')}-${spare.length}`
    const body = randomBytes(1_600_000)
    const img = images.add('fw-roomy.bin', body)
    const dev = await connect(roomy)
    await sim.command(P, roomy.deviceId, '$ota_upgrade', { url: img.url, version: '12.0.0', size: img.size, md5: img.md5, type: 'firmware' })
    const cmd = payloadOf(await dev.waitFor(otaCommands, 20_000, 'the $ota_upgrade'))
    expect((await curl(['-f', String(cmd.url)])).stdout.equals(body)).toBe(true)
    const cached = await gateway.api<{ images: { key: string }[] }>('GET', '/api/ota/images')
    expect(cached.body.images.map((i) => i.key)).not.toContain(spareKey)
    expect(await cachedFiles()).not.toContain(`${spareKey}.bin`)
    const metrics = (await gateway.api<string>('GET', '/metrics')).body
    expect(Number(/^iothub_edge_ota_evictions_total (\d+)/m.exec(metrics)?.[1])).toBeGreaterThanOrEqual(1)
  })
})
