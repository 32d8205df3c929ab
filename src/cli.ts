// iothub-edge command line: start, check-config, devices.
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { ConfigError, loadConfig, type Config } from './config.js'
import { Gateway } from './gateway.js'
import { SystemdNotifier } from './core/systemd.js'
import { openDatabase } from './store/db.js'
import { DeviceRegistry, type Device } from './store/devices.js'
import { readApiToken, RUNTIME_FILE, type RuntimeInfo } from './web/server.js'
import { ID_RULE, isId } from './core/hub-topics.js'
import { ErrorCodes } from './core/errors.js'
import { simulate } from './tools/simulate.js'
import { HubSimServer } from './tools/hub-sim-server.js'

// sysexits.h EX_CONFIG: systemd and scripts can tell "fix your config" from a crash.
export const EXIT_CONFIG = 78
const EXIT_USAGE = 64

const USAGE = `usage:
  iothub-edge start [-c FILE]                 run the gateway (built-in defaults without -c)
  iothub-edge check-config FILE               validate a config file; exit 78 on problems
  iothub-edge devices list    [-c FILE]
  iothub-edge devices add     PRODUCT DEVICE [--secret S] [--tags a,b] [-c FILE]
  iothub-edge devices disable PRODUCT DEVICE [-c FILE]
  iothub-edge devices enable  PRODUCT DEVICE [-c FILE]
  iothub-edge devices remove  PRODUCT DEVICE [-c FILE]
  iothub-edge simulate [--url mqtt://127.0.0.1:1883] [--devices 10] [--rate 1] [--qos 1] [--product sim]
                       [--payload-bytes 64] [--secret-prefix sim-secret-] [--duration 60]
                       [--api http://127.0.0.1:8090 --token T]   register the devices first
  iothub-edge hub-sim [--host 127.0.0.1] [--mqtt-port 1884] [--http-port 8091] [--username U --password P]
                      a stand-in cloud hub for demos and tests (not a production hub)
`

export async function main(argv: string[]): Promise<number | undefined> {
  let parsed
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        secret: { type: 'string' },
        tags: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
        url: { type: 'string' },
        devices: { type: 'string' },
        rate: { type: 'string' },
        qos: { type: 'string' },
        product: { type: 'string' },
        'payload-bytes': { type: 'string' },
        'secret-prefix': { type: 'string' },
        duration: { type: 'string' },
        'connect-rate': { type: 'string' },
        api: { type: 'string' },
        token: { type: 'string' },
        host: { type: 'string' },
        'mqtt-port': { type: 'string' },
        'http-port': { type: 'string' },
        username: { type: 'string' },
        password: { type: 'string' },
      },
    })
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}`)
    return EXIT_USAGE
  }
  const { values, positionals } = parsed
  const [cmd, ...rest] = positionals
  if (values.help || !cmd) {
    process.stdout.write(USAGE)
    return cmd || values.help ? 0 : EXIT_USAGE
  }
  switch (cmd) {
    case 'start':
      return start(values.config)
    case 'check-config':
      return checkConfig(rest[0] ?? values.config)
    case 'devices':
      return devices(rest, values)
    case 'simulate':
      return runSimulate(values)
    case 'hub-sim':
      return runHubSim(values)
    default:
      process.stderr.write(`unknown command "${cmd}"\n${USAGE}`)
      return EXIT_USAGE
  }
}

function readConfig(file: string | undefined): Config | number {
  try {
    return loadConfig(file)
  } catch (err) {
    if (err instanceof ConfigError) {
      for (const p of err.problems) process.stderr.write(`${p}\n`)
      process.stderr.write(`${err.problems.length} problem(s) in ${file ?? 'the built-in defaults'} (${ErrorCodes.CONFIG_INVALID})\n`)
      return EXIT_CONFIG
    }
    throw err
  }
}

function checkConfig(file: string | undefined): number {
  if (!file) {
    process.stderr.write(`check-config needs a FILE\n${USAGE}`)
    return EXIT_USAGE
  }
  const cfg = readConfig(file)
  if (typeof cfg === 'number') return cfg
  process.stdout.write(`${file}: ok\n`)
  return 0
}

async function start(file: string | undefined): Promise<number | undefined> {
  const cfg = readConfig(file)
  if (typeof cfg === 'number') return cfg
  const gw = new Gateway(cfg)
  try {
    await gw.start()
  } catch (err) {
    gw.log.fatal({ err }, `gateway failed to start: ${(err as Error).message}`)
    await gw.stop(2_000)
    return 1
  }
  const systemd = new SystemdNotifier(gw.log)
  systemd.ready()
  let stopping = false
  const shutdown = (signal: string): void => {
    if (stopping) return
    stopping = true
    systemd.stopping()
    gw.log.info({ signal }, 'stopping')
    // Hard deadline: whatever happens, the process is gone within 10 s of the signal.
    setTimeout(() => process.exit(1), 10_000).unref()
    gw.stop(8_000).then(
      () => process.exit(0),
      (err: Error) => {
        gw.log.error({ err }, 'error while stopping')
        process.exit(1)
      },
    )
  }
  process.on('SIGTERM', () => shutdown('SIGTERM'))
  process.on('SIGINT', () => shutdown('SIGINT'))
  // A bug in one component is logged with its stack; durability does not depend on the process
  // surviving it (everything acknowledged is already committed), so exit and let systemd restart.
  process.on('uncaughtException', (err) => {
    gw.log.fatal({ err }, 'uncaught exception; exiting')
    process.exit(70)
  })
  return undefined
}

// --- devices ---------------------------------------------------------------------------------

function runningGateway(dataDir: string): RuntimeInfo | undefined {
  const f = path.join(dataDir, RUNTIME_FILE)
  if (!existsSync(f)) return undefined
  try {
    const info = JSON.parse(readFileSync(f, 'utf8')) as RuntimeInfo
    process.kill(info.pid, 0)
    return info
  } catch {
    return undefined
  }
}

async function devices(args: string[], values: { config?: string; secret?: string; tags?: string }): Promise<number> {
  const [sub, productId, deviceId] = args
  const cfg = readConfig(values.config)
  if (typeof cfg === 'number') return cfg
  const needsId = sub !== 'list'
  if (!sub || !['list', 'add', 'disable', 'enable', 'remove'].includes(sub)) {
    process.stderr.write(USAGE)
    return EXIT_USAGE
  }
  if (needsId && (!isId(productId) || !isId(deviceId))) {
    process.stderr.write(`devices ${sub}: PRODUCT and DEVICE must be ${ID_RULE}\n`)
    return EXIT_USAGE
  }
  const tags = values.tags ? values.tags.split(',').map((t) => t.trim()).filter(Boolean) : undefined
  const live = runningGateway(cfg.gateway.dataDir)
  const out = (o: unknown): void => void process.stdout.write(JSON.stringify(o, null, 2) + '\n')

  if (live) {
    // The gateway owns the database while it runs; act through its API so that e.g. a disable
    // disconnects the device at once.
    const token = cfg.http.apiToken ?? readApiToken(cfg.gateway.dataDir)
    const host = cfg.http.host === '0.0.0.0' || cfg.http.host === '::' ? '127.0.0.1' : cfg.http.host
    const call = async (method: string, p: string, body?: unknown): Promise<{ status: number; body: unknown }> => {
      const res = await fetch(`http://${host}:${live.httpPort}${p}`, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      })
      const text = await res.text()
      return { status: res.status, body: text ? JSON.parse(text) : null }
    }
    const dev = `/api/devices/${productId}/${deviceId}`
    const r =
      sub === 'list'
        ? await call('GET', '/api/devices')
        : sub === 'add'
          ? await call('POST', '/api/devices', { productId, deviceId, secret: values.secret, tags })
          : sub === 'remove'
            ? await call('DELETE', dev)
            : await call('PATCH', dev, { enabled: sub === 'enable' })
    if (r.status >= 400) {
      process.stderr.write(`devices ${sub}: ${r.status} ${JSON.stringify(r.body)}\n`)
      return 1
    }
    if (r.body) out(r.body)
    return 0
  }

  const db = openDatabase(cfg.gateway.dataDir)
  try {
    const registry = new DeviceRegistry(db, cfg.gateway.dataDir, cfg.northbound.mode === 'devices')
    const ref = { productId, deviceId }
    const missing = (): number => {
      process.stderr.write(`devices ${sub}: no device ${productId}/${deviceId}\n`)
      return 1
    }
    switch (sub) {
      case 'list':
        out({ devices: registry.list() })
        return 0
      case 'add': {
        if (registry.get(ref)) {
          process.stderr.write(`devices add: ${productId}/${deviceId} already exists\n`)
          return 1
        }
        const r = await registry.add({ ...ref, secret: values.secret, tags })
        out({ device: r.device, secret: r.secret })
        return 0
      }
      case 'disable':
      case 'enable': {
        const d: Device | undefined = registry.setEnabled(ref, sub === 'enable')
        if (!d) return missing()
        out({ device: d })
        return 0
      }
      case 'remove':
        return registry.remove(ref) ? 0 : missing()
      default:
        return EXIT_USAGE
    }
  } finally {
    db.close()
  }
}

// --- tools -----------------------------------------------------------------------------------

function num(v: string | undefined, def: number, name: string): number {
  if (v === undefined) return def
  const n = Number(v)
  if (!Number.isFinite(n) || n < 0) throw new UsageError(`--${name} must be a non-negative number`)
  return n
}

class UsageError extends Error {}

async function runSimulate(v: Record<string, string | boolean | undefined>): Promise<number> {
  try {
    const ac = new AbortController()
    process.once('SIGINT', () => ac.abort())
    process.once('SIGTERM', () => ac.abort())
    const qos = num(v.qos as string | undefined, 1, 'qos')
    if (qos !== 0 && qos !== 1) throw new UsageError('--qos must be 0 or 1')
    const stats = await simulate(
      {
        url: (v.url as string | undefined) ?? 'mqtt://127.0.0.1:1883',
        productId: (v.product as string | undefined) ?? 'sim',
        devices: num(v.devices as string | undefined, 10, 'devices'),
        rate: num(v.rate as string | undefined, 1, 'rate'),
        qos,
        payloadBytes: num(v['payload-bytes'] as string | undefined, 64, 'payload-bytes'),
        secretPrefix: (v['secret-prefix'] as string | undefined) ?? 'sim-secret-',
        durationS: num(v.duration as string | undefined, 60, 'duration'),
        connectRate: num(v['connect-rate'] as string | undefined, 500, 'connect-rate'),
        api: v.api ? { url: v.api as string, token: (v.token as string | undefined) ?? '' } : undefined,
      },
      ac.signal,
    )
    process.stdout.write(JSON.stringify(stats) + '\n')
    return stats.connected > 0 ? 0 : 1
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`simulate: ${err.message}\n`)
      return EXIT_USAGE
    }
    throw err
  }
}

async function runHubSim(v: Record<string, string | boolean | undefined>): Promise<number | undefined> {
  const server = new HubSimServer({
    host: (v.host as string | undefined) ?? '127.0.0.1',
    mqttPort: num(v['mqtt-port'] as string | undefined, 1884, 'mqtt-port'),
    httpPort: num(v['http-port'] as string | undefined, 8091, 'http-port'),
    username: v.username as string | undefined,
    password: v.password as string | undefined,
  })
  await server.start()
  process.stdout.write(
    `hub-sim (a stand-in cloud hub for demos and tests, NOT a production hub)\n  MQTT  mqtt://127.0.0.1:${server.mqttPort}\n  HTTP  http://127.0.0.1:${server.httpPort}  (GET /stats, GET /uploads, POST /devices/{p}/{d}/commands, POST /devices/{p}/{d}/rpc, PUT /devices/{p}/{d}/shadow, PUT /devices/{p}/{d}/tags, POST /tags/{p}/{tag}/commands)\n`,
  )
  const stop = (): void => void server.stop().then(() => process.exit(0))
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  return undefined
}
