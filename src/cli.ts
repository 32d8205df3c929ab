// iothub-edge command line: start, check-config, devices, status, rules, history, ota, the adapters' tools (lorawan import).
import { accessSync, constants as fsConstants, createReadStream, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { ConfigError, configWarnings, fileProblems, loadConfig, type Config } from './config.js'
import { SystemdNotifier } from './core/systemd.js'
import { DB_FILE, openDatabase } from './store/db.js'
import { DataDirLock, lockOwner } from './store/data-dir-lock.js'
import { userName } from './store/data-dir-access.js'
import { acknowledgeSalvage } from './store/salvage.js'
import { isDamagedDatabase } from './core/damaged-file.js'
import { DeviceRegistry, type Device } from './store/devices.js'
import { readApiToken, RUNTIME_FILE, type RuntimeInfo } from './web/runtime-files.js'
import { endpoint, request, type Answer, type Endpoint } from './cli-http.js'
import { UiAuthStore } from './store/ui-auth.js'
import { createSetupCode } from './web/auth-setup.js'
import { hashPassword, passwordProblem } from './core/password-hash.js'
import { ID_RULE, isId } from './core/hub-topics.js'
import { ErrorCodes, StartError } from './core/errors.js'
import { VERSION } from './core/version.js'
import type { DeviceRef } from './core/types.js'
import { ConnectionStore, lastSeen as lastSeenOf, type ConnectionInfo } from './store/connections.js'
import { deviceDetails, devicesTable, json, outputMode, statusText, table } from './cli-output.js'
import readline from 'node:readline/promises'
import { Readable, Writable } from 'node:stream'
import { builtInAdapters } from './southbound/registry.js'
import type { AdapterModule } from './southbound/adapter-module.js'
import type { DryRunResult, SampleMessage } from './rules/dry-run.js'
import { HISTORY_FILE, openHistoryReadOnly } from './history/history-db.js'

// sysexits.h EX_CONFIG: systemd and scripts can tell "fix your config" from a crash.
export const EXIT_CONFIG = 78
const EXIT_USAGE = 64
// `status`: as `systemctl status` does, 3 for "not running"; 2 for running but degraded.
const EXIT_DEGRADED = 2
const EXIT_NOT_RUNNING = 3
/** EX_SOFTWARE: a bug, or a store found damaged while running; systemd restarts the gateway. */
const EXIT_SOFTWARE = 70

const USAGE = `usage:
  iothub-edge start [-c FILE]                 run the gateway (built-in defaults without -c)
  iothub-edge check-config FILE               validate a config file; exit 78 on problems
  iothub-edge status [-c FILE] [--json]       health of the gateway running on the data folder
                                              (exit 0 ok, 2 degraded, 3 not running)
  iothub-edge devices list    [-c FILE]
  iothub-edge devices show    PRODUCT DEVICE [-c FILE]
  iothub-edge devices add     PRODUCT DEVICE [--tags a,b] [-c FILE] [--create]
                              (prints a generated secret once; --create: allow a new database
                              when the data folder has none)
  iothub-edge devices set-secret PRODUCT DEVICE [-c FILE]   the secret from a prompt, or stdin
  iothub-edge devices set-tags PRODUCT DEVICE --tags a,b [-c FILE]   replace the tags (--tags '' clears them)
  iothub-edge devices disable PRODUCT DEVICE [-c FILE]
  iothub-edge devices enable  PRODUCT DEVICE [-c FILE]
  iothub-edge devices remove  PRODUCT DEVICE [-c FILE]
  devices and status print tables on a terminal, JSON otherwise or with --json
  iothub-edge lorawan import [-c FILE] [--tenant UUID] [--application UUID[,UUID]] [--dry-run] [--json] [--create]
                              register ChirpStack's devices as children by the lorawan mapping
                              (lists them through lorawan.chirpstack.api)
  iothub-edge rules test -c FILE --message MSG [--json]
                              what each rule does to the sample message(s) in MSG (JSON: one
                              {topic, payload, meta?, tags?, ts?} or a list of them), without a gateway
  iothub-edge history export --device PRODUCT/DEVICE [--series NAME] [--from T] [--to T] [-c FILE]
                              CSV of the local history on stdout (T: ISO date or epoch ms; default
                              the last 24 h); raw samples within store.history.retentionDays, rollups before
  iothub-edge ota images|jobs [-c FILE]        the OTA relay's cache and jobs (JSON)
  iothub-edge ota upload FILE --image-version V --type T [-c FILE]   an image for offline campaigns
  iothub-edge ota push IMAGE (--devices p/d,p/d | --product P --tags TAG) [--expires SECONDS] [--max-concurrent N] [-c FILE]
                              push a cached image (its md5) to devices, or to the children carrying a tag
  iothub-edge diagnostics [-c FILE] [-o OUT]  the running gateway's diagnostics bundle (tar.gz, secrets
                              replaced) into OUT (default: its own name in this folder)
  iothub-edge ui reset-password [-c FILE]
                              remove the web UI's users and their sessions and print a new setup
                              code: the next visit sets the admin password (API tokens stay valid);
                              works with the gateway running
  iothub-edge store ack [-c FILE]              acknowledge the salvage of a damaged gateway.db or broker.db (the
                              health stops saying store_salvaged / broker_sessions_salvaged; the damaged
                              file stays where it was moved)
  iothub-edge hash-password                   the scrypt hash of a password (from a prompt, or the first line of
                                              stdin; never an argument) for broker.apps[].passwordHash
  iothub-edge --version
  iothub-edge simulate [--url mqtt://127.0.0.1:1883] [--devices 10] [--rate 1] [--qos 1] [--product sim]
                       [--payload-bytes 64] [--secret-prefix sim-secret-] [--duration 60]
                       [--api http://127.0.0.1:8090 --token T]   register the devices first
  iothub-edge hub-sim [--host 127.0.0.1] [--mqtt-port 1884] [--http-port 8091] [--username U --password P]
                      a stand-in cloud hub for demos and tests (not a production hub)
`

const HELP_HINT = '`iothub-edge --help` lists the commands and their options'

/**
 * What each command takes: its long options (besides --help) and how many arguments after its
 * name. Anything else is a usage error, said in one line: an option another command takes (e.g.
 * `simulate --device 5`) or a config file given without -c (`start gateway.yaml`) would otherwise
 * be ignored without a word.
 */
const COMMANDS: Record<string, { options: readonly string[]; args: number }> = {
  start: { options: ['config'], args: 0 },
  'check-config': { options: ['config'], args: 1 },
  status: { options: ['config', 'json'], args: 0 },
  devices: { options: ['config', 'secret', 'tags', 'create', 'json'], args: 3 },
  rules: { options: ['config', 'message', 'json'], args: 1 },
  history: { options: ['config', 'device', 'series', 'from', 'to'], args: 1 },
  ota: { options: ['config', 'image-version', 'type', 'devices', 'product', 'tags', 'expires', 'max-concurrent'], args: 2 },
  diagnostics: { options: ['config', 'output'], args: 0 },
  ui: { options: ['config'], args: 1 },
  store: { options: ['config'], args: 1 },
  // Its own check says why a password never goes on the command line.
  'hash-password': { options: [], args: Infinity },
  simulate: { options: ['url', 'devices', 'rate', 'qos', 'product', 'payload-bytes', 'secret-prefix', 'duration', 'connect-rate', 'api', 'token'], args: 0 },
  'hub-sim': { options: ['host', 'mqtt-port', 'http-port', 'username', 'password'], args: 0 },
}

/** One command's lines of USAGE (its block), for `iothub-edge CMD --help`. */
export function usageOf(cmd: string): string | undefined {
  const out: string[] = []
  let mine = false
  for (const line of USAGE.split('\n')) {
    const head = /^ {2}iothub-edge ([a-z][a-z-]*)/.exec(line)
    if (head) mine = head[1] === cmd
    else if (!/^ {3,}\S/.test(line)) mine = false
    if (mine) out.push(line)
  }
  return out.length ? `usage:\n${out.join('\n')}\n` : undefined
}

/** A wrong command line: what is wrong in one line, then where its usage is; exit 64. */
function usageError(cmd: string | undefined, message: string): number {
  process.stderr.write(`${message}\n${cmd && usageOf(cmd) ? `\`iothub-edge ${cmd} --help\` shows its usage` : HELP_HINT}\n`)
  return EXIT_USAGE
}

/** Thrown for a bad option value (`--rate x`): said as a usage error of the command, exit 64. */
class UsageError extends Error {}

/** node:util's parseArgs messages, said the way an operator reads them. */
function argsError(err: Error & { code?: string }): string {
  // "Unknown option '--foo'.", "Option '-c, --config <value>' argument missing": the long name if any.
  const quoted = /'([^']+)'/.exec(err.message)?.[1] ?? ''
  const option = /--[\w-]+/.exec(quoted)?.[0] ?? /-\w/.exec(quoted)?.[0]
  if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' && option) return `unknown option ${option}`
  if (err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && option) return `option ${option} needs a value`
  return err.message
}

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
        json: { type: 'boolean' },
        version: { type: 'boolean' },
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
        tenant: { type: 'string' },
        application: { type: 'string' },
        'dry-run': { type: 'boolean' },
        message: { type: 'string' },
        device: { type: 'string' },
        series: { type: 'string' },
        from: { type: 'string' },
        to: { type: 'string' },
        'image-version': { type: 'string' },
        type: { type: 'string' },
        expires: { type: 'string' },
        'max-concurrent': { type: 'string' },
        output: { type: 'string', short: 'o' },
      },
    })
  } catch (err) {
    process.stderr.write(`${argsError(err as Error & { code?: string })}\n${HELP_HINT}\n`)
    return EXIT_USAGE
  }
  const { values, positionals } = parsed
  const [cmd, ...rest] = positionals
  if (values.version) {
    process.stdout.write(`iothub-edge ${VERSION}\n`)
    return 0
  }
  if (!cmd) {
    process.stdout.write(USAGE)
    return values.help ? 0 : EXIT_USAGE
  }
  const adapterKey = Object.hasOwn(builtInAdapters, cmd) ? (cmd as keyof typeof builtInAdapters) : undefined
  // Own keys only: `iothub-edge constructor` is no command.
  const spec = Object.hasOwn(COMMANDS, cmd) ? COMMANDS[cmd] : undefined
  if (!spec && !adapterKey) return usageError(undefined, `unknown command "${cmd}"`)
  if (values.help) {
    if (adapterKey) return adapterTool(adapterKey, [], {}, true)
    process.stdout.write(usageOf(cmd) ?? USAGE)
    return 0
  }
  if (spec) {
    const foreign = optionNotTaken(values, spec.options)
    if (foreign) return usageError(cmd, `${cmd} does not take --${foreign}`)
    if (rest.length > spec.args) {
      const extra = rest[spec.args]
      const hint = cmd === 'start' && /\.ya?ml$/i.test(extra) ? `: the config file goes after -c (iothub-edge start -c ${extra})` : ''
      return usageError(cmd, `${cmd}: unexpected argument "${extra}"${hint}`)
    }
  }
  // The package's /usr/bin/iothub-edge names /etc/iothub-edge/gateway.yaml here: on an installed
  // gateway `iothub-edge status` finds the service's data folder without -c.
  const envConfig = process.env.IOTHUB_EDGE_CONFIG
  if (values.config === undefined && envConfig && (adapterKey || spec?.options.includes('config'))) values.config = envConfig
  try {
    if (adapterKey) return await adapterTool(adapterKey, rest, values)
    switch (cmd) {
      case 'start':
        return await start(values.config)
      case 'check-config':
        return checkConfig(rest[0] ?? values.config)
      case 'devices':
        return await devices(rest, values)
      case 'status':
        return await status(values)
      case 'ota':
        return await ota(rest, values)
      case 'simulate':
        return await runSimulate(values)
      case 'hub-sim':
        return await runHubSim(values)
      case 'rules':
        return await rulesCommand(rest, values)
      case 'history':
        return await historyCommand(rest, values)
      case 'diagnostics':
        return await diagnostics(values)
      case 'ui':
        return uiCommand(rest, values)
      case 'store':
        return await storeCommand(rest, values)
      default:
        return await hashPasswordCommand(rest)
    }
  } catch (err) {
    if (err instanceof UsageError) return usageError(cmd, `${cmd}: ${err.message}`)
    return failed(cmd, err)
  }
}

/** The first option given that is not among `options` (--help goes with any). */
function optionNotTaken(values: object, options: readonly string[]): string | undefined {
  return Object.keys(values).find((k) => k !== 'help' && !options.includes(k))
}

/** A programming error rather than something the command met (fetch's own TypeError carries a cause). */
const isBug = (err: unknown): boolean => (err instanceof TypeError && !(err as Error).cause) || err instanceof ReferenceError || err instanceof RangeError || err instanceof SyntaxError

type Values = Record<string, string | boolean | undefined>

/**
 * A command that failed on something outside it (a file it may not write, a port taken, the
 * gateway's API answering nonsense): one line with the reason and exit 1, not Node's stack trace.
 * IOTHUB_EDGE_DEBUG=1 adds the stack, for a bug report.
 */
function failed(cmd: string, err: unknown): number {
  const e = err as NodeJS.ErrnoException & { cause?: Error }
  const cause = e.cause?.message && !e.message.includes(e.cause.message) ? ` (${e.cause.message})` : ''
  const hint = e.code === 'EADDRINUSE' ? ': another process has this port' : e.code === 'EACCES' || e.code === 'EPERM' ? `: not allowed for this user (uid ${process.getuid?.() ?? '?'})` : ''
  process.stderr.write(`${ERR}iothub-edge ${cmd}: ${e.message ?? String(err)}${cause}${hint}\n`)
  if (process.env.IOTHUB_EDGE_DEBUG) process.stderr.write(`${e.stack ?? ''}\n`)
  else if (isBug(err)) process.stderr.write(`${ERR}(a bug: IOTHUB_EDGE_DEBUG=1 iothub-edge ... prints where it happened; please report it with that)\n`)
  return 1
}

/**
 * `ui reset-password`: the way back for an operator locked out of the web UI, for whoever can run
 * commands on the gateway as its user: the users go, a new setup code is written (and printed
 * here, on the terminal, not in the gateway's log). A running gateway sees both at once: it reads
 * the users and the code's file at each request.
 */
function uiCommand(rest: string[], values: { config?: string }): number {
  if (rest[0] !== 'reset-password') return usageError('ui', rest[0] ? `ui: unknown subcommand "${rest[0]}" (there is: reset-password)` : 'ui needs a subcommand: reset-password')
  const cfg = readConfig(values.config)
  if (typeof cfg === 'number') return cfg
  const dataDir = cfg.gateway.dataDir
  // Also with the gateway running: it must be able to read the setup code file made here.
  const foreign = rootOnForeignDataDir(dataDir, 'ui reset-password')
  if (foreign) {
    process.stderr.write(`${foreign}\n`)
    return 1
  }
  if (!existsSync(path.join(dataDir, DB_FILE))) {
    process.stderr.write(`ui reset-password: there is no gateway database in ${dataDir}: check -c FILE (the gateway's config), or start the gateway once\n`)
    return 1
  }
  const db = openDatabase(dataDir)
  let removed: number
  try {
    removed = new UiAuthStore(db).removeUsers()
  } finally {
    db.close()
  }
  const { code, file } = createSetupCode(dataDir)
  process.stdout.write(
    `web UI: ${removed} user(s) and their sessions removed; API tokens stay valid\nsetup code: ${code}\n(also in ${file}): open the web UI and set the admin's password with it\n`,
  )
  return 0
}

/** `rules test`: the configured rules run on sample messages, nothing sent, nothing stored. */
async function rulesCommand(rest: string[], values: { config?: string; message?: string; json?: boolean }): Promise<number> {
  if (rest[0] !== 'test') return usageError('rules', rest[0] ? `rules: unknown subcommand "${rest[0]}" (there is: test)` : 'rules needs a subcommand: test')
  if (!values.message) return usageError('rules', 'rules test needs --message MSG (a JSON file with the sample message or messages)')
  const cfg = readConfig(values.config)
  if (typeof cfg === 'number') return cfg
  let samples: SampleMessage[]
  try {
    const doc = JSON.parse(readFileSync(values.message, 'utf8')) as SampleMessage | SampleMessage[]
    samples = Array.isArray(doc) ? doc : [doc]
  } catch (err) {
    process.stderr.write(`${values.message}: cannot read a JSON message (${(err as Error).message})\n`)
    return EXIT_USAGE
  }
  let results: DryRunResult[]
  try {
    const { dryRun } = await import('./rules/dry-run.js')
    results = dryRun(cfg.rules, samples)
  } catch (err) {
    process.stderr.write(`${values.message}: ${(err as Error).message}\n`)
    return EXIT_USAGE
  }
  if (values.json) {
    process.stdout.write(`${JSON.stringify(results, null, 2)}\n`)
    return 0
  }
  const lines: string[] = []
  for (const r of results) {
    lines.push(`message ${r.message}`)
    if (cfg.rules.length === 0) lines.push('  (no rules configured)')
    for (const t of r.rules) {
      if (!t.matched) {
        lines.push(`  rule ${t.rule}: from does not match`)
        continue
      }
      const where = t.where === undefined ? '' : t.where ? ', where true' : ', where false: not applied'
      lines.push(`  rule ${t.rule}: matched${where}${t.error ? `, ERROR ${t.error} (the message goes on as before this rule)` : ''}`)
      for (const a of t.actions) lines.push(`    ${a.action}: ${a.result}`)
    }
    if (r.up.length === 0) lines.push('  nothing goes up')
    for (const u of r.up) lines.push(`  up: ${u.topic} ${u.payload}`)
    for (const c of r.commands) lines.push(`  command: ${c.device} ${c.name} ${c.payload}`)
    for (const p of r.republish) lines.push(`  republish: ${p.topic} ${p.payload}`)
  }
  process.stdout.write(`${lines.join('\n')}\n`)
  return 0
}

/**
 * Under systemd (JOURNAL_STREAM set) stderr goes to the journal as priority "info" unless a line
 * starts with its syslog priority (sd-daemon(3)): errors a refused start writes there get `<3>`,
 * so `journalctl -p err` shows why the unit failed. At a terminal the lines stay plain.
 */
const ERR = process.env.JOURNAL_STREAM ? '<3>' : ''

/** The config, or the exit code after its problems went to stderr; `files`: also check named files. */
function readConfig(file: string | undefined, files = false): Config | number {
  try {
    const cfg = loadConfig(file)
    const missing = files ? fileProblems(cfg) : []
    if (missing.length) throw new ConfigError(missing)
    return cfg
  } catch (err) {
    if (err instanceof ConfigError) {
      for (const p of err.problems) process.stderr.write(`${ERR}${p}\n`)
      process.stderr.write(`${ERR}${err.problems.length} problem(s) in ${file ?? 'the built-in defaults'} (${ErrorCodes.CONFIG_INVALID})\n`)
      return EXIT_CONFIG
    }
    throw err
  }
}

function checkConfig(file: string | undefined): number {
  if (!file) return usageError('check-config', 'check-config needs the config FILE to check')
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
  // The store found damaged while running: out without a clean stop (the lock file stays), so the
  // next start (systemd's Restart=always) runs quick_check and salvages.
  // Loaded here, not at the top: the other commands (status, devices, --version) start faster
  // without the whole gateway.
  const { Gateway } = await import('./gateway.js')
  const gw = new Gateway(cfg, { onFatal: () => process.exit(EXIT_SOFTWARE) })
  for (const w of configWarnings(cfg)) gw.log.warn({ code: ErrorCodes.CONFIG_INVALID }, w)
  const systemd = new SystemdNotifier(gw.log)
  let started = false
  let stopping: string | undefined
  const shutdown = (signal: string): void => {
    if (stopping) return
    stopping = signal
    gw.log.info({ signal }, started ? 'stopping' : 'stopping once the start in progress is done')
    // A signal during the start (a salvage can take a while) is served when the start is done:
    // stopping halfway through opening the store would leave it to the next start to check.
    if (!started) return
    systemd.stopping()
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
  // Before the start, so that no signal finds Node's default (exit 128+N without a clean stop).
  process.on('SIGTERM', () => shutdown('SIGTERM'))
  process.on('SIGINT', () => shutdown('SIGINT'))
  // SIGHUP (a closed terminal, or `kill -HUP` to re-read the config): a clean stop, exit 0. Under
  // systemd (Restart=always) the service starts again at once with the config as it is now.
  process.on('SIGHUP', () => shutdown('SIGHUP'))
  try {
    await gw.start()
  } catch (err) {
    // A damaged page the start's check did not reach, read while starting (the command queue, a
    // value's overflow pages): out without a clean stop, as while running, so that the next start
    // runs quick_check and salvages; a clean stop would leave the next start the same cheap check.
    if (isDamagedDatabase(err)) {
      gw.storeDamaged('gateway.db', err)
      return EXIT_SOFTWARE
    }
    // A StartError, or another error that carries one of the catalogue's codes (a broker listener).
    const own = (err as { code?: unknown }).code
    const code = err instanceof StartError ? err.code : typeof own === 'string' && own.startsWith('IHE_') ? own : undefined
    gw.log.fatal({ err, code }, `gateway failed to start: ${(err as Error).message}`)
    // Also in plain words on stderr, for whoever ran it by hand (the log may be JSON).
    process.stderr.write(`${ERR}iothub-edge: cannot start: ${(err as Error).message}${code ? ` (${code})` : ''}\n`)
    await gw.stop(2_000)
    return 1
  }
  started = true
  if (stopping) {
    const signal = stopping
    stopping = undefined
    shutdown(signal)
    return undefined
  }
  systemd.ready()
  // A bug in one component is logged with its stack; durability does not depend on the process
  // surviving it (everything acknowledged is already committed), so exit and let systemd restart.
  process.on('uncaughtException', (err) => {
    // Read from a damaged gateway.db where no caller expected it (the outbox's own reads say so
    // themselves): not a bug but the storage; the same way out as for any damage found while running.
    if (isDamagedDatabase(err)) return gw.storeDamaged('gateway.db', err)
    gw.log.fatal({ err }, 'uncaught exception; exiting')
    process.exit(EXIT_SOFTWARE)
  })
  return undefined
}

// --- devices ---------------------------------------------------------------------------------

/** The user name owning a file (from /etc/passwd), else `#uid` as sudo -u takes it. */
function ownerOf(file: string): string {
  let uid: number
  try {
    uid = statSync(file).uid
  } catch {
    return "the gateway's user"
  }
  const name = userName(uid)
  return name.startsWith('#') ? `'${name}'` : name
}

/**
 * Root about to write into a data folder that belongs to another user (the gateway's, with the
 * service stopped): what it made there (the database's -wal and -shm, a setup code) would be
 * root's, and the gateway could not open it at its next start. The reason to refuse, or undefined.
 */
function rootOnForeignDataDir(dataDir: string, what: string): string | undefined {
  if (process.getuid?.() !== 0) return undefined
  let uid: number
  try {
    uid = statSync(dataDir).uid
  } catch {
    return undefined
  }
  if (uid === 0) return undefined
  const owner = ownerOf(dataDir)
  return `${what}: ${dataDir} belongs to ${owner} and this runs as root: files made now would be root's and the gateway could not open them; run it as ${owner}: sudo -u ${owner} iothub-edge ...`
}

/**
 * The gateway running on this data folder, if any: the lock tells whether one lives (a runtime.json
 * left by a gateway killed with -9, or one whose pid now belongs to another process, is stale and
 * ignored); runtime.json tells its HTTP port.
 */
function runningGateway(dataDir: string): (Omit<RuntimeInfo, 'httpPort'> & { httpPort?: number }) | undefined {
  // A folder this user may not look into would read as "no gateway, no database": say so instead.
  try {
    accessSync(dataDir, fsConstants.R_OK | fsConstants.X_OK)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new Error(`${dataDir} (gateway.dataDir) is not open to this user (uid ${process.getuid?.() ?? '?'}): run the command as ${ownerOf(dataDir)} (sudo -u ${ownerOf(dataDir)} iothub-edge ...) or as root`)
    }
  }
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

/**
 * Each devices subcommand and the options it takes: one it does not take (`devices list --tags a`,
 * `devices disable P D --create`) is refused, not ignored. --secret is still taken where a secret is
 * set (with a warning), --json by all.
 */
const DEVICE_OPTIONS: Record<string, readonly string[]> = {
  list: ['config', 'json'],
  add: ['config', 'json', 'tags', 'create', 'secret'],
  show: ['config', 'json'],
  'set-secret': ['config', 'json', 'secret'],
  'set-tags': ['config', 'json', 'tags'],
  disable: ['config', 'json'],
  enable: ['config', 'json'],
  remove: ['config', 'json'],
}
const DEVICE_COMMANDS = Object.keys(DEVICE_OPTIONS)

interface DeviceValues {
  config?: string
  secret?: string
  tags?: string
  create?: boolean
  json?: boolean
}

/** What a devices command printed or failed with, the same whether the gateway or the CLI did it. */
type Result = { ok: true; body: Record<string, unknown> | null } | { ok: false; status: number; message: string }

async function devices(args: string[], values: DeviceValues): Promise<number> {
  const [sub, productId, deviceId] = args
  if (!sub) return usageError('devices', `devices needs a subcommand: ${DEVICE_COMMANDS.join(', ')}`)
  if (!DEVICE_COMMANDS.includes(sub)) return usageError('devices', `devices: unknown subcommand "${sub}" (there are: ${DEVICE_COMMANDS.join(', ')})`)
  const foreign = optionNotTaken(values, DEVICE_OPTIONS[sub])
  if (foreign) return usageError('devices', `devices ${sub} does not take --${foreign}`)
  const needsId = sub !== 'list'
  if (!needsId && productId !== undefined) return usageError('devices', `devices list takes no PRODUCT or DEVICE ("${productId}"); devices show PRODUCT DEVICE shows one`)
  if (needsId && (productId === undefined || deviceId === undefined)) return usageError('devices', `devices ${sub} needs PRODUCT and DEVICE (devices ${sub} thermo t-001)`)
  if (needsId && (!isId(productId) || !isId(deviceId))) {
    return usageError('devices', `devices ${sub}: PRODUCT and DEVICE must be ${ID_RULE} (got "${!isId(productId) ? productId : deviceId}")`)
  }
  const cfg = readConfig(values.config)
  if (typeof cfg === 'number') return cfg
  const ref = { productId, deviceId }
  if (values.secret !== undefined) {
    // Still accepted (scripts use it), but said once: argv is in shell history and `ps` for everyone.
    process.stderr.write(
      `warning: --secret on the command line is visible in shell history and to every user (ps); ` +
        `${sub === 'set-secret' ? 'leave it out to be prompted, or pipe it on stdin' : 'leave it out to have one generated, then change it with `devices set-secret` (prompt or stdin)'}\n`,
    )
  }
  let secret = values.secret
  if (sub === 'set-secret' && secret === undefined) {
    try {
      secret = await readSecret(`new secret for ${productId}/${deviceId}`)
    } catch (err) {
      process.stderr.write(`devices set-secret: ${(err as Error).message}\n`)
      return 1
    }
  }
  if (sub === 'set-secret' && !secret) {
    process.stderr.write('devices set-secret: the secret is empty\n')
    return EXIT_USAGE
  }
  const tags = values.tags !== undefined ? values.tags.split(',').map((t) => t.trim()).filter(Boolean) : undefined
  if (sub === 'set-tags' && tags === undefined) {
    process.stderr.write(`devices set-tags: give the new tags with --tags a,b (--tags '' removes them all)\n`)
    return EXIT_USAGE
  }
  const badTag = tags?.find((t) => !isId(t))
  if (badTag !== undefined) {
    process.stderr.write(`devices ${sub}: tag "${badTag}" must be ${ID_RULE} (a tag is a topic level)\n`)
    return EXIT_USAGE
  }
  const dataDir = cfg.gateway.dataDir
  const live = runningGateway(dataDir)
  const mode = outputMode(values.json)

  let result: Result
  let online: boolean | null = null
  let lastSeen: number | null = null
  if (live) {
    if (live.httpPort === undefined) {
      process.stderr.write(`devices ${sub}: a gateway (pid ${live.pid}) is using ${dataDir} but has not published its API port (${RUNTIME_FILE}) yet; if it is starting, try again in a moment\n`)
      return 1
    }
    // The gateway owns the database while it runs; act through its API so that e.g. a disable
    // disconnects the device at once.
    const api = gatewayApi(cfg, { ...live, httpPort: live.httpPort })
    const dev = `/api/devices/${productId}/${deviceId}`
    try {
      const r =
        sub === 'list'
          ? await api.call('GET', '/api/devices')
          : sub === 'show'
            ? await api.call('GET', dev)
            : sub === 'add'
              ? await api.call('POST', '/api/devices', { productId, deviceId, secret, tags })
              : sub === 'remove'
                ? await api.call('DELETE', dev)
                : sub === 'set-secret'
                  ? await api.call('PATCH', dev, { secret })
                  : sub === 'set-tags'
                    ? await api.call('PATCH', dev, { tags })
                    : await api.call('PATCH', dev, { enabled: sub === 'enable' })
      const body = r.body as Record<string, unknown> | null
      // Said as the database path says it (a 404 is no such device, a 409 an existing one).
      const message = r.status === 404 ? `no device ${productId}/${deviceId}` : r.status === 409 ? `${productId}/${deviceId} already exists` : refusal(r)
      result = r.status >= 400 ? { ok: false, status: r.status, message } : { ok: true, body }
      if (sub === 'show' && body) {
        online = body.online === true
        lastSeen = typeof body.lastSeen === 'number' ? body.lastSeen : null
      }
    } catch (err) {
      const cause = (err as Error & { cause?: Error }).cause?.message ?? (err as Error).message
      process.stderr.write(`devices ${sub}: the gateway (pid ${live.pid}) using ${dataDir} does not answer on ${api.base} (${cause}); check its log, or try again once it is up\n`)
      return 1
    }
  } else {
    // No gateway runs: open the database directly, but never a new empty one by accident (a wrong
    // -c or data folder would put devices where the gateway never looks).
    if (!existsSync(path.join(dataDir, DB_FILE)) && !values.create) {
      process.stderr.write(
        `devices ${sub}: no gateway database in ${dataDir} (gateway.dataDir${values.config ? ` of ${values.config}` : ', built-in default ./data'}); ` +
          `check -c FILE, or pass --create to start a new one there\n`,
      )
      return 1
    }
    const foreign = rootOnForeignDataDir(dataDir, `devices ${sub}`)
    if (foreign) {
      process.stderr.write(`${foreign}\n`)
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
      result = await offlineDevices(sub, ref, cfg, secret, tags)
    } finally {
      lock.release()
    }
  }

  if (!result.ok) {
    process.stderr.write(`devices ${sub}: ${result.message}\n`)
    return 1
  }
  const body = result.body
  if (!body) return 0
  if (mode.json) {
    process.stdout.write(json(body))
  } else if (sub === 'list') {
    process.stdout.write(devicesTable(body.devices as Device[]))
  } else if (sub === 'show') {
    process.stdout.write(deviceDetails(body.device as Device, online, lastSeen ?? lastSeenOf((body.connections as ConnectionInfo[] | undefined) ?? []), (body.connections as ConnectionInfo[] | undefined) ?? []))
  } else {
    process.stdout.write(devicesTable([body.device as Device]))
    if (typeof body.secret === 'string') process.stdout.write(`\nsecret: ${body.secret}\n(shown this once; only its hash is kept)\n`)
  }
  if (sub === 'set-secret') process.stderr.write(`the new secret applies from the device's next connect\n`)
  if (sub === 'set-tags') {
    process.stderr.write(`the hub owns tags: its next $set_tags with a greater tags_version replaces these (change them at the hub too)\n`)
  }
  return 0
}

function gatewayApi(cfg: Config, live: RuntimeInfo): { base: string; call: (method: string, p: string, body?: unknown, raw?: { type: string; stream: Readable }) => Promise<{ status: number; body: unknown }> } {
  const token = cfg.http.apiToken ?? readApiToken(cfg.gateway.dataDir)
  const ep = endpoint(cfg.http.host, live)
  return {
    base: ep.base,
    call: async (method, p, body, raw) => {
      const headers: Record<string, string> = { authorization: `Bearer ${token}` }
      if (raw) headers['content-type'] = raw.type
      else if (body) headers['content-type'] = 'application/json'
      const res = await request(ep, method, p, headers, raw ? raw.stream : body ? JSON.stringify(body) : undefined)
      try {
        return { status: res.status, body: res.text ? JSON.parse(res.text) : null }
      } catch {
        throw new Error(`${ep.base}${p} answered ${res.status} with something that is not the gateway's JSON: is another program on that port?`)
      }
    },
  }
}

/** The gateway's refusal of an API call, in one line: its message, and what to do about a 401. */
function refusal(r: { status: number; body: unknown }): string {
  const b = r.body as { error?: string; message?: string } | null
  const said = b?.message ?? b?.error ?? JSON.stringify(b)
  if (r.status === 401) {
    return `the gateway refused the API token (401): the CLI sends http.apiToken of the config, else the api-token file in gateway.dataDir; is -c the running gateway's config?`
  }
  return `the gateway answered ${r.status}: ${said}`
}

/**
 * `hash-password`: what goes into broker.apps[].passwordHash. The password comes from a prompt or
 * stdin, never argv (shell history, `ps`); only the hash is printed, on stdout, for scripts.
 */
async function hashPasswordCommand(rest: string[]): Promise<number> {
  if (rest.length) {
    process.stderr.write('hash-password takes no arguments: type the password at the prompt, or pipe it on stdin (a password on the command line would be in shell history and visible in ps)\n')
    return EXIT_USAGE
  }
  let password: string
  try {
    password = await readSecret('password')
  } catch (err) {
    process.stderr.write(`hash-password: ${(err as Error).message}\n`)
    return 1
  }
  const problem = passwordProblem(password)
  if (problem) {
    process.stderr.write(`hash-password: ${problem}\n`)
    return EXIT_USAGE
  }
  process.stdout.write(`${await hashPassword(password)}\n`)
  return 0
}

/** A secret from a prompt without echo (on a terminal), else the first line of stdin. */
async function readSecret(what: string): Promise<string> {
  const stdin = process.stdin
  if (!stdin.isTTY) {
    let text = ''
    stdin.setEncoding('utf8')
    for await (const chunk of stdin) text += chunk as string
    return text.split(/\r?\n/)[0]
  }
  const ask = async (prompt: string): Promise<string> => {
    const muted = new Writable({ write: (_c, _e, cb) => cb() })
    const rl = readline.createInterface({ input: stdin, output: muted, terminal: true })
    process.stderr.write(prompt)
    try {
      return await rl.question('')
    } finally {
      rl.close()
      process.stderr.write('\n')
    }
  }
  const first = await ask(`${what}: `)
  const again = await ask('again: ')
  if (first !== again) throw new Error('the two entries differ; nothing changed')
  return first
}

async function offlineDevices(sub: string, ref: DeviceRef, cfg: Config, secret: string | undefined, tags: string[] | undefined): Promise<Result> {
  const db = openDatabase(cfg.gateway.dataDir)
  try {
    const registry = new DeviceRegistry(db, cfg.gateway.dataDir, cfg.northbound.mode === 'devices')
    const missing: Result = { ok: false, status: 404, message: `no device ${ref.productId}/${ref.deviceId}` }
    switch (sub) {
      case 'list':
        return { ok: true, body: { devices: registry.list() } }
      case 'show': {
        const device = registry.get(ref)
        if (!device) return missing
        const connections = new ConnectionStore(db).list().filter((c) => c.productId === ref.productId && c.deviceId === ref.deviceId)
        return { ok: true, body: { device, online: null, connections } }
      }
      case 'add': {
        if (registry.get(ref)) return { ok: false, status: 409, message: `${ref.productId}/${ref.deviceId} already exists` }
        const r = await registry.add({ ...ref, secret, tags })
        return { ok: true, body: { device: r.device, secret: r.secret } }
      }
      case 'set-secret':
        if (!(await registry.setSecret(ref, secret!))) return missing
        return { ok: true, body: { device: registry.get(ref) } }
      case 'set-tags': {
        const d = registry.editTags(ref, tags!)
        return d ? { ok: true, body: { device: d } } : missing
      }
      case 'disable':
      case 'enable': {
        const d: Device | undefined = registry.setEnabled(ref, sub === 'enable')
        return d ? { ok: true, body: { device: d } } : missing
      }
      case 'remove':
        return registry.remove(ref) ? { ok: true, body: null } : missing
      default:
        return { ok: false, status: 400, message: `unknown subcommand ${sub}` }
    }
  } finally {
    db.close()
  }
}

// --- adapter tools (iothub-edge lorawan import) ---------------------------------------------

async function adapterTool(key: keyof typeof builtInAdapters, args: string[], values: Values, help = false): Promise<number> {
  const [name, ...rest] = args
  const mod = (await builtInAdapters[key].load()) as { adapterModule: AdapterModule<unknown> }
  const tools = mod.adapterModule.tools ?? {}
  const list = Object.values(tools).map((t) => `  iothub-edge ${key} ${t.usage}\n`).join('')
  if (help) {
    process.stdout.write(list ? `usage:\n${list}` : `${key} has no command-line tools\n`)
    return 0
  }
  const tool = name ? tools[name] : undefined
  if (!tool) {
    const names = Object.keys(tools).join(', ')
    if (!names) return usageError(undefined, `${key} has no command-line tools`)
    return usageError(key, name ? `${key}: unknown subcommand "${name}" (there is: ${names})` : `${key} needs a subcommand: ${names}`)
  }
  const foreign = Object.keys(values).find((k) => k !== 'config' && !(tool.options ?? []).includes(k))
  if (foreign) return usageError(key, `${key} ${name} does not take --${foreign}`)
  if (rest.length) return usageError(key, `${key} ${name}: unexpected argument "${rest[0]}"`)
  const cfg = readConfig(values.config as string | undefined)
  if (typeof cfg === 'number') return cfg
  const section = (cfg as unknown as Record<string, unknown>)[key]
  if (section === undefined) {
    process.stderr.write(`${key} ${name}: the config${values.config ? ` ${values.config}` : ''} has no \`${key}:\` section\n`)
    return EXIT_CONFIG
  }
  const mode = outputMode(values.json as boolean | undefined)
  try {
    return await tool.run({
      config: section,
      args: rest,
      options: values,
      registerChildren: (children) => registerChildren(cfg, children, values.create === true),
      report: (r) => process.stdout.write(mode.json ? json(r.json) : table(r.table.headers, r.table.rows)),
      err: (text) => process.stderr.write(text),
    })
  } catch (err) {
    process.stderr.write(`${key} ${name}: ${(err as Error).message}\n`)
    return 1
  }
}

/**
 * Children an adapter's tool found (LoRaWAN devices listed in ChirpStack): created through the running
 * gateway's API, or in the database when no gateway runs (under the data folder's lock, and never in
 * a new database without --create, as `devices add`).
 */
async function registerChildren(cfg: Config, children: { device: DeviceRef; tags: string[] }[], create: boolean): Promise<('created' | 'exists')[]> {
  const dataDir = cfg.gateway.dataDir
  const live = runningGateway(dataDir)
  const results: ('created' | 'exists')[] = []
  if (live) {
    if (live.httpPort === undefined) throw new Error(`a gateway (pid ${live.pid}) is using ${dataDir} and is still starting; try again in a moment`)
    const api = gatewayApi(cfg, { ...live, httpPort: live.httpPort })
    for (const c of children) {
      const r = await api.call('POST', '/api/devices', { ...c.device, tags: c.tags })
      if (r.status === 409) results.push('exists')
      else if (r.status < 300) results.push('created')
      else throw new Error(`the gateway refused ${c.device.productId}/${c.device.deviceId}: ${r.status} ${JSON.stringify(r.body)}`)
    }
    return results
  }
  if (!existsSync(path.join(dataDir, DB_FILE)) && !create) {
    throw new Error(`no gateway database in ${dataDir} (gateway.dataDir); check -c FILE, or pass --create to start a new one there`)
  }
  const foreign = rootOnForeignDataDir(dataDir, 'registering children')
  if (foreign) throw new Error(foreign)
  const lock = new DataDirLock(dataDir)
  lock.acquire()
  const db = openDatabase(dataDir)
  try {
    const registry = new DeviceRegistry(db, dataDir, cfg.northbound.mode === 'devices')
    for (const c of children) {
      if (registry.get(c.device)) results.push('exists')
      else {
        await registry.add({ ...c.device, tags: c.tags })
        results.push('created')
      }
    }
    return results
  } finally {
    db.close()
    lock.release()
  }
}

// --- status ----------------------------------------------------------------------------------

async function status(values: { config?: string; json?: boolean }): Promise<number> {
  const cfg = readConfig(values.config)
  if (typeof cfg === 'number') return cfg
  const live = runningGateway(cfg.gateway.dataDir)
  if (!live) {
    process.stderr.write(`no gateway is running on ${cfg.gateway.dataDir}${values.config ? '' : " (the built-in data folder: give the gateway's config with -c FILE)"}\n`)
    return EXIT_NOT_RUNNING
  }
  if (live.httpPort === undefined) {
    process.stderr.write(`a gateway (pid ${live.pid}) is using ${cfg.gateway.dataDir} and is still starting\n`)
    return EXIT_NOT_RUNNING
  }
  const api = gatewayApi(cfg, { ...live, httpPort: live.httpPort })
  let r: { status: number; body: unknown }
  try {
    r = await api.call('GET', '/api/health')
  } catch (err) {
    const cause = (err as Error & { cause?: Error }).cause?.message ?? (err as Error).message
    process.stderr.write(`the gateway (pid ${live.pid}) does not answer on ${api.base} (${cause}); check its log\n`)
    return EXIT_NOT_RUNNING
  }
  // 503 is the health of a degraded gateway, with the same body.
  if (r.status !== 200 && r.status !== 503) {
    process.stderr.write(`status: ${refusal(r)}\n`)
    return 1
  }
  const health = r.body as Parameters<typeof statusText>[2]
  process.stdout.write(outputMode(values.json).json ? json({ pid: live.pid, url: api.base, ...health }) : statusText(live.pid, api.base, health))
  return health.status === 'ok' ? 0 : EXIT_DEGRADED
}

// --- diagnostics -----------------------------------------------------------------------------

/** The running gateway's bundle (GET /api/diagnostics), written to a file: what support asks for first. */
async function diagnostics(values: { config?: string; output?: string }): Promise<number> {
  const cfg = readConfig(values.config)
  if (typeof cfg === 'number') return cfg
  const live = runningGateway(cfg.gateway.dataDir)
  if (live?.httpPort === undefined) {
    process.stderr.write(`diagnostics: no gateway is running (and answering) on ${cfg.gateway.dataDir}; start it, or send its log and config by hand\n`)
    return EXIT_NOT_RUNNING
  }
  let ep: Endpoint
  let res: Answer
  try {
    ep = endpoint(cfg.http.host, { ...live, httpPort: live.httpPort })
    res = await request(ep, 'GET', '/api/diagnostics', { authorization: `Bearer ${cfg.http.apiToken ?? readApiToken(cfg.gateway.dataDir)}` }, undefined, 30_000)
  } catch (err) {
    const cause = (err as Error & { cause?: Error }).cause?.message ?? (err as Error).message
    process.stderr.write(`diagnostics: the gateway (pid ${live.pid}) does not answer on port ${live.httpPort} (${cause}); check its log\n`)
    return EXIT_NOT_RUNNING
  }
  const body = res.bytes
  if (res.status !== 200) {
    process.stderr.write(`diagnostics: the gateway answered ${res.status}: ${res.text}\n`)
    return 1
  }
  const disposition = res.headers['content-disposition'] ?? ''
  const named = /filename="([^"/\\]+)"/.exec(disposition)?.[1] ?? 'iothub-edge-diagnostics.tar.gz'
  const out = values.output ?? named
  writeFileSync(out, body, { mode: 0o600 })
  process.stdout.write(`${out}\n`)
  return 0
}

// --- store -----------------------------------------------------------------------------------

/** `store ack`: through the running gateway's API, or on the data folder when none runs. */
async function storeCommand(args: string[], v: { config?: string }): Promise<number> {
  if (args[0] !== 'ack') return usageError('store', args[0] ? `store: unknown subcommand "${args[0]}" (there is: ack)` : 'store needs a subcommand: ack')
  const cfg = readConfig(v.config)
  if (typeof cfg === 'number') return cfg
  const dataDir = cfg.gateway.dataDir
  const live = runningGateway(dataDir)
  let acknowledged: boolean
  if (live) {
    if (live.httpPort === undefined) {
      process.stderr.write(`a gateway (pid ${live.pid}) is using ${dataDir} and is still starting; try again in a moment\n`)
      return EXIT_NOT_RUNNING
    }
    const r = await gatewayApi(cfg, { ...live, httpPort: live.httpPort }).call('POST', '/api/store/salvage/ack')
    if (r.status !== 200) {
      process.stderr.write(`store ack: ${refusal(r)}\n`)
      return 1
    }
    acknowledged = (r.body as { acknowledged: boolean }).acknowledged
  } else {
    const foreign = rootOnForeignDataDir(dataDir, 'store ack')
    if (foreign) {
      process.stderr.write(`${foreign}\n`)
      return 1
    }
    acknowledged = acknowledgeSalvage(dataDir)
  }
  process.stdout.write(acknowledged ? 'salvage acknowledged\n' : `nothing to acknowledge: no salvage of ${path.join(dataDir, 'gateway.db')} or broker.db is pending\n`)
  return 0
}

// --- history ---------------------------------------------------------------------------------

/**
 * `history export`: reads history.db directly (read-only; WAL lets it while the gateway writes), so
 * it works with the gateway stopped too.
 */
async function historyCommand(args: string[], v: { config?: string; device?: string; series?: string; from?: string; to?: string }): Promise<number> {
  if (args[0] !== 'export') return usageError('history', args[0] ? `history: unknown subcommand "${args[0]}" (there is: export)` : 'history needs a subcommand: export')
  if (!v.device || !/^[^/]+\/[^/]+$/.test(v.device)) return usageError('history', `history export needs --device PRODUCT/DEVICE${v.device ? `, not "${v.device}"` : ''}`)
  const cfg = readConfig(v.config)
  if (typeof cfg === 'number') return cfg
  const time = (s: string | undefined): number | undefined => (s === undefined ? undefined : /^\d+$/.test(s) ? Number(s) : Date.parse(s))
  const to = time(v.to) ?? Date.now()
  const from = time(v.from) ?? to - 86_400_000
  if (!Number.isFinite(from) || !Number.isFinite(to) || to <= from) {
    process.stderr.write('history export: --from and --to must be ISO dates or epoch milliseconds, --to after --from\n')
    return EXIT_USAGE
  }
  const file = path.join(cfg.gateway.dataDir, HISTORY_FILE)
  if (!existsSync(file)) {
    process.stderr.write(`history export: no ${file} (gateway.dataDir${v.config ? ` of ${v.config}` : ', built-in default ./data'}); is store.history.enabled on, and -c right?\n`)
    return 1
  }
  const [{ HistoryStore }, { csvLines }] = await Promise.all([import('./history/history-store.js'), import('./history/history-csv.js')])
  const db = openHistoryReadOnly(file)
  try {
    const store = new HistoryStore(db, cfg.store.history, Date.now, { reader: true })
    let out = ''
    for (const line of csvLines(store, { device: v.device, name: v.series, from, to })) {
      out += line + '\n'
      if (out.length > 1 << 16) {
        process.stdout.write(out)
        out = ''
      }
    }
    process.stdout.write(out)
  } finally {
    db.close()
  }
  return 0
}

// --- OTA: offline campaigns through the running gateway's API (docs/operators/ota.md) ---------

/** Each ota subcommand and the options it takes (`ota images --devices x` is refused, not ignored). */
const OTA_OPTIONS: Record<string, readonly string[]> = {
  images: ['config'],
  jobs: ['config'],
  upload: ['config', 'image-version', 'type'],
  push: ['config', 'devices', 'product', 'tags', 'expires', 'max-concurrent'],
}

async function ota(args: string[], v: { config?: string; 'image-version'?: string; type?: string; devices?: string; product?: string; tags?: string; expires?: string; 'max-concurrent'?: string }): Promise<number> {
  const [sub, arg] = args
  const subs = Object.keys(OTA_OPTIONS)
  if (!sub) return usageError('ota', `ota needs a subcommand: ${subs.join(', ')}`)
  if (!subs.includes(sub)) return usageError('ota', `ota: unknown subcommand "${sub}" (there are: ${subs.join(', ')})`)
  const foreign = optionNotTaken(v, OTA_OPTIONS[sub])
  if (foreign) return usageError('ota', `ota ${sub} does not take --${foreign}`)
  if (sub === 'upload' && !arg) return usageError('ota', 'ota upload needs the image FILE')
  if (sub === 'push' && !arg) return usageError('ota', 'ota push needs the IMAGE (its md5, as `ota images` lists it)')
  if ((sub === 'images' || sub === 'jobs') && arg) return usageError('ota', `ota ${sub}: unexpected argument "${arg}"`)
  // Everything the command line alone can get wrong is said before the gateway is asked.
  let send: () => Promise<{ status: number; body: unknown }>
  const cfg = readConfig(v.config)
  if (typeof cfg === 'number') return cfg
  let api: ReturnType<typeof gatewayApi> | undefined
  if (sub === 'images' || sub === 'jobs') {
    send = () => api!.call('GET', `/api/ota/${sub}`)
  } else if (sub === 'upload') {
    if (!v['image-version'] || !v.type) return usageError('ota', 'ota upload needs --image-version V and --type T (e.g. --type firmware)')
    try {
      if (!statSync(arg).isFile()) return usageError('ota', `ota upload: ${arg} is not a file`)
    } catch (err) {
      return usageError('ota', `ota upload: cannot read ${arg} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`)
    }
    const query = `version=${encodeURIComponent(v['image-version'])}&type=${encodeURIComponent(v.type)}`
    send = () => api!.call('POST', `/api/ota/images?${query}`, undefined, { type: 'application/octet-stream', stream: createReadStream(arg) })
  } else {
    const devices = (v.devices ?? '').split(',').filter(Boolean)
    if (devices.length === 0 && !(v.product && v.tags)) return usageError('ota', 'ota push needs --devices p/d,p/d or --product P --tags TAG')
    const expiresAt = v.expires === undefined ? undefined : Math.floor(Date.now() / 1000) + num(v.expires, 0, 'expires')
    const maxConcurrent = v['max-concurrent'] === undefined ? undefined : num(v['max-concurrent'], 0, 'max-concurrent')
    send = () => api!.call('POST', '/api/ota/jobs', { image: arg, devices, ...(v.product && v.tags ? { productId: v.product, tag: v.tags } : {}), expiresAt, maxConcurrent })
  }
  const live = runningGateway(cfg.gateway.dataDir)
  if (live?.httpPort === undefined) {
    process.stderr.write(`ota ${sub}: no gateway is running (and answering) on ${cfg.gateway.dataDir}; start it first\n`)
    return EXIT_NOT_RUNNING
  }
  api = gatewayApi(cfg, { ...live, httpPort: live.httpPort })
  const r = await send()
  if (r.status >= 400) {
    process.stderr.write(`ota ${sub}: ${refusal(r)}\n`)
    return 1
  }
  process.stdout.write(json(r.body))
  return 0
}

// --- tools -----------------------------------------------------------------------------------

function num(v: string | undefined, def: number, name: string): number {
  if (v === undefined) return def
  const n = Number(v)
  if (v.trim() === '' || !Number.isFinite(n) || n < 0) throw new UsageError(`--${name} must be a non-negative number, not "${v}"`)
  return n
}

function port(v: string | undefined, def: number, name: string): number {
  const n = num(v, def, name)
  if (!Number.isInteger(n) || n > 65535) throw new UsageError(`--${name} must be a port number (0-65535), not "${v}"`)
  return n
}

async function runSimulate(v: Values): Promise<number> {
  const qos = num(v.qos as string | undefined, 1, 'qos')
  if (qos !== 0 && qos !== 1) throw new UsageError('--qos must be 0 or 1')
  const options = {
    url: (v.url as string | undefined) ?? 'mqtt://127.0.0.1:1883',
    productId: (v.product as string | undefined) ?? 'sim',
    devices: num(v.devices as string | undefined, 10, 'devices'),
    rate: num(v.rate as string | undefined, 1, 'rate'),
    qos: qos as 0 | 1,
    payloadBytes: num(v['payload-bytes'] as string | undefined, 64, 'payload-bytes'),
    secretPrefix: (v['secret-prefix'] as string | undefined) ?? 'sim-secret-',
    durationS: num(v.duration as string | undefined, 60, 'duration'),
    connectRate: num(v['connect-rate'] as string | undefined, 500, 'connect-rate'),
    api: v.api ? { url: v.api as string, token: (v.token as string | undefined) ?? '' } : undefined,
  }
  if (!/^mqtts?:\/\//.test(options.url)) throw new UsageError(`--url must be mqtt://HOST:PORT or mqtts://..., not "${options.url}"`)
  if (options.api && !options.api.token) throw new UsageError('--api needs --token T (the gateway\'s API token: cat DATADIR/api-token)')
  const ac = new AbortController()
  process.once('SIGINT', () => ac.abort())
  process.once('SIGTERM', () => ac.abort())
  const { simulate } = await import('./tools/simulate.js')
  const stats = await simulate(options, ac.signal)
  process.stdout.write(JSON.stringify(stats) + '\n')
  if (stats.connected > 0) return 0
  process.stderr.write(
    `simulate: no device connected${stats.lastError ? ` (${stats.lastError})` : ''}; ` +
      `check --url, and that the devices ${options.productId}/sim-NNNNN are registered with the secrets --secret-prefix gives (--api URL --token T registers them)\n`,
  )
  return 1
}

async function runHubSim(v: Values): Promise<number | undefined> {
  const opts = {
    host: (v.host as string | undefined) ?? '127.0.0.1',
    mqttPort: port(v['mqtt-port'] as string | undefined, 1884, 'mqtt-port'),
    httpPort: port(v['http-port'] as string | undefined, 8091, 'http-port'),
    username: v.username as string | undefined,
    password: v.password as string | undefined,
  }
  if (!opts.username !== !opts.password) throw new UsageError('--username and --password go together (without both, anyone may log in)')
  const { HubSimServer } = await import('./tools/hub-sim-server.js')
  const server = new HubSimServer(opts)
  try {
    await server.start()
  } catch (err) {
    await server.stop().catch(() => undefined)
    throw err
  }
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host
  process.stdout.write(
    `hub-sim (a stand-in cloud hub for demos and tests, NOT a production hub)\n  MQTT  mqtt://${host}:${server.mqttPort}${opts.username ? ` (login ${opts.username})` : ' (anyone may log in)'}\n  HTTP  http://${host}:${server.httpPort}  (GET /stats, GET /uploads, POST /devices/{p}/{d}/commands, POST /devices/{p}/{d}/rpc, PUT /devices/{p}/{d}/shadow, PUT /devices/{p}/{d}/tags, POST /tags/{p}/{tag}/commands)\n`,
  )
  const stop = (): void => void server.stop().then(() => process.exit(0))
  process.once('SIGINT', stop)
  process.once('SIGTERM', stop)
  return undefined
}
