// iothub-edge command line: start, check-config, devices.
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { ConfigError, configWarnings, fileProblems, loadConfig, type Config } from './config.js'
import { Gateway } from './gateway.js'
import { SystemdNotifier } from './core/systemd.js'
import { DB_FILE, openDatabase } from './store/db.js'
import { DataDirLock, lockOwner } from './store/data-dir-lock.js'
import { DeviceRegistry, type Device } from './store/devices.js'
import { readApiToken, RUNTIME_FILE, type RuntimeInfo } from './web/server.js'
import { ID_RULE, isId } from './core/hub-topics.js'
import { ErrorCodes, StartError } from './core/errors.js'
import { simulate } from './tools/simulate.js'
import { HubSimServer } from './tools/hub-sim-server.js'

// sysexits.h EX_CONFIG: systemd and scripts can tell "fix your config" from a crash.
export const EXIT_CONFIG = 78
const EXIT_USAGE = 64

const USAGE = `usage:
  iothub-edge start [-c FILE]                 run the gateway (built-in defaults without -c)
  iothub-edge check-config FILE               validate a config file; exit 78 on problems
  iothub-edge devices list    [-c FILE]
  iothub-edge devices add     PRODUCT DEVICE [--secret S] [--tags a,b] [-c FILE] [--create]
                              (--create: allow a new database when the data folder has none)
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
        create: { type: 'boolean' },
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

/** The config, or the exit code after its problems went to stderr; `files`: also check named files. */
function readConfig(file: string | undefined, files = false): Config | number {
  try {
    const cfg = loadConfig(file)
    const missing = files ? fileProblems(cfg) : []
    if (missing.length) throw new ConfigError(missing)
    return cfg
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
  const cfg = readConfig(file, true)
  if (typeof cfg === 'number') return cfg
  const warnings = configWarnings(cfg)
  for (const w of warnings) process.stderr.write(`warning: ${w}\n`)
  process.stdout.write(`${file}: ok${warnings.length ? ` (${warnings.length} warning(s))` : ''}\n`)
  return 0
}

async function start(file: string | undefined): Promise<number | undefined> {
  const cfg = readConfig(file, true)
  if (typeof cfg === 'number') return cfg
  const gw = new Gateway(cfg)
  for (const w of configWarnings(cfg)) gw.log.warn({ code: ErrorCodes.CONFIG_INVALID }, w)
  try {
    await gw.start()
  } catch (err) {
    const code = err instanceof StartError ? err.code : undefined
    gw.log.fatal({ err, code }, `gateway failed to start: ${(err as Error).message}`)
    // Also in plain words on stderr, for whoever ran it by hand (the log may be JSON).
    process.stderr.write(`iothub-edge: cannot start: ${(err as Error).message}${code ? ` (${code})` : ''}\n`)
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
  // SIGHUP (a closed terminal, or `kill -HUP` to re-read the config): a clean stop, exit 0. Under
  // systemd (Restart=always) the service starts again at once with the config as it is now.
  process.on('SIGHUP', () => shutdown('SIGHUP'))
  // A bug in one component is logged with its stack; durability does not depend on the process
  // surviving it (everything acknowledged is already committed), so exit and let systemd restart.
  process.on('uncaughtException', (err) => {
    gw.log.fatal({ err }, 'uncaught exception; exiting')
    process.exit(70)
  })
  return undefined
}

// --- devices ---------------------------------------------------------------------------------

/**
 * The gateway running on this data folder, if any: the lock tells whether one lives (a runtime.json
 * left by a gateway killed with -9, or one whose pid now belongs to another process, is stale and
 * ignored); runtime.json tells its HTTP port.
 */
function runningGateway(dataDir: string): { pid: number; httpPort?: number } | undefined {
  const owner = lockOwner(dataDir)
  if (!owner) return undefined
  try {
    const info = JSON.parse(readFileSync(path.join(dataDir, RUNTIME_FILE), 'utf8')) as RuntimeInfo
    if (info.pid === owner.pid && Number.isInteger(info.httpPort)) return info
  } catch {
    // not written yet (still starting), or unreadable
  }
  return { pid: owner.pid }
}

const DEVICE_COMMANDS = ['list', 'add', 'disable', 'enable', 'remove']

async function devices(args: string[], values: { config?: string; secret?: string; tags?: string; create?: boolean }): Promise<number> {
  const [sub, productId, deviceId] = args
  const cfg = readConfig(values.config)
  if (typeof cfg === 'number') return cfg
  const needsId = sub !== 'list'
  if (!sub || !DEVICE_COMMANDS.includes(sub)) {
    process.stderr.write(USAGE)
    return EXIT_USAGE
  }
  if (needsId && (!isId(productId) || !isId(deviceId))) {
    process.stderr.write(`devices ${sub}: PRODUCT and DEVICE must be ${ID_RULE}\n`)
    return EXIT_USAGE
  }
  const tags = values.tags ? values.tags.split(',').map((t) => t.trim()).filter(Boolean) : undefined
  const dataDir = cfg.gateway.dataDir
  const live = runningGateway(dataDir)
  const out = (o: unknown): void => void process.stdout.write(JSON.stringify(o, null, 2) + '\n')

  if (live) {
    if (live.httpPort === undefined) {
      process.stderr.write(`devices ${sub}: a gateway (pid ${live.pid}) is using ${dataDir} but has not published its API port (${RUNTIME_FILE}) yet; if it is starting, try again in a moment\n`)
      return 1
    }
    // The gateway owns the database while it runs; act through its API so that e.g. a disable
    // disconnects the device at once.
    const token = cfg.http.apiToken ?? readApiToken(dataDir)
    const host = cfg.http.host === '0.0.0.0' || cfg.http.host === '::' ? '127.0.0.1' : cfg.http.host
    const call = async (method: string, p: string, body?: unknown): Promise<{ status: number; body: unknown }> => {
      const res = await fetch(`http://${host}:${live.httpPort}${p}`, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
        body: body ? JSON.stringify(body) : undefined,
        signal: AbortSignal.timeout(15_000),
      })
      const text = await res.text()
      return { status: res.status, body: text ? JSON.parse(text) : null }
    }
    const dev = `/api/devices/${productId}/${deviceId}`
    let r: { status: number; body: unknown }
    try {
      r =
        sub === 'list'
          ? await call('GET', '/api/devices')
          : sub === 'add'
            ? await call('POST', '/api/devices', { productId, deviceId, secret: values.secret, tags })
            : sub === 'remove'
              ? await call('DELETE', dev)
              : await call('PATCH', dev, { enabled: sub === 'enable' })
    } catch (err) {
      const cause = (err as Error & { cause?: Error }).cause?.message ?? (err as Error).message
      process.stderr.write(`devices ${sub}: the gateway (pid ${live.pid}) using ${dataDir} does not answer on http://${host}:${live.httpPort} (${cause}); check its log, or try again once it is up\n`)
      return 1
    }
    if (r.status >= 400) {
      process.stderr.write(`devices ${sub}: ${r.status} ${JSON.stringify(r.body)}\n`)
      return 1
    }
    if (r.body) out(r.body)
    return 0
  }

  // No gateway runs: open the database directly, but never a new empty one by accident (a wrong
  // -c or data folder would put devices where the gateway never looks).
  if (!existsSync(path.join(dataDir, DB_FILE)) && !values.create) {
    process.stderr.write(
      `devices ${sub}: no gateway database in ${dataDir} (gateway.dataDir${values.config ? ` of ${values.config}` : ', built-in default ./data'}); ` +
        `check -c FILE, or pass --create to start a new one there\n`,
    )
    return 1
  }
  // Hold the data folder while working on it, so that a gateway does not start meanwhile.
  const lock = new DataDirLock(dataDir)
  try {
    lock.acquire()
  } catch (err) {
    process.stderr.write(`devices ${sub}: ${(err as Error).message}\n`)
    return 1
  }
  try {
    return await offlineDevices(sub, productId, deviceId, cfg, values.secret, tags, out)
  } finally {
    lock.release()
  }
}

async function offlineDevices(
  sub: string,
  productId: string,
  deviceId: string,
  cfg: Config,
  secret: string | undefined,
  tags: string[] | undefined,
  out: (o: unknown) => void,
): Promise<number> {
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
        const r = await registry.add({ ...ref, secret, tags })
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
