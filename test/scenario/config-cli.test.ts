// The command line as an operator uses it: a bad config is refused before anything starts, with
// one line per problem naming the key; `devices ...` works on the data folder while no gateway
// runs; API changes to a device survive restarts whatever the config seed says; SIGTERM stops
// the gateway cleanly without losing what it acknowledged.
import net from 'node:net'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import YAML from 'yaml'
import type { MqttClient } from 'mqtt'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { connectDevice, newMessageId, publishQos1, type ConnectError, type DeviceLogin, refusedWith } from '../helpers/device.js'
import { GatewayProcess, runCli } from '../helpers/gateway-process.js'
import { HubBroker } from '../helpers/hub-broker.js'
import { freePort } from '../helpers/ports.js'

const EXIT_CONFIG = 78
const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }

let tmp: string
const gateways: GatewayProcess[] = []
const clients: MqttClient[] = []

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'iothub-edge-config-cli-'))
})

afterEach(async () => {
  await Promise.allSettled(clients.splice(0).map((c) => c.endAsync(true)))
  await Promise.allSettled(gateways.splice(0).map((g) => g.close()))
})

afterAll(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true })
})

function track(g: GatewayProcess): GatewayProcess {
  gateways.push(g)
  return g
}

async function connect(url: string, login: DeviceLogin): Promise<MqttClient> {
  const client = await connectDevice(url, login)
  clients.push(client)
  return client
}


/** Resolves true when something accepts a TCP connection on the port. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ port, host: '127.0.0.1' })
    s.once('connect', () => {
      s.destroy()
      resolve(true)
    })
    s.once('error', () => resolve(false))
  })
}

function problemLines(stderr: string): string[] {
  return stderr
    .split('\n')
    .filter((l) => l.trim() !== '')
    .filter((l) => !/^\d+ problem\(s\) in /.test(l))
}

describe('invalid configuration', () => {
  it('is refused by start and check-config with exit 78 and one line per problem naming its key; nothing listens', async () => {
    const [httpPort, extPort, intPort] = [await freePort(), await freePort(), await freePort()]
    const file = path.join(tmp, 'bad.yaml')
    await writeFile(
      file,
      YAML.stringify({
        gateway: { dataDir: path.join(tmp, 'bad-data'), colour: 'blue' },
        http: { host: '127.0.0.1', port: httpPort },
        broker: {
          listeners: [
            { host: '127.0.0.1', port: extPort, zone: 'external' },
            { host: '127.0.0.1', port: intPort, zone: 'internal' },
          ],
        },
        northbound: { url: 'http://hub.example.com', mode: 'cloud' },
        devices: [{ productId: 'thermo', deviceId: 'bad id' }],
        log: { level: 'loud' },
      }),
    )
    const expected = [
      /^gateway\.colour: unknown key/,
      /^northbound\.url: must be mqtt:\/\/ or mqtts:\/\/$/,
      /^northbound\.mode: must be one of .*"gateway".*"devices"/,
      /^devices\[0\]\.deviceId: /,
      /^log\.level: must be one of /,
    ]

    for (const args of [['start', '-c', file], ['check-config', file]]) {
      const r = await runCli(args, { cwd: tmp, timeoutMs: 15_000 })
      expect(r.code, `${args[0]}: ${r.stderr}`).toBe(EXIT_CONFIG)
      const lines = problemLines(r.stderr)
      expect(lines, `${args[0]} stderr:\n${r.stderr}`).toHaveLength(expected.length)
      for (const re of expected) expect(lines.filter((l) => re.test(l)), `${args[0]}: one line matching ${re}\n${r.stderr}`).toHaveLength(1)
      expect(r.stderr).toMatch(new RegExp(`${expected.length} problem\\(s\\) in `))
    }
    for (const port of [httpPort, extPort, intPort]) expect(await listening(port), `port ${port}`).toBe(false)
  })

  it('under systemd, starts every line of a refused start with priority <3>, so journalctl -p err shows it', async () => {
    const file = path.join(tmp, 'bad-journal.yaml')
    await writeFile(file, YAML.stringify({ gateway: { dataDir: path.join(tmp, 'bad-journal-data') }, log: { level: 'loud' } }))
    const r = await runCli(['start', '-c', file], { cwd: tmp, env: { JOURNAL_STREAM: '8:12345' }, timeoutMs: 15_000 })
    expect(r.code).toBe(EXIT_CONFIG)
    const lines = r.stderr.split('\n').filter((l) => l !== '')
    expect(lines.length).toBeGreaterThanOrEqual(2)
    for (const l of lines) expect(l).toMatch(/^<3>/)
    expect(lines.join('\n')).toMatch(/^<3>log\.level: must be one of /m)
    // At a terminal or in a script the same lines are plain.
    const plain = await runCli(['start', '-c', file], { cwd: tmp, env: { JOURNAL_STREAM: '' }, timeoutMs: 15_000 })
    expect(plain.stderr).not.toContain('<3>')
  })

  it('reports cross-key problems and unreadable files the same way', async () => {
    const crossKey = path.join(tmp, 'cross-key.yaml')
    await writeFile(
      crossKey,
      YAML.stringify({
        gateway: { dataDir: path.join(tmp, 'cross-data') },
        northbound: { url: 'mqtt://127.0.0.1:1', mode: 'devices' },
        broker: { listeners: [{ port: 21883 }, { port: 21883, zone: 'internal' }] },
        devices: [{ productId: 'thermo', deviceId: 'x' }],
      }),
    )
    const r = await runCli(['check-config', crossKey], { cwd: tmp })
    expect(r.code, r.stderr).toBe(EXIT_CONFIG)
    const lines = problemLines(r.stderr)
    expect(lines, r.stderr).toHaveLength(2)
    expect(lines.some((l) => /^devices\[0\]\.secret: required/.test(l)), r.stderr).toBe(true)
    expect(lines.some((l) => /^broker\.listeners\[1\]\.port: 21883 is used twice/.test(l)), r.stderr).toBe(true)

    const broken = path.join(tmp, 'broken.yaml')
    await writeFile(broken, 'gateway: [\n')
    const y = await runCli(['check-config', broken], { cwd: tmp })
    expect(y.code).toBe(EXIT_CONFIG)
    expect(problemLines(y.stderr)).toHaveLength(1)
    expect(y.stderr).toContain('not valid YAML')

    const missing = await runCli(['start', '-c', path.join(tmp, 'no-such-file.yaml')], { cwd: tmp })
    expect(missing.code).toBe(EXIT_CONFIG)
    expect(missing.stderr).toContain('cannot read')
  })

  it('accepts a valid file with check-config (exit 0)', async () => {
    const file = path.join(tmp, 'good.yaml')
    await writeFile(
      file,
      YAML.stringify({
        gateway: { dataDir: path.join(tmp, 'good-data'), ...gw },
        northbound: { url: 'mqtts://hub.example.com:8883', mode: 'devices' },
        broker: { aclDenyAction: 'disconnect' },
        devices: [{ productId: 'thermo', deviceId: 't1', secret: 's1', tags: ['floor3'] }],
        log: { level: 'warn' },
      }),
    )
    const r = await runCli(['check-config', file], { cwd: tmp })
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toContain('ok')
    expect(r.stderr).toBe('')
  })
})

describe('check-config beyond the schema', () => {
  it('refuses TLS files that do not exist or cannot be read, naming each key and path (start too, before anything listens)', async () => {
    const [httpPort, extPort] = [await freePort(), await freePort()]
    const notAFile = path.join(tmp, 'a-folder.pem')
    await mkdir(notAFile, { recursive: true })
    const file = path.join(tmp, 'tls-files.yaml')
    await writeFile(
      file,
      YAML.stringify({
        gateway: { dataDir: path.join(tmp, 'tls-files-data'), ...gw },
        http: { host: '127.0.0.1', port: httpPort },
        broker: { listeners: [{ host: '127.0.0.1', port: extPort, tls: { cert: path.join(tmp, 'missing-cert.pem'), key: notAFile } }] },
        northbound: { url: 'mqtts://hub.example.com:8883', tls: { ca: path.join(tmp, 'missing-ca.pem') } },
      }),
    )
    for (const args of [['check-config', file], ['start', '-c', file]]) {
      const r = await runCli(args, { cwd: tmp, timeoutMs: 15_000 })
      expect(r.code, `${args[0]}: ${r.stderr}`).toBe(EXIT_CONFIG)
      const lines = problemLines(r.stderr)
      expect(lines, r.stderr).toEqual(
        expect.arrayContaining([
          `broker.listeners[0].tls.cert: ${path.join(tmp, 'missing-cert.pem')} does not exist`,
          `broker.listeners[0].tls.key: ${notAFile} is not a file`,
          `northbound.tls.ca: ${path.join(tmp, 'missing-ca.pem')} does not exist`,
        ]),
      )
      expect(lines.filter((l) => !l.startsWith('warning:'))).toHaveLength(3)
    }
    for (const port of [httpPort, extPort]) expect(await listening(port), `port ${port}`).toBe(false)
  })

  it("resolves relative file paths against the config file's folder, wherever it is run from; a missing codec file is a warning", async () => {
    const site = path.join(tmp, 'site')
    await mkdir(path.join(site, 'certs'), { recursive: true })
    await writeFile(path.join(site, 'certs', 'hub-ca.pem'), 'not checked for content here\n')
    const file = path.join(site, 'gateway.yaml')
    const doc = {
      gateway: { dataDir: 'data', productId: 'gateways', deviceId: 'site-7', secret: 's' },
      northbound: { url: 'mqtts://hub.example.com:8883', tls: { ca: 'certs/hub-ca.pem' } },
    }
    await writeFile(file, YAML.stringify(doc))
    // From the parent folder and from the site folder itself: the same file is found.
    for (const cwd of [tmp, site]) {
      const r = await runCli(['check-config', path.relative(cwd, file) || 'gateway.yaml'], { cwd })
      expect(r.code, `${cwd}: ${r.stderr}`).toBe(0)
    }
    await writeFile(file, YAML.stringify({ ...doc, northbound: { ...doc.northbound, tls: { ca: 'certs/missing-ca.pem' } } }))
    const bad = await runCli(['check-config', file], { cwd: os.tmpdir() })
    expect(bad.code, bad.stderr).toBe(EXIT_CONFIG)
    expect(problemLines(bad.stderr)).toEqual([`northbound.tls.ca: ${path.join(site, 'certs', 'missing-ca.pem')} does not exist`])
    // Without its codec a LoRaWAN device's payloads go up raw (docs/operators/lorawan.md): a warning, not a refusal.
    await writeFile(file, YAML.stringify({ ...doc, lorawan: { devices: [{ devEui: '0011223344556677', productId: 'p', deviceId: 'd', codec: path.join(site, 'no-codec.js') }] } }))
    const codec = await runCli(['check-config', file], { cwd: os.tmpdir() })
    expect(codec.code, codec.stderr).toBe(0)
    expect(codec.stderr).toContain(`warning: lorawan.devices[0].codec: ${path.join(site, 'no-codec.js')} does not exist: its devices' payloads go up undecoded`)
  })

  it('warns (exit 0) about a hub URL with the default identity and no secret, and about credentials in any URL', async () => {
    const file = path.join(tmp, 'warnings.yaml')
    await writeFile(file, YAML.stringify({ gateway: { dataDir: path.join(tmp, 'warn-data') }, northbound: { url: 'mqtts://hub.example.com:8883' } }))
    const r = await runCli(['check-config', file], { cwd: tmp })
    expect(r.code, r.stderr).toBe(0)
    expect(r.stdout).toContain('ok (2 warning(s))')
    const warnings = r.stderr.split('\n').filter(Boolean)
    expect(warnings).toHaveLength(2)
    expect(warnings.some((w) => /^warning: gateway\.secret: not set .*the hub will refuse the gateway/.test(w)), r.stderr).toBe(true)
    expect(warnings.some((w) => /^warning: gateway\.deviceId: still the default gateways\/gw-01/.test(w)), r.stderr).toBe(true)

    const creds = path.join(tmp, 'url-creds.yaml')
    await writeFile(creds, YAML.stringify({ gateway: { dataDir: path.join(tmp, 'warn-data'), productId: 'gateways', deviceId: 'site-7' }, northbound: { url: 'mqtts://site-7:hunter2@hub.example.com:8883' } }))
    const c = await runCli(['check-config', creds], { cwd: tmp })
    expect(c.code, c.stderr).toBe(0)
    expect(c.stderr.split('\n').filter(Boolean)).toEqual([expect.stringMatching(/^warning: northbound\.url: holds credentials .*use northbound\.username and northbound\.password/)])
    expect(c.stderr).not.toContain('hunter2')

    // Any section's URL: ChirpStack's broker too.
    const lora = path.join(tmp, 'lora-creds.yaml')
    await writeFile(lora, YAML.stringify({ gateway: { dataDir: path.join(tmp, 'warn-data') }, lorawan: { chirpstack: { mqtt: { url: 'mqtt://cs:opensesame@127.0.0.1:1884' } } } }))
    const l = await runCli(['check-config', lora], { cwd: tmp })
    expect(l.code, l.stderr).toBe(0)
    expect(l.stderr.split('\n').filter(Boolean)).toEqual([
      expect.stringMatching(/^warning: lorawan\.chirpstack\.mqtt\.url: holds credentials .*use lorawan\.chirpstack\.mqtt\.username and lorawan\.chirpstack\.mqtt\.password/),
    ])
  })
})

describe('devices commands without a running gateway', () => {
  it('add, list, disable, enable and remove persist in the data folder, and the gateway honours them', async () => {
    const dataDir = path.join(tmp, 'offline-data')
    const file = path.join(tmp, 'offline.yaml')
    await writeFile(file, YAML.stringify({ gateway: { dataDir, ...gw } }))
    const cli = (...args: string[]): ReturnType<typeof runCli> => runCli(['devices', ...args, '-c', file], { cwd: tmp })
    const listed = async (): Promise<{ productId: string; deviceId: string; enabled: boolean; tags: string[] }[]> => {
      const r = await cli('list')
      expect(r.code, r.stderr).toBe(0)
      return (JSON.parse(r.stdout) as { devices: { productId: string; deviceId: string; enabled: boolean; tags: string[] }[] }).devices
    }

    // The data folder is new: the first add says so explicitly (--create).
    const withSecret = await cli('add', 'thermo', 'given', '--secret', 'given-secret', '--tags', 'floor3,north', '--create')
    expect(withSecret.code, withSecret.stderr).toBe(0)
    expect(JSON.parse(withSecret.stdout)).toMatchObject({ device: { productId: 'thermo', deviceId: 'given', enabled: true, tags: ['floor3', 'north'] } })

    const generated = await cli('add', 'thermo', 'generated')
    expect(generated.code, generated.stderr).toBe(0)
    const secret = (JSON.parse(generated.stdout) as { secret: string }).secret
    expect(secret).toMatch(/^\S{16,}$/)

    const again = await cli('add', 'thermo', 'given', '--secret', 'other')
    expect(again.code).not.toBe(0)
    expect(again.stderr).toContain('already exists')

    for (const id of ['off', 'gone']) expect((await cli('add', 'thermo', id, '--secret', `${id}-secret`)).code).toBe(0)
    expect((await cli('disable', 'thermo', 'off')).code).toBe(0)
    expect((await cli('disable', 'thermo', 'given')).code).toBe(0)
    expect((await cli('enable', 'thermo', 'given')).code).toBe(0)
    expect((await cli('remove', 'thermo', 'gone')).code).toBe(0)
    const removeAgain = await cli('remove', 'thermo', 'gone')
    expect(removeAgain.code).toBe(1)
    expect(removeAgain.stderr).toContain('no device thermo/gone')
    expect((await cli('disable', 'thermo', 'nobody')).code).toBe(1)

    const devices = await listed()
    expect(devices.map((d) => `${d.deviceId}:${d.enabled}`).sort()).toEqual(['generated:true', 'given:true', 'off:false'])
    // The generated secret is printed once, by add, and never again.
    const listing = (await cli('list')).stdout
    expect(listing).not.toContain(secret)
    expect(listing).not.toContain('given-secret')

    // The gateway, started on that data folder, knows exactly these devices.
    const gateway = track(new GatewayProcess({ gateway: gw }, { dataDir }))
    await gateway.start()
    await connect(gateway.externalUrl, { productId: 'thermo', deviceId: 'given', secret: 'given-secret' })
    await connect(gateway.externalUrl, { productId: 'thermo', deviceId: 'generated', secret })
    expect(await refusedWith(gateway.externalUrl, { productId: 'thermo', deviceId: 'off', secret: 'off-secret' })).toBe(5)
    expect(await refusedWith(gateway.externalUrl, { productId: 'thermo', deviceId: 'gone', secret: 'gone-secret' })).toBe(4)
  })
})

describe('seeded devices and the API', () => {
  it('a device disabled through the API stays disabled after restarts, even when its seed changes', async () => {
    const touched = { productId: 'thermo', deviceId: 'touched', secret: 'touched-secret' }
    const untouched = { productId: 'thermo', deviceId: 'untouched', secret: 'untouched-secret' }
    const gateway = track(new GatewayProcess({ gateway: gw, devices: [{ ...touched, enabled: true }, { ...untouched, enabled: true }] }))
    await gateway.start()
    await connect(gateway.externalUrl, touched)
    const off = await gateway.api('PATCH', `/api/devices/thermo/touched`, { enabled: false })
    expect(off.status).toBe(200)

    // Same config: the API change holds.
    await gateway.restart()
    expect((await gateway.api('GET', '/api/devices/thermo/touched')).body.device.enabled).toBe(false)
    expect(await refusedWith(gateway.externalUrl, touched)).toBe(5)

    // An edited seed (new tags for both, and `untouched` now disabled) applies only where the API
    // never changed the device: the seed does work, and still does not override the API.
    expect(await gateway.stop()).toBe(0)
    const doc = YAML.parse(await readFile(gateway.configFile, 'utf8')) as { devices: { deviceId: string; tags?: string[]; enabled?: boolean }[] }
    for (const d of doc.devices) d.tags = ['moved']
    doc.devices.find((d) => d.deviceId === 'untouched')!.enabled = false
    await writeFile(gateway.configFile, YAML.stringify(doc))
    await gateway.start()

    const t = (await gateway.api('GET', '/api/devices/thermo/touched')).body.device
    expect(t.enabled).toBe(false)
    const u = (await gateway.api('GET', '/api/devices/thermo/untouched')).body.device
    expect(u).toMatchObject({ enabled: false, tags: ['moved'] })
    expect(await refusedWith(gateway.externalUrl, touched)).toBe(5)
    expect(await refusedWith(gateway.externalUrl, untouched)).toBe(5)
  })

  it('a seeded device removed through the API is not created again by the same seed; an edited seed brings it back', async () => {
    const seeded = { productId: 'thermo', deviceId: 'seeded', secret: 'seeded-secret' }
    const gateway = track(new GatewayProcess({ gateway: gw, devices: [seeded] }))
    await gateway.start()
    await connect(gateway.externalUrl, seeded)
    expect((await gateway.api('DELETE', '/api/devices/thermo/seeded')).status).toBe(204)

    await gateway.restart()
    expect((await gateway.api('GET', '/api/devices/thermo/seeded')).status).toBe(404)
    expect(await refusedWith(gateway.externalUrl, seeded)).toBe(4)

    // The operator changes that device's seed (a new secret): the config speaks again.
    expect(await gateway.stop()).toBe(0)
    const doc = YAML.parse(await readFile(gateway.configFile, 'utf8')) as { devices: { deviceId: string; secret?: string }[] }
    doc.devices[0].secret = 'new-seeded-secret'
    await writeFile(gateway.configFile, YAML.stringify(doc))
    await gateway.start()
    expect((await gateway.api('GET', '/api/devices/thermo/seeded')).status).toBe(200)
    await connect(gateway.externalUrl, { ...seeded, secret: 'new-seeded-secret' })
  })
})

describe('SIGTERM', () => {
  let hub: HubBroker | undefined

  afterEach(async () => {
    await hub?.close()
    hub = undefined
  })

  it('exits 0 within 10 s, and what it acknowledged before reaches the hub after a restart', async () => {
    const dev = { productId: 'thermo', deviceId: 't1', secret: 'secret-t1' }
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [dev] } })
    // Started once for its port, then down: the gateway keeps everything in its outbox.
    await hub.start()
    await hub.stop()
    const gateway = track(new GatewayProcess({ gateway: gw, northbound: { url: hub.url }, devices: [dev] }))
    await gateway.start()
    const client = await connect(gateway.externalUrl, dev)
    const sent: { topic: string; payload: Buffer }[] = []
    for (let i = 0; i < 50; i++) {
      const m = { topic: `upload_data/${dev.productId}/${dev.deviceId}/temperature/${newMessageId()}`, payload: Buffer.from(JSON.stringify({ i })) }
      await publishQos1(client, m.topic, m.payload)
      sent.push(m)
    }
    const health = await gateway.health()
    expect(health.northbound.connected).toBe(false)
    expect(health.outbox.messages).toBeGreaterThanOrEqual(sent.length)

    const t0 = Date.now()
    const code = await gateway.stop(12_000)
    const tookMs = Date.now() - t0
    expect(code).toBe(0)
    expect(tookMs).toBeLessThan(10_000)
    expect(gateway.logs()).toContain('gateway stopped')

    await hub.start()
    const recorder = await hub.subscribeAll(`upload_data/${dev.productId}/#`)
    await gateway.start()
    for (const m of sent) {
      const got = await recorder.waitFor((r) => r.topic === m.topic, 15_000, m.topic)
      expect(got.payload.equals(m.payload)).toBe(true)
    }
    await gateway.waitForHealth((h) => h.outbox.messages === 0, 15_000, 'outbox drained')
  })

  it('exits 0 within 10 s with the hub connected and devices attached', async () => {
    const dev = { productId: 'thermo', deviceId: 't1', secret: 'secret-t1' }
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [dev] } })
    await hub.start()
    const recorder = await hub.subscribeAll(`upload_data/${dev.productId}/#`)
    const gateway = track(new GatewayProcess({ gateway: gw, northbound: { url: hub.url }, devices: [dev] }))
    await gateway.start()
    const client = await connect(gateway.externalUrl, dev)
    const topic = `upload_data/${dev.productId}/${dev.deviceId}/temperature/${newMessageId()}`
    await publishQos1(client, topic, 'x')
    await recorder.waitFor((m) => m.topic === topic, 10_000, topic)
    const closed = new Promise<void>((resolve) => client.once('close', () => resolve()))
    const t0 = Date.now()
    expect(await gateway.stop(12_000)).toBe(0)
    expect(Date.now() - t0).toBeLessThan(10_000)
    await closed
  })
})
