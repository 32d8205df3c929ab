// The command line for a technician: --version, `status` of the running gateway, `devices show`,
// `devices set-secret` with the secret from stdin (never argv; --secret still works but warns),
// `devices set-tags`, tables on a terminal and JSON for scripts.
import { execFile } from 'node:child_process'
import { chownSync, copyFileSync, mkdirSync, readdirSync, readFileSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import YAML from 'yaml'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { connectDevice, refusedWith } from '../helpers/device.js'
import { GatewayProcess, gatewayBin, repoRoot, runCli } from '../helpers/gateway-process.js'
import { freePort } from '../helpers/ports.js'
import { SdkDevice } from '../helpers/sdk-device.js'

const execFileAsync = promisify(execFile)
const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const dev = { productId: 'thermo', deviceId: 't1', secret: 'first-secret' }
let tmp: string
const gateways: GatewayProcess[] = []

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'iothub-edge-cli-'))
})

afterEach(async () => {
  await Promise.allSettled(gateways.splice(0).map((g) => g.close()))
})

afterAll(async () => {
  if (tmp) await rm(tmp, { recursive: true, force: true })
})

function track(g: GatewayProcess): GatewayProcess {
  gateways.push(g)
  return g
}

/** Run the CLI on a pseudo-terminal (util-linux `script`), as a technician's shell would. */
async function onTerminal(args: string[]): Promise<string> {
  const cmd = [process.execPath, gatewayBin, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ')
  // -e: script exits with the command's code, which execFile reports as an error; the output counts.
  const { stdout } = await execFileAsync('script', ['-qec', cmd, '/dev/null'], { cwd: tmp }).catch((err: { stdout: string }) => err)
  return stdout.replace(/\r/g, '')
}

describe('cli', () => {
  it('--version prints the package version', async () => {
    const version = (JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { version: string }).version
    const r = await runCli(['--version'])
    expect(r.code).toBe(0)
    expect(r.stdout).toBe(`iothub-edge ${version}\n`)
  })

  it('a mistyped option, a missing value or an unknown command: one line that says which, and exit 64', async () => {
    const cases: [string[], string][] = [
      [['status', '--jsn'], 'unknown option --jsn'],
      [['start', '-c'], 'option --config needs a value'],
      [['frobnicate'], 'unknown command "frobnicate"'],
    ]
    for (const [args, said] of cases) {
      const r = await runCli(args)
      expect(r.code, args.join(' ')).toBe(64)
      // The reason first, then where to look: not the whole usage scrolling it away.
      expect(r.stderr.split('\n')).toEqual([said, '`iothub-edge --help` lists the commands and their options', ''])
    }
  })

  it('any other wrong command line: one line that says what is wrong, one that says where the usage is, exit 64, nothing done', async () => {
    const cases: [string[], string, string][] = [
      [['devices'], 'devices needs a subcommand: list, add, show, set-secret, set-tags, disable, enable, remove', 'devices'],
      [['devices', 'lsit'], 'devices: unknown subcommand "lsit" (there are: list, add, show, set-secret, set-tags, disable, enable, remove)', 'devices'],
      [['devices', 'add', 'thermo'], 'devices add needs PRODUCT and DEVICE (devices add thermo t-001)', 'devices'],
      [['devices', 'add', 'thermo', 't 1'], 'devices add: PRODUCT and DEVICE must be 1-64 of [A-Za-z0-9_-] (got "t 1")', 'devices'],
      // A config file given without -c would start the gateway on the built-in defaults.
      [['start', 'gateway.yaml'], 'start: unexpected argument "gateway.yaml": the config file goes after -c (iothub-edge start -c gateway.yaml)', 'start'],
      // An option of another command (history's --device) would be ignored: 10 devices, not 5.
      [['simulate', '--device', '5'], 'simulate does not take --device', 'simulate'],
      [['simulate', '--rate', 'fast'], 'simulate: --rate must be a non-negative number, not "fast"', 'simulate'],
      [['hub-sim', '--mqtt-port', '99999'], 'hub-sim: --mqtt-port must be a port number (0-65535), not "99999"', 'hub-sim'],
      [['hub-sim', '--username', 'hub'], 'hub-sim: --username and --password go together (without both, anyone may log in)', 'hub-sim'],
      [['status', '--tags', 'a'], 'status does not take --tags', 'status'],
      [['rules', 'test'], 'rules test needs --message MSG (a JSON file with the sample message or messages)', 'rules'],
      [['history', 'export', '--device', 'thermo'], 'history export needs --device PRODUCT/DEVICE, not "thermo"', 'history'],
      [['ota', 'push', 'abc'], 'ota push needs --devices p/d,p/d or --product P --tags TAG', 'ota'],
      [['ota', 'push', 'abc', '--devices', 'p/d', '--expires', 'tomorrow'], 'ota: --expires must be a non-negative number, not "tomorrow"', 'ota'],
      [['ota', 'upload', 'no-such-image.bin', '--image-version', '1', '--type', 'firmware'], 'ota upload: cannot read no-such-image.bin (ENOENT)', 'ota'],
      [['store', 'nack'], 'store: unknown subcommand "nack" (there is: ack)', 'store'],
      [['ui'], 'ui needs a subcommand: reset-password', 'ui'],
      [['lorawan', 'export'], 'lorawan: unknown subcommand "export" (there is: import)', 'lorawan'],
      [['lorawan', 'import', '--rate', '1'], 'lorawan import does not take --rate', 'lorawan'],
    ]
    for (const [args, said, cmd] of cases) {
      const r = await runCli(args, { cwd: tmp })
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(64)
      expect(r.stderr.split('\n'), args.join(' ')).toEqual([said, `\`iothub-edge ${cmd} --help\` shows its usage`, ''])
      expect(r.stdout, args.join(' ')).toBe('')
    }
  })

  it('devices and ota refuse an option their subcommand does not take, in one line, exit 64, and create nothing', async () => {
    const cwd = await mkdtemp(path.join(tmp, 'sub-options-'))
    const cases: [string[], string, string][] = [
      // --create on list would have made an empty gateway.db in ./data; --tags on list filtered nothing.
      [['devices', 'list', '--create'], 'devices list does not take --create', 'devices'],
      [['devices', 'list', '--tags', 'roof'], 'devices list does not take --tags', 'devices'],
      [['devices', 'show', 'thermo', 't1', '--secret', 'x'], 'devices show does not take --secret', 'devices'],
      [['devices', 'set-tags', 'thermo', 't1', '--tags', 'roof', '--create'], 'devices set-tags does not take --create', 'devices'],
      [['devices', 'set-secret', 'thermo', 't1', '--tags', 'roof'], 'devices set-secret does not take --tags', 'devices'],
      [['devices', 'disable', 'thermo', 't1', '--create'], 'devices disable does not take --create', 'devices'],
      [['devices', 'remove', 'thermo', 't1', '--tags', 'roof'], 'devices remove does not take --tags', 'devices'],
      [['ota', 'images', '--devices', 'thermo/t1'], 'ota images does not take --devices', 'ota'],
      [['ota', 'push', 'abc', '--devices', 'thermo/t1', '--image-version', '2'], 'ota push does not take --image-version', 'ota'],
    ]
    for (const [args, said, cmd] of cases) {
      const r = await runCli(args, { cwd })
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(64)
      expect(r.stderr.split('\n'), args.join(' ')).toEqual([said, `\`iothub-edge ${cmd} --help\` shows its usage`, ''])
      expect(r.stdout, args.join(' ')).toBe('')
    }
    expect(readdirSync(cwd)).toEqual([])
    // What each subcommand does take still passes the check (then finds no database here).
    const add = await runCli(['devices', 'add', 'thermo', 't1', '--tags', 'roof', '--json'], { cwd })
    expect(add.stderr).toContain('no gateway database in')
    expect(add.code).toBe(1)
  })

  it('COMMAND --help shows that command\'s usage alone (adapters\' tools too), exit 0', async () => {
    const devices = await runCli(['devices', '--help'])
    expect(devices.code).toBe(0)
    const lines = devices.stdout.trimEnd().split('\n')
    expect(lines[0]).toBe('usage:')
    expect(lines.filter((l) => l.startsWith('  iothub-edge ')).length).toBe(8)
    expect(lines.filter((l) => l.startsWith('  iothub-edge ') && !l.startsWith('  iothub-edge devices '))).toEqual([])
    const status = await runCli(['status', '-h'])
    expect(status.stdout).toMatch(/^usage:\n {2}iothub-edge status \[-c FILE\] \[--json\] .*\n {10,}\(exit 0 ok, 2 degraded, 3 not running\)\n$/)
    const lorawan = await runCli(['lorawan', '--help'])
    expect(lorawan.code).toBe(0)
    expect(lorawan.stdout).toMatch(/^usage:\n {2}iothub-edge lorawan import \[-c FILE\] .*\[--create\]\n/)
  })

  it('a command that fails on something outside it: one line with the reason, exit 1, no stack trace', async () => {
    // hub-sim on a port another process has.
    const server = net.createServer()
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const busy = (server.address() as net.AddressInfo).port
    try {
      const r = await runCli(['hub-sim', '--mqtt-port', String(busy), '--http-port', '0'], { cwd: tmp })
      expect(r.code, r.stderr).toBe(1)
      expect(r.stderr).toBe(`iothub-edge hub-sim: listen EADDRINUSE: address already in use 127.0.0.1:${busy}: another process has this port\n`)
    } finally {
      server.close()
    }
    // simulate registering its devices through an API nobody answers.
    const api = `http://127.0.0.1:${await freePort()}`
    const sim = await runCli(['simulate', '--devices', '1', '--duration', '1', '--api', api, '--token', 'x'], { cwd: tmp })
    expect(sim.code).toBe(1)
    expect(sim.stderr).toMatch(/^iothub-edge simulate: fetch failed \(connect ECONNREFUSED 127\.0\.0\.1:\d+\)\n$/)
    // simulate against a broker nobody runs: it says why no device connected.
    const url = `mqtt://127.0.0.1:${await freePort()}`
    const none = await runCli(['simulate', '--devices', '1', '--duration', '1', '--url', url], { cwd: tmp })
    expect(none.code).toBe(1)
    expect(none.stderr).toMatch(/^simulate: no device connected \(connect ECONNREFUSED 127\.0\.0\.1:\d+\); check --url, and that the devices sim\/sim-NNNNN are registered/m)
  })

  it('a checkout that was never built: the launcher says to run npm run build', async () => {
    const checkout = path.join(tmp, 'unbuilt')
    mkdirSync(path.join(checkout, 'bin'), { recursive: true })
    copyFileSync(gatewayBin, path.join(checkout, 'bin', 'iothub-edge.js'))
    await writeFile(path.join(checkout, 'package.json'), '{"type":"module"}')
    const r = await runCli(['--version'], { bin: path.join(checkout, 'bin', 'iothub-edge.js') })
    expect(r.code).toBe(1)
    expect(r.stderr).toBe(`iothub-edge: not built yet: run \`npm run build\` in ${checkout}${path.sep} (\`npm start\` builds by itself)\n`)
  })

  it('as root on a data folder that belongs to the gateway\'s user: refused, saying which user to run it as', async () => {
    const dataDir = path.join(tmp, 'service-owned')
    const file = path.join(tmp, 'service-owned.yaml')
    await writeFile(file, YAML.stringify({ gateway: { ...gw, dataDir } }))
    const add = await runCli(['devices', 'add', 'thermo', 's1', '--create', '-c', file])
    expect(add.code, add.stderr).toBe(0)
    // The service's user (nobody stands in for it); this test runs as root, as CI does.
    expect(process.getuid?.()).toBe(0)
    chownSync(dataDir, 65534, 65534)
    for (const args of [['devices', 'list'], ['ui', 'reset-password'], ['store', 'ack']]) {
      const r = await runCli([...args, '-c', file])
      expect(r.code, `${args.join(' ')}: ${r.stderr}`).toBe(1)
      expect(r.stderr, args.join(' ')).toMatch(new RegExp(`^${args.join(' ')}: ${dataDir} belongs to (nobody|'#65534') and this runs as root: .* run it as (nobody|'#65534'): sudo -u (nobody|'#65534') iothub-edge \\.\\.\\.\n$`))
    }
  })

  it('docs/operators/cli.md documents every command --help lists', async () => {
    const help = await runCli(['--help'])
    expect(help.code).toBe(0)
    const inHelp = [...new Set([...help.stdout.matchAll(/^ {2}iothub-edge ((?:devices )?[a-z][a-z-]*)/gm)].map((m) => m[1]))]
    const page = readFileSync(path.join(repoRoot, 'docs', 'operators', 'cli.md'), 'utf8')
    // The table's first cells: `devices show P D ...`; `devices disable P D`, `enable P D`, `remove P D` share a row.
    const inPage = [...page.matchAll(/^\| ([^|]+)\|/gm)].flatMap(([, cell]) => {
      const spans = [...cell.matchAll(/`([a-z-]+)(?: ([a-z-]+))?/g)].map((m) => (m[1] === 'devices' ? `devices ${m[2]}` : m[1]))
      return spans.map((c) => (spans[0].startsWith('devices ') && !c.startsWith('devices ') ? `devices ${c}` : c))
    })
    expect(inHelp.length).toBeGreaterThan(8)
    expect(inPage).toEqual(expect.arrayContaining(inHelp))
  })

  it('status: 3 when no gateway runs, 0 with the health summary when one runs ok, 2 when degraded', async () => {
    const g = track(new GatewayProcess({ gateway: gw, log: { level: 'warn' } }))
    await g.start()
    await g.kill9()
    const none = await runCli(['status', '-c', g.configFile])
    expect(none.code).toBe(3)
    expect(none.stderr).toContain(`no gateway is running on ${g.dataDir}`)
    // Without -c: the built-in ./data, and the hint that the gateway's config was not given.
    const bare = await runCli(['status'], { cwd: tmp })
    expect(bare.code).toBe(3)
    expect(bare.stderr).toBe(`no gateway is running on ${path.join(tmp, 'data')} (the built-in data folder: give the gateway's config with -c FILE)\n`)

    await g.start()
    const ok = await runCli(['status', '-c', g.configFile])
    expect(ok.code, ok.stderr).toBe(0)
    expect(JSON.parse(ok.stdout)).toMatchObject({ status: 'ok', pid: g.pid, northbound: { configured: false } })
    // IOTHUB_EDGE_CONFIG (set by the package's /usr/bin/iothub-edge) stands for -c.
    const fromEnv = await runCli(['status'], { cwd: tmp, env: { IOTHUB_EDGE_CONFIG: g.configFile } })
    expect(fromEnv.code, fromEnv.stderr).toBe(0)
    expect(JSON.parse(fromEnv.stdout)).toMatchObject({ pid: g.pid })
    const text = await onTerminal(['status', '-c', g.configFile])
    expect(text).toMatch(/^status\s+ok$/m)
    expect(text).toMatch(new RegExp(`^gateway\\s+pid ${g.pid}, http://127\\.0\\.0\\.1:${g.httpPort}$`, 'm'))
    expect(text).toMatch(/^hub\s+not configured/m)
    // The outbox's quota in units a person reads (by default a share of the data disk).
    expect(text).toMatch(/^outbox\s+\d+ message\(s\), \d+ bytes of a \d+\.\d (KiB|MiB|GiB|TiB) quota \(\d+\.\d %\)/m)

    const down = track(new GatewayProcess({ gateway: gw, log: { level: 'warn' }, northbound: { url: `mqtt://127.0.0.1:${await freePort()}`, degradedAfterSeconds: 1 } }))
    await down.start()
    await expect.poll(async () => (await runCli(['status', '-c', down.configFile])).code, { timeout: 15_000 }).toBe(2)
    const degraded = await onTerminal(['status', '-c', down.configFile])
    expect(degraded).toMatch(/^status\s+degraded \(.*northbound_down.*\)$/m)
    expect(degraded).toMatch(/^hub\s+DOWN since \d{4}-\d\d-\d\dT/m)
    // Why, and when it tries again (nothing listens on that port).
    expect(degraded).toMatch(/^hub\s+DOWN .*; last error: .*\(ECONNREFUSED\)/m)
    expect(degraded).toMatch(/^outbox\s+.*, draining 0\/s \(10 s\), 0\/s \(60 s\)$/m)
  })

  for (const running of [false, true]) {
    it(`devices show and set-secret (secret on stdin) ${running ? 'through the running gateway' : 'on the database'}`, async () => {
      const dataDir = path.join(tmp, `secret-${running}`)
      const file = path.join(tmp, `secret-${running}.yaml`)
      const g = track(new GatewayProcess({ gateway: gw, devices: [dev], log: { level: 'warn' } }, { dataDir }))
      await g.start()
      if (!running) expect(await g.stop()).toBe(0)
      await writeFile(file, YAML.stringify(YAML.parse(readFileSync(g.configFile, 'utf8'))))

      const set = await runCli(['devices', 'set-secret', 'thermo', 't1', '-c', file], { input: 'second-secret\n' })
      expect(set.code, set.stderr).toBe(0)
      expect(set.stderr).not.toContain('warning')
      expect(set.stdout).not.toContain('second-secret')

      const show = await runCli(['devices', 'show', 'thermo', 't1', '-c', file])
      expect(show.code, show.stderr).toBe(0)
      expect(JSON.parse(show.stdout)).toMatchObject({ device: { productId: 'thermo', deviceId: 't1', enabled: true, hasSecret: true }, online: running ? false : null })
      const table = await onTerminal(['devices', 'show', 'thermo', 't1', '-c', file])
      expect(table).toMatch(/^device\s+thermo\/t1$/m)
      expect(table).toMatch(/^online\s+(no|unknown)/m)

      const unknown = await runCli(['devices', 'show', 'thermo', 'nobody', '-c', file])
      expect(unknown.code).toBe(1)

      if (!running) await g.start()
      expect(await refusedWith(g.externalUrl, dev)).toBe(4)
      const client = await connectDevice(g.externalUrl, { ...dev, secret: 'second-secret' })
      await client.endAsync()
    })
  }

  it('--secret on the command line still works, with a warning; tables on a terminal, JSON with --json', async () => {
    const dataDir = path.join(tmp, 'argv-secret')
    const file = path.join(tmp, 'argv-secret.yaml')
    await writeFile(file, YAML.stringify({ gateway: { ...gw, dataDir } }))
    const add = await runCli(['devices', 'add', 'thermo', 't9', '--secret', 'argv-secret', '--create', '-c', file])
    expect(add.code, add.stderr).toBe(0)
    expect(add.stderr).toMatch(/^warning: --secret on the command line is visible in shell history/m)
    const setArgv = await runCli(['devices', 'set-secret', 'thermo', 't9', '--secret', 'argv-secret-2', '-c', file])
    expect(setArgv.code, setArgv.stderr).toBe(0)
    expect(setArgv.stderr).toContain('warning: --secret')

    const table = await onTerminal(['devices', 'list', '-c', file])
    expect(table.split('\n')[0]).toMatch(/^PRODUCT\s+DEVICE\s+ENABLED\s+SECRET\s+TAGS\s+UPDATED$/)
    expect(table).toMatch(/^thermo\s+t9\s+yes\s+set\s+-\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/m)
    const forced = await onTerminal(['devices', 'list', '--json', '-c', file])
    expect(JSON.parse(forced)).toMatchObject({ devices: [{ deviceId: 't9' }] })
  })

  it('devices set-tags: a connected device gets the new tags at once; one set on the database gets them when it asks; online and last seen in the list', async () => {
    const dataDir = path.join(tmp, 'tags')
    const file = path.join(tmp, 'tags.yaml')
    const other = { ...dev, deviceId: 't2', secret: 'other-secret' }
    const g = track(new GatewayProcess({ gateway: { ...gw, dataDir }, devices: [dev, other], log: { level: 'warn' } }, { dataDir }))
    await g.start()
    await writeFile(file, YAML.stringify(YAML.parse(readFileSync(g.configFile, 'utf8'))))

    // Through the running gateway: the connected device is sent $set_tags, as the hub would, and subscribes.
    const device = await SdkDevice.connect(g.externalUrl, dev)
    const set = await runCli(['devices', 'set-tags', 'thermo', 't1', '--tags', 'roof,zone-b', '-c', file])
    expect(set.code, set.stderr).toBe(0)
    expect(JSON.parse(set.stdout)).toMatchObject({ device: { tags: ['roof', 'zone-b'], tagsVersion: 1 } })
    expect(set.stderr).toContain('the hub owns tags')
    await device.until(() => device.tagsVersion === 1, 10_000, '$set_tags from the CLI applied')
    expect(device.tags).toEqual(['roof', 'zone-b'])

    // Last seen: its latest message (this one), not only its connect.
    const beforeUpload = Date.now()
    await device.upload('temperature', { c: 21 })
    const list = await runCli(['devices', 'list', '-c', file])
    const rows = (JSON.parse(list.stdout) as { devices: { deviceId: string; online: boolean; lastSeen: number | null }[] }).devices
    expect(rows.find((d) => d.deviceId === 't1')).toMatchObject({ online: true, lastSeen: expect.any(Number) })
    expect(rows.find((d) => d.deviceId === 't1')!.lastSeen).toBeGreaterThanOrEqual(beforeUpload)
    expect(rows.find((d) => d.deviceId === 't2')).toMatchObject({ online: false, lastSeen: null })
    const table = await onTerminal(['devices', 'list', '-c', file])
    expect(table.split('\n')[0]).toMatch(/^PRODUCT\s+DEVICE\s+ENABLED\s+SECRET\s+TAGS\s+ONLINE\s+LAST SEEN\s+UPDATED$/)
    expect(table).toMatch(/^thermo\s+t1\s+yes\s+set\s+roof,zone-b\s+yes\s+\d{4}-\d\d-\d\dT\S+\s+\d{4}-/m)
    expect(table).toMatch(/^thermo\s+t2\s+yes\s+set\s+-\s+no\s+-\s+\d{4}-/m)
    await device.close()

    // On the database while no gateway runs: the device asks with its old version and gets the new set.
    expect(await g.stop()).toBe(0)
    const offline = await runCli(['devices', 'set-tags', 'thermo', 't2', '--tags', 'cellar', '-c', file])
    expect(offline.code, offline.stderr).toBe(0)
    const bad = await runCli(['devices', 'set-tags', 'thermo', 't2', '--tags', 'a/b', '-c', file])
    expect(bad.code).toBe(64)
    expect(bad.stderr).toContain('tag "a/b" must be')
    expect((await runCli(['devices', 'set-tags', 'thermo', 't2', '-c', file])).code).toBe(64)
    await g.start()
    const second = await SdkDevice.connect(g.externalUrl, other)
    await second.until(() => second.tagsVersion === 1, 10_000, '$set_tags answered from the copy')
    expect(second.tags).toEqual(['cellar'])
    await second.close()

    const cleared = await runCli(['devices', 'set-tags', 'thermo', 't2', '--tags', '', '-c', file])
    expect(JSON.parse(cleared.stdout)).toMatchObject({ device: { tags: [], tagsVersion: 2 } })
  })
})
