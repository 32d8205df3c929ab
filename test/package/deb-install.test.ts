// The amd64 package installed as an operator installs it: `dpkg -i`, then the command on the PATH,
// the service's user and files, the installed gateway run as that user, a bad config edit, an
// upgrade, removal and purge. CI runs as root in a container without systemd as PID 1, so the
// service is run here as systemd would run it (its user, its ExecStart) and the unit is checked
// with systemd-analyze; the package is purged and its user and data folder removed afterwards.
import { execFile, spawn } from 'node:child_process'
import { existsSync, lstatSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { promisify } from 'node:util'
import YAML from 'yaml'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { BUILD_TIMEOUT_MS, buildDeb, debField, elfMachine } from '../helpers/deb-package.js'
import { trackChild, waitForExit } from '../helpers/child-processes.js'
import { freePort } from '../helpers/ports.js'

const execFileAsync = promisify(execFile)

const CONF = '/etc/iothub-edge/gateway.yaml'
const DATA = '/var/lib/iothub-edge'
const APP = '/opt/iothub-edge'
const UNIT = '/usr/lib/systemd/system/iothub-edge.service'
const WANTS = '/etc/systemd/system/multi-user.target.wants/iothub-edge.service'
const AS_SERVICE_USER = ['--reuid=iothub-edge', '--regid=iothub-edge', '--init-groups', '--']

interface Run {
  code: number | null
  stdout: string
  stderr: string
}

async function run(cmd: string, args: string[]): Promise<Run> {
  try {
    const { stdout, stderr } = await execFileAsync(cmd, args, { timeout: 120_000 })
    return { code: 0, stdout, stderr }
  } catch (err) {
    const e = err as Error & { code?: number | string; stdout?: string; stderr?: string }
    if (typeof e.code !== 'number') throw err
    return { code: e.code, stdout: e.stdout ?? '', stderr: e.stderr ?? '' }
  }
}

async function installedStatus(): Promise<string> {
  return (await run('dpkg-query', ['-W', '-f=${Status}', 'iothub-edge'])).stdout
}

/**
 * The installed gateway started with `args` (as systemd would: `setpriv ... iothub-edge start`), once
 * its /api/health answers 200 on `httpPort`; stop() sends SIGTERM and resolves with the exit code.
 */
async function serve(cmd: string, args: string[], httpPort: number): Promise<{ pid: number; output: () => string; stop: () => Promise<number | null> }> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  trackChild(child)
  let out = ''
  child.stdout.on('data', (d: Buffer) => (out += d.toString()))
  child.stderr.on('data', (d: Buffer) => (out += d.toString()))
  const stop = async (): Promise<number | null> => {
    child.kill('SIGTERM')
    return (await waitForExit(child, 20_000)).code
  }
  try {
    await expect
      .poll(async () => (await fetch(`http://127.0.0.1:${httpPort}/api/health`).then((r) => r.status, () => 0)), { timeout: 60_000, interval: 250 })
      .toBe(200)
  } catch (err) {
    await stop()
    throw new Error(`${cmd} ${args.join(' ')} did not come up: ${(err as Error).message}\n${out}`)
  }
  return { pid: child.pid!, output: () => out, stop }
}

/** Edit the installed config as an operator would (keeping its owner and mode). */
function editConfig(edit: (doc: Record<string, any>) => void): void {
  const doc = YAML.parse(readFileSync(CONF, 'utf8')) as Record<string, any>
  edit(doc)
  writeFileSync(CONF, YAML.stringify(doc))
}

describe('the amd64 Debian package, installed with dpkg -i', () => {
  let deb: string
  let installedHere = false

  beforeAll(async () => {
    if (process.getuid?.() !== 0) throw new Error('this test installs a package with dpkg: run it as root (as CI does)')
    // Never disturb a real installation on the machine running the tests.
    const before = await installedStatus()
    if (before !== '') {
      throw new Error(`iothub-edge is already known to dpkg here (${before}); this test installs and purges it. A leftover of an interrupted run: dpkg --purge iothub-edge && userdel iothub-edge && rm -rf ${DATA}`)
    }
    deb = await buildDeb('amd64')
  }, BUILD_TIMEOUT_MS)

  afterAll(async () => {
    if (!installedHere) return
    await run('dpkg', ['--purge', 'iothub-edge'])
    await run('rm', ['-rf', DATA, '/etc/iothub-edge'])
    await run('userdel', ['iothub-edge'])
    await run('groupdel', ['iothub-edge'])
  })

  it('installs with dpkg -i: an amd64 package whose Node.js and native modules are x86-64 builds, declaring the libc they need', async () => {
    expect(await debField(deb, 'Architecture')).toBe('amd64')
    expect(await debField(deb, 'Package')).toBe('iothub-edge')
    installedHere = true
    const res = await run('dpkg', ['-i', deb])
    expect(res.code, res.stderr).toBe(0)
    expect(await installedStatus()).toBe('install ok installed')
    // What to do next: where the web UI's setup code is, what to edit.
    expect(res.stdout).toContain(`sudo cat ${DATA}/ui-setup-code`)
    expect(res.stdout).toContain(`sudoedit ${CONF}`)
    expect(elfMachine(`${APP}/node/bin/node`)).toBe('x86-64')
    expect(elfMachine(`${APP}/node_modules/better-sqlite3/build/Release/better_sqlite3.node`)).toBe('x86-64')
    // It declares the C library its binaries really need (SQLite is built on this Debian).
    const { stdout } = await run('readelf', ['-V', '--wide', `${APP}/node/bin/node`, `${APP}/node_modules/better-sqlite3/build/Release/better_sqlite3.node`])
    const needed = [...stdout.matchAll(/GLIBC_(\d+)\.(\d+)/g)].map((m) => [Number(m[1]), Number(m[2])]).sort((a, b) => a[0] - b[0] || a[1] - b[1]).pop()
    expect(await debField(deb, 'Depends')).toContain(`libc6 (>= ${needed?.join('.')})`)
  })

  it('ships of its dependencies only what a running gateway reads: no tests, examples, docs, source maps or TypeScript; licenses, native modules and wasm stay; every module of the gateway loads', async () => {
    const nm = `${APP}/node_modules`
    const list = async (type: 'f' | 'd'): Promise<string[]> => (await run('find', [nm, '-type', type])).stdout.trim().split('\n')
    const [files, dirs] = [await list('f'), await list('d')]
    // What scripts/package-deb.sh prunes (prune_node_modules): none of it may come back.
    expect(dirs.filter((d) => /\/(test|tests|__tests__|benchmarks?|bench|examples?|docs|fixtures|coverage|\.github|@types)$/.test(d))).toEqual([])
    const license = /\/(licen[cs]e|notice|copying)[^/]*$/i
    expect(files.filter((f) => /\.(map|tsx?|mts|cts|tsbuildinfo|md|markdown|h|hpp|c|cc|cpp|gypi?|yml|log)$/.test(f) && !license.test(f))).toEqual([])
    for (const bundle of ['mqtt/dist', 'yaml/browser', 'protobufjs/dist']) expect(existsSync(`${nm}/${bundle}`), bundle).toBe(false)
    // What stays: the native modules' builds, QuickJS's wasm, the licenses.
    expect(files).toContain(`${nm}/better-sqlite3/build/Release/better_sqlite3.node`)
    expect(files.filter((f) => f.includes('/@serialport/bindings-cpp/prebuilds/linux-x64/') && f.endsWith('.node'))).not.toEqual([])
    expect(files.filter((f) => f.includes('/@jitl/quickjs-wasmfile-release-sync/') && f.endsWith('.wasm'))).not.toEqual([])
    for (const dep of ['fastify', 'aedes', 'better-sqlite3', 'mqtt']) expect(files.filter((f) => f.startsWith(`${nm}/${dep}/`) && license.test(f)), dep).not.toEqual([])
    const kb = Number((await run('du', ['-sk', nm])).stdout.split('\t')[0])
    console.log(`installed node_modules: ${(kb / 1024).toFixed(1)} MB, ${files.length} files`)
    // Every module of the gateway (a worker thread's only in its thread) loads with the package's
    // Node.js from the pruned tree: a deep import into a pruned folder would fail here.
    const importAll = `
      import { readdirSync } from 'node:fs'
      const failed = []
      for (const f of readdirSync('dist', { recursive: true })) {
        if (!f.endsWith('.js') || f.startsWith('ui/') || f.endsWith('-worker.js')) continue
        await import('./dist/' + f).catch((e) => failed.push(f + ': ' + e.message))
      }
      console.log(JSON.stringify(failed))
      process.exit(0)`
    const { stdout } = await execFileAsync(`${APP}/node/bin/node`, ['--input-type=module', '-e', importAll], { cwd: APP, timeout: 120_000 })
    expect(JSON.parse(stdout.trim().split('\n').pop()!)).toEqual([])
  })

  it('puts iothub-edge on the PATH, creates its system user, and installs the example config 0640 root:iothub-edge', async () => {
    const which = await run('sh', ['-c', 'command -v iothub-edge'])
    expect(which.stdout.trim()).toBe('/usr/bin/iothub-edge')
    const version = await run('iothub-edge', ['--version'])
    expect(version.stdout.trim()).toBe(`iothub-edge ${await debField(deb, 'Version')}`)

    const user = (await run('getent', ['passwd', 'iothub-edge'])).stdout.trim().split(':')
    expect(Number(user[2])).toBeLessThan(1000) // a system user
    expect(user[5]).toBe(DATA)
    expect(user[6]).toBe('/usr/sbin/nologin')
    const gid = Number((await run('getent', ['group', 'iothub-edge'])).stdout.split(':')[2])
    // The serial ports' group, for the serial adapter.
    expect((await run('id', ['-nG', 'iothub-edge'])).stdout.split(/\s+/)).toContain('dialout')

    const conf = statSync(CONF)
    expect(conf.mode & 0o777).toBe(0o640)
    expect([conf.uid, conf.gid]).toEqual([0, gid])
    expect(YAML.parse(readFileSync(CONF, 'utf8')).gateway.dataDir).toBe(DATA)
    const data = statSync(DATA)
    expect(data.mode & 0o777).toBe(0o700)
    expect([data.uid, data.gid]).toEqual([Number(user[2]), gid])

    const check = await run('iothub-edge', ['check-config', CONF])
    expect(check.code, check.stderr).toBe(0)
    expect(check.stdout).toContain(`${CONF}: ok`)
  })

  it('ships a unit that systemd-analyze accepts, starting /usr/bin/iothub-edge with no ExecStartPre and no restart on exit 78', async () => {
    const verify = await run('systemd-analyze', ['verify', UNIT])
    expect(verify.code, verify.stderr).toBe(0)
    // Now that the package's files exist, systemd-analyze has nothing to complain about.
    expect(verify.stderr.split('\n').filter((l) => l.includes('iothub-edge'))).toEqual([])
    const directives = readFileSync(UNIT, 'utf8').split('\n')
    expect(directives).toContain(`ExecStart=/usr/bin/iothub-edge start -c ${CONF}`)
    expect(directives).toContain('RestartPreventExitStatus=78')
    expect(directives.filter((l) => l.startsWith('ExecStartPre='))).toEqual([])
    expect(directives).toContain('User=iothub-edge')
    // Enabled on the first install (systemctl works on the unit files without a running systemd).
    expect((await run('systemctl', ['is-enabled', 'iothub-edge.service'])).stdout.trim()).toBe('enabled')
  })

  it('runs as its service user with the installed config and data folder; a bad config edit is one failure, exit 78, with the problem on stderr', async () => {
    const [mqtt, internal, http] = [await freePort(), await freePort(), await freePort()]
    editConfig((doc) => {
      doc.broker.listeners[0].port = mqtt
      doc.broker.listeners[1].port = internal
      doc.http = { ...doc.http, host: '127.0.0.1', port: http }
    })
    // As systemd runs it: its user, its ExecStart (setpriv execs it: the signal reaches the gateway).
    const child = await serve('setpriv', [...AS_SERVICE_USER, 'iothub-edge', 'start', '-c', CONF], http)
    let code: number | null
    try {
      const token = statSync(`${DATA}/api-token`)
      expect(token.mode & 0o777).toBe(0o600)
      expect(token.uid).toBe(statSync(DATA).uid)
      expect(existsSync(`${DATA}/gateway.db`)).toBe(true)
      // setpriv and the /usr/bin/iothub-edge wrapper exec: the service's process is the gateway,
      // with the memory settings of docs/performance.md ("Memory") the wrapper sets.
      const environ = readFileSync(`/proc/${child.pid}/environ`, 'utf8').split('\0')
      expect(environ).toEqual(expect.arrayContaining(['MALLOC_MMAP_THRESHOLD_=131072', 'MALLOC_ARENA_MAX=2']))
      expect(readFileSync(`/proc/${child.pid}/cmdline`, 'utf8').split('\0')).toContain('--max-semi-space-size=2')
      // The web UI ships built in the package, served by the installed gateway (docs/operators/ui.md).
      const page = await fetch(`http://127.0.0.1:${http}/`)
      expect(page.status).toBe(200)
      const script = /<script type="module" src="(\/assets\/[\w-]+\.js)">/.exec(await page.text())?.[1]
      expect(script).toBeDefined()
      const asset = await fetch(`http://127.0.0.1:${http}${script}`, { headers: { 'accept-encoding': 'br' } })
      expect(asset.status).toBe(200)
      expect(asset.headers.get('content-encoding')).toBe('br')
      // The installed command finds the service's gateway without -c (/usr/bin/iothub-edge names the config).
      const status = await run('iothub-edge', ['status', '--json'])
      expect(status.code, status.stderr).toBe(0)
      expect(JSON.parse(status.stdout)).toMatchObject({ pid: child.pid, status: 'ok' })
    } finally {
      code = await child.stop()
    }
    expect(code, child.output()).toBe(0)
    // With the service stopped, root would leave root-owned files in its data folder: refused, saying how.
    const asRoot = await run('iothub-edge', ['devices', 'list'])
    expect(asRoot.code).toBe(1)
    expect(asRoot.stderr).toContain(`${DATA} belongs to iothub-edge and this runs as root`)
    expect(asRoot.stderr).toContain('sudo -u iothub-edge iothub-edge ...')
    const asService = await run('setpriv', [...AS_SERVICE_USER, 'iothub-edge', 'devices', 'list'])
    expect(asService.code, asService.stderr).toBe(0)

    editConfig((doc) => (doc.http.port = 'eighty'))
    const bad = await run('setpriv', [...AS_SERVICE_USER, 'iothub-edge', 'start', '-c', CONF])
    expect(bad.code).toBe(78)
    expect(bad.stderr).toMatch(/http\.port/)
    expect(bad.stderr).toContain('IHE_CONFIG_INVALID')
    editConfig((doc) => (doc.http.port = http))
  })

  it('a data folder a gateway run by hand as root left behind: the service stops at start naming the file, its owner and the chown to run; once run, it starts', async () => {
    const http = Number(YAML.parse(readFileSync(CONF, 'utf8')).http.port)
    // As on a new install: the data folder empty, then the gateway tried by hand (`sudo iothub-edge start`).
    await run('sh', ['-c', `rm -rf ${DATA}/*`])
    const byHand = await serve('iothub-edge', ['start'], http)
    expect(await byHand.stop(), byHand.output()).toBe(0)
    expect(statSync(`${DATA}/gateway.db`).uid).toBe(0)

    const refused = await run('setpriv', [...AS_SERVICE_USER, 'iothub-edge', 'start', '-c', CONF])
    expect(refused.code, refused.stderr).toBe(1)
    const said = refused.stderr.split('\n').filter((l) => l.startsWith('iothub-edge: cannot start:'))
    expect(said).toHaveLength(1)
    expect(said[0]).toMatch(new RegExp(`gateway\\.dataDir: ${DATA}/\\S+ belongs to root, and the gateway's user iothub-edge \\(uid \\d+\\) may not (write|read) it`))
    expect(said[0]).toContain('(IHE_DATA_FILE_UNWRITABLE)')
    expect(refused.stderr).not.toContain('readonly database')
    // Nothing was opened: no database taken for damaged and moved aside.
    expect(readdirSync(DATA).filter((f) => f.includes('corrupt'))).toEqual([])

    const fix = /: run (chown -R \S+ \S+) as root/.exec(said[0])?.[1]
    expect(fix).toBe(`chown -R iothub-edge: ${DATA}`)
    const chown = await run('sh', ['-c', fix!])
    expect(chown.code, chown.stderr).toBe(0)
    const service = await serve('setpriv', [...AS_SERVICE_USER, 'iothub-edge', 'start', '-c', CONF], http)
    expect(await service.stop(), service.output()).toBe(0)
  })

  it('upgrades in place keeping the edited config and the data; dpkg -r keeps both; dpkg --purge drops the config and keeps the data', async () => {
    editConfig((doc) => (doc.gateway.id = 'edited-by-operator'))
    const dbBefore = statSync(`${DATA}/gateway.db`).size

    const upgrade = await run('dpkg', ['-i', deb])
    expect(upgrade.code, upgrade.stderr).toBe(0)
    expect(YAML.parse(readFileSync(CONF, 'utf8')).gateway.id).toBe('edited-by-operator')
    expect(statSync(CONF).mode & 0o777).toBe(0o640)
    expect(statSync(`${DATA}/gateway.db`).size).toBe(dbBefore)

    const remove = await run('dpkg', ['-r', 'iothub-edge'])
    expect(remove.code, remove.stderr).toBe(0)
    expect(existsSync('/usr/bin/iothub-edge')).toBe(false)
    expect(existsSync(APP)).toBe(false)
    expect(existsSync(UNIT)).toBe(false)
    expect(existsSync(CONF)).toBe(true)
    expect(existsSync(`${DATA}/gateway.db`)).toBe(true)
    expect(lstatSync(WANTS).isSymbolicLink()).toBe(true)

    const purge = await run('dpkg', ['--purge', 'iothub-edge'])
    expect(purge.code, purge.stderr).toBe(0)
    expect(await installedStatus()).toBe('')
    expect(existsSync(CONF)).toBe(false)
    // The enablement link itself (dangling since dpkg -r) is gone.
    expect(lstatSync(WANTS, { throwIfNoEntry: false })).toBeUndefined()
    expect(existsSync(`${DATA}/gateway.db`)).toBe(true)
    expect(purge.stderr).toContain(`${DATA} (outbox, devices, keys) is kept`)
  })
})
