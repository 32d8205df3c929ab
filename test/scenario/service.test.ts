// The gateway as a service an operator runs: one gateway per data folder (a second one is refused,
// a lock left by kill -9 or by a pid now reused is taken over), a relative data folder is the
// config file's, `devices ...` never trips over what a dead gateway left behind and never creates
// a second empty database by accident, SIGHUP is a clean stop, and start failures name the key,
// the path and a code.
import net from 'node:net'
import { existsSync, readFileSync } from 'node:fs'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import YAML from 'yaml'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { GatewayProcess, runCli } from '../helpers/gateway-process.js'
import { freePort } from '../helpers/ports.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
let tmp: string
const gateways: GatewayProcess[] = []

beforeAll(async () => {
  tmp = await mkdtemp(path.join(os.tmpdir(), 'iothub-edge-service-'))
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

/** Start expected to fail: resolves once the process has exited. */
async function failedStart(g: GatewayProcess): Promise<number | null> {
  await expect(g.start(20_000)).rejects.toThrow(/exited during start/)
  await expect.poll(() => g.running).toBe(false)
  return g.exitCode
}

function stackTrace(s: string): boolean {
  return /^\s+at .+:\d+:\d+\)?$/m.test(s)
}

describe('one gateway per data folder', () => {
  it('refuses a second gateway on the same data folder, naming the pid and the folder; the first carries on', async () => {
    const dataDir = path.join(tmp, 'shared-data')
    const first = track(new GatewayProcess({ gateway: gw, log: { level: 'warn' } }, { dataDir }))
    await first.start()
    const second = track(new GatewayProcess({ gateway: gw, log: { level: 'warn' } }, { dataDir }))
    const code = await failedStart(second)
    expect(code).not.toBe(0)
    expect(code).not.toBeNull()
    expect(second.logs()).toContain(`another gateway (pid ${first.pid}) is using ${dataDir}`)
    expect(second.logs()).toContain('IHE_DATA_DIR_BUSY')
    // The refused one did not take the first one's files away.
    expect((await first.health()).status).toBeDefined()
    expect(existsSync(path.join(dataDir, 'runtime.json'))).toBe(true)
    const list = await runCli(['devices', 'list', '-c', first.configFile], { cwd: tmp })
    expect(list.code, list.stderr).toBe(0)
  })

  it('takes over a lock left by kill -9, and one whose pid now belongs to another process', async () => {
    const dataDir = path.join(tmp, 'stale-data')
    const g = track(new GatewayProcess({ gateway: gw, log: { level: 'warn' } }, { dataDir }))
    await g.start()
    const deadPid = g.pid
    await g.kill9()
    const lock = JSON.parse(readFileSync(path.join(dataDir, 'gateway.lock'), 'utf8')) as { pid: number }
    expect(lock.pid).toBe(deadPid)
    await g.start()
    expect((await g.health()).status).toBeDefined()

    // A pid that is alive but is not the gateway that wrote the lock (this test process, with
    // another start time): after a power loss, pids are handed out again.
    await g.kill9()
    await writeFile(path.join(dataDir, 'gateway.lock'), JSON.stringify({ pid: process.pid, startTime: 1 }))
    await g.start()
    expect((await g.health()).status).toBeDefined()
  })

  it('devices commands work from the database when runtime.json is stale (dead pid, or a reused one)', async () => {
    const dataDir = path.join(tmp, 'runtime-data')
    const g = track(new GatewayProcess({ gateway: gw, log: { level: 'warn' }, devices: [{ productId: 'thermo', deviceId: 't1', secret: 's1' }] }, { dataDir }))
    await g.start()
    await g.kill9()
    expect(existsSync(path.join(dataDir, 'runtime.json'))).toBe(true)
    const dead = await runCli(['devices', 'list', '-c', g.configFile], { cwd: tmp })
    expect(dead.code, dead.stderr).toBe(0)
    expect(stackTrace(dead.stderr)).toBe(false)
    expect(JSON.parse(dead.stdout)).toMatchObject({ devices: [{ productId: 'thermo', deviceId: 't1' }] })

    // runtime.json and lock naming a live process that is not a gateway (this test process).
    const port = await freePort()
    await writeFile(path.join(dataDir, 'runtime.json'), JSON.stringify({ pid: process.pid, httpPort: port }))
    await writeFile(path.join(dataDir, 'gateway.lock'), JSON.stringify({ pid: process.pid, startTime: 1 }))
    const reused = await runCli(['devices', 'add', 'thermo', 't2', '--secret', 's2', '-c', g.configFile], { cwd: tmp })
    expect(reused.code, reused.stderr).toBe(0)
    expect(stackTrace(reused.stderr)).toBe(false)
  })
})

describe('data folder of the devices CLI', () => {
  it('a relative gateway.dataDir is the config file folder, whatever the working directory', async () => {
    const etc = path.join(tmp, 'etc-rel')
    const elsewhere = path.join(tmp, 'elsewhere')
    await mkdir(etc, { recursive: true })
    await mkdir(elsewhere, { recursive: true })
    const file = path.join(etc, 'gateway.yaml')
    await writeFile(file, YAML.stringify({ gateway: { ...gw, dataDir: 'rel-data' } }))
    const r = await runCli(['devices', 'add', 'thermo', 'r1', '--secret', 'r1-secret', '--create', '-c', file], { cwd: elsewhere })
    expect(r.code, r.stderr).toBe(0)
    expect(existsSync(path.join(etc, 'rel-data', 'gateway.db'))).toBe(true)
    expect(existsSync(path.join(elsewhere, 'rel-data'))).toBe(false)

    // The gateway started from yet another directory uses the same folder and knows the device.
    const again = await runCli(['devices', 'list', '-c', file], { cwd: tmp })
    expect(again.code, again.stderr).toBe(0)
    expect(JSON.parse(again.stdout)).toMatchObject({ devices: [{ deviceId: 'r1' }] })
  })

  it('refuses to create a new empty database unless --create is given', async () => {
    const dataDir = path.join(tmp, 'never-used')
    const file = path.join(tmp, 'never-used.yaml')
    await writeFile(file, YAML.stringify({ gateway: { ...gw, dataDir } }))
    for (const args of [['add', 'thermo', 'x1', '--secret', 'x1-secret'], ['list']]) {
      const r = await runCli(['devices', ...args, '-c', file], { cwd: tmp })
      expect(r.code).toBe(1)
      expect(r.stderr).toContain(`no gateway database in ${dataDir}`)
      expect(r.stderr).toContain('--create')
      expect(existsSync(path.join(dataDir, 'gateway.db'))).toBe(false)
    }
    const created = await runCli(['devices', 'add', 'thermo', 'x1', '--secret', 'x1-secret', '--create', '-c', file], { cwd: tmp })
    expect(created.code, created.stderr).toBe(0)
    expect(existsSync(path.join(dataDir, 'gateway.db'))).toBe(true)
  })
})

describe('logs of a first start', () => {
  it('say where the API token is without printing it and how to add a device, and no zero-count restore; every line is JSON carrying the gateway id', async () => {
    const g = track(new GatewayProcess({ gateway: { ...gw, id: 'site-7' }, log: { level: 'info', format: 'json' } }))
    await g.start()
    const token = g.apiToken!
    expect(token).toBeTruthy()
    const logs = g.logs()
    expect(logs).not.toContain(token)
    expect(logs).toContain(`API token generated into ${path.join(g.dataDir, 'api-token')}`)
    // What a new user needs next, and no zero-count noise (broker.db kept nothing on a first start).
    expect(logs).toContain('no device is registered yet: a device logs in with its ProductId, DeviceId and secret; add one with `iothub-edge devices add PRODUCT DEVICE`')
    expect(logs).not.toContain('local broker sessions restored')
    const lines = logs.split('\n').filter((l) => l && !l.startsWith('--- [test]'))
    expect(lines.length).toBeGreaterThan(3)
    for (const l of lines) expect((JSON.parse(l) as { gateway?: string }).gateway, l).toBe('site-7')
  })
})

describe('signals', () => {
  it('SIGHUP is a clean stop (exit 0, lock released): a supervisor starts it again', async () => {
    const g = track(new GatewayProcess({ gateway: gw, log: { level: 'info' } }))
    await g.start()
    process.kill(g.pid!, 'SIGHUP')
    await expect.poll(() => g.running, { timeout: 15_000 }).toBe(false)
    expect(g.exitCode).toBe(0)
    expect(g.logs()).toContain('gateway stopped')
    expect(existsSync(path.join(g.dataDir, 'gateway.lock'))).toBe(false)
    await g.start()
    expect((await g.health()).status).toBeDefined()
  })
})

describe('start failures name the key, the path and the code', () => {
  it('a data folder that cannot be created', async () => {
    const blocker = path.join(tmp, 'a-file')
    await writeFile(blocker, 'not a folder')
    const dataDir = path.join(blocker, 'data')
    const file = path.join(tmp, 'unwritable.yaml')
    await writeFile(file, YAML.stringify({ gateway: { ...gw, dataDir }, http: { host: '127.0.0.1', port: 0 }, broker: { listeners: [{ host: '127.0.0.1', port: 0 }] } }))
    const r = await runCli(['start', '-c', file], { cwd: tmp, timeoutMs: 20_000 })
    expect(r.code).toBe(1)
    expect(r.stderr).toMatch(/gateway\.dataDir: cannot create or write /)
    expect(r.stderr).toContain(dataDir)
    expect(r.stderr).toContain('IHE_DATA_DIR_UNWRITABLE')
    expect(stackTrace(r.stderr)).toBe(false)
  })

  it('an HTTP port in use', async () => {
    const server = net.createServer()
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const port = (server.address() as net.AddressInfo).port
    try {
      const file = path.join(tmp, 'busy-http.yaml')
      const dataDir = path.join(tmp, 'busy-http-data')
      await writeFile(file, YAML.stringify({ gateway: { ...gw, dataDir }, http: { host: '127.0.0.1', port }, broker: { listeners: [{ host: '127.0.0.1', port: 0 }] } }))
      const r = await runCli(['start', '-c', file], { cwd: tmp, timeoutMs: 20_000 })
      expect(r.code).toBe(1)
      expect(r.stderr).toContain(`http.port: cannot listen on 127.0.0.1:${port}`)
      expect(r.stderr).toContain('IHE_HTTP_LISTEN_FAILED')
      // The failed start released the data folder.
      expect(existsSync(path.join(dataDir, 'gateway.lock'))).toBe(false)
    } finally {
      server.close()
    }
  })

  it('an MQTT port in use (a system mosquitto on 1883)', async () => {
    const server = net.createServer()
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const port = (server.address() as net.AddressInfo).port
    try {
      const file = path.join(tmp, 'busy-mqtt.yaml')
      const dataDir = path.join(tmp, 'busy-mqtt-data')
      await writeFile(file, YAML.stringify({ gateway: { ...gw, dataDir }, http: { host: '127.0.0.1', port: 0 }, broker: { listeners: [{ host: '127.0.0.1', port: 0 }, { host: '127.0.0.1', port, zone: 'internal' }] } }))
      const r = await runCli(['start', '-c', file], { cwd: tmp, timeoutMs: 20_000 })
      expect(r.code).toBe(1)
      expect(r.stderr).toBe(
        `iothub-edge: cannot start: broker.listeners[1]: cannot listen on 127.0.0.1:${port} (another process has this port: a system mosquitto?): stop the other process or change broker.listeners (IHE_LISTENER_FAILED)\n`,
      )
      expect(existsSync(path.join(dataDir, 'gateway.lock'))).toBe(false)
    } finally {
      server.close()
    }
  })
})
