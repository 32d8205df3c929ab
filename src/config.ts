// The one configuration schema. Defaults live here; docs/configuration.md is generated from it
// (npm run docs:config). Validation reports every problem with its key path, then the result is
// frozen so no component can change settings behind another's back.
import { accessSync, constants as fsConstants, readFileSync, statfsSync, statSync, mkdirSync } from 'node:fs'
import path from 'node:path'
import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { Ajv, type ErrorObject } from 'ajv'
import YAML from 'yaml'
import { ID_PATTERN, ID_RULE } from './core/hub-topics.js'
import { HistorySchema } from './history/schema.js'
import { OtaSchema } from './ota/schema.js'
import { adapterConfigProperties, adapterEntries, type KeyedAdapterEntry } from './southbound/registry.js'
import { RuleActionSchema, RulesSchema } from './rules/schema.js'
import { compileRules } from './rules/compile.js'

const Id = Type.String({ pattern: ID_PATTERN, description: ID_RULE })

const DeviceSeed = Type.Object(
  {
    productId: Id,
    deviceId: Id,
    secret: Type.Optional(Type.String({ minLength: 1, description: 'the device password (hashed at rest)' })),
    tags: Type.Array(Type.String(), { default: [] }),
    enabled: Type.Boolean({ default: true }),
  },
  { additionalProperties: false },
)

const rootProperties = {
    gateway: Type.Object(
      {
        id: Type.String({ default: 'gw-01', description: 'name of this gateway in logs and metrics' }),
        dataDir: Type.String({ default: './data', description: "where the database, keys and token live; a relative path is relative to the config file's folder (to the working directory when started without a config file)" }),
        productId: Type.String({ default: 'gateways', pattern: ID_PATTERN, description: "the gateway's own ProductId at the hub" }),
        deviceId: Type.String({ default: 'gw-01', pattern: ID_PATTERN, description: "the gateway's own DeviceId at the hub" }),
        secret: Type.Optional(Type.String({ description: "the gateway's own Secret at the hub (default northbound password)" })),
      },
      { additionalProperties: false, default: {}, description: "the gateway's own identity at the hub, and where it keeps its data" },
    ),
    // Each southbound adapter's own section (src/southbound/registry.ts).
    ...adapterConfigProperties,
    http: Type.Object(
      {
        host: Type.String({ default: '0.0.0.0', description: 'address to bind the HTTP API' }),
        port: Type.Integer({ default: 8090, minimum: 0, maximum: 65535, description: 'REST API and metrics (ChirpStack uses 8080)' }),
        apiToken: Type.Optional(Type.String({ minLength: 16, description: 'bearer token for /api; generated into {dataDir}/api-token when absent' })),
        session: Type.Object(
          {
            idleTimeoutSeconds: Type.Integer({ default: 1800, minimum: 1, description: 'a web UI session ends after this long without anything the user did (a page refreshing itself, or its live stream, does not count)' }),
            maxLifetimeSeconds: Type.Integer({ default: 43_200, minimum: 1, description: 'a web UI session ends this long after its login, used or not' }),
          },
          { additionalProperties: false, default: {}, description: 'web UI login sessions (cookie iothub_session); docs/operators/ui-login.md' },
        ),
        tls: Type.Optional(
          Type.Object(
            {
              cert: Type.Optional(Type.String({ description: 'PEM certificate (chain) file; with key' })),
              key: Type.Optional(Type.String({ description: 'PEM private key file; with cert' })),
              selfSigned: Type.Boolean({
                default: false,
                description: 'without cert/key: make a self-signed certificate into {dataDir}/ui-tls-cert.pem (key ui-tls-key.pem, 0600) at the first start and reuse it; its SHA-256 fingerprint is logged at each start',
              }),
            },
            { additionalProperties: false, description: 'serve the web UI and API over https (default: plain http); docs/decisions/0018-ui-login.md' },
          ),
        ),
      },
      { additionalProperties: false, default: {}, description: 'REST API, web UI, health and Prometheus metrics' },
    ),
    northbound: Type.Object(
      {
        url: Type.Optional(Type.String({ pattern: '^mqtts?://', description: 'the cloud hub broker; absent = no cloud link, data waits in the outbox' })),
        mode: Type.Union([Type.Literal('gateway'), Type.Literal('devices')], {
          default: 'gateway',
          description: "gateway: one connection with the gateway's credentials; devices: one connection per child with its own",
        }),
        username: Type.Optional(Type.String({ description: 'default {gateway.productId}/{gateway.deviceId}' })),
        password: Type.Optional(Type.String({ description: 'default gateway.secret' })),
        clientId: Type.Optional(Type.String({ description: 'default {username}/edge' })),
        tls: Type.Optional(
          Type.Object(
            {
              ca: Type.Optional(Type.String()),
              cert: Type.Optional(Type.String()),
              key: Type.Optional(Type.String()),
              rejectUnauthorized: Type.Boolean({ default: true, description: 'verify the hub certificate (leave on)' }),
            },
            { additionalProperties: false, description: 'TLS towards the hub (mqtts://): CA, client certificate and key files' },
          ),
        ),
        keepalive: Type.Integer({ default: 60, minimum: 5, description: 'MQTT keepalive towards the hub, seconds' }),
        inflight: Type.Integer({ default: 1000, minimum: 1, maximum: 65535, description: 'QoS 1 messages in flight to the hub per connection (and at most 4 MiB of them, however many)' }),
        maxRate: Type.Number({ default: 0, minimum: 0, description: 'messages per second towards the hub, 0 = unlimited' }),
        degradedAfterSeconds: Type.Integer({
          default: 300,
          minimum: 0,
          description: '/api/health turns degraded (reason northbound_down) once the hub has been out of reach this long; 0 = never',
        }),
        subscribePerProduct: Type.Boolean({
          default: false,
          description: "gateway mode: subscribe children's command topics with one `+` per product instead of one set per device (when the hub's ACL allows it)",
        }),
      },
      { additionalProperties: false, default: {}, description: 'the link to the cloud IoTHub' },
    ),
    store: Type.Object(
      {
        outbox: Type.Object(
          {
            maxBytes: Type.Optional(Type.Integer({ minimum: 4096, description: 'outbox quota; default: half the space the store can use (free space of the data folder plus the database), measured at start, never lower than at an earlier start' })),
            rpcRespTtlSeconds: Type.Integer({ default: 10, minimum: 1, description: 'rpc_resp older than this is dropped (the hub stopped waiting)' }),
          },
          { additionalProperties: false, default: {}, description: 'the durable store-and-forward queue towards the hub' },
        ),
        commands: Type.Object(
          {
            seenTtlSeconds: Type.Integer({
              default: 86_400,
              minimum: 60,
              description: 'how long a RequestId from the hub is remembered, so a redelivery is not executed twice (also across restarts)',
            }),
          },
          { additionalProperties: false, default: {}, description: 'commands from the hub' },
        ),
        history: HistorySchema,
      },
      { additionalProperties: false, default: {}, description: 'the SQLite store in gateway.dataDir' },
    ),
    ota: OtaSchema,
    devices: Type.Array(DeviceSeed, { default: [], description: 'seeds the device registry; the API and CLI own a device after it exists' }),
    rules: RulesSchema,
    log: Type.Object(
      {
        level: Type.Union(
          ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)),
          { default: 'info', description: 'pino log level' },
        ),
        format: Type.Optional(
          Type.Union([Type.Literal('json'), Type.Literal('pretty')], {
            description:
              'json: one JSON object per line; pretty: ISO time, level name, message and fields on one line. Default: pretty when stdout is a terminal, json otherwise. Under systemd every line starts with its syslog priority, so `journalctl -p warning` works',
          }),
        ),
      },
      { additionalProperties: false, default: {}, description: 'logging' },
    ),
}

export const ConfigSchema = Type.Object(rootProperties, { additionalProperties: false, default: {} })

export type Config = Static<typeof ConfigSchema>
export type DeviceSeedConfig = Static<typeof DeviceSeed>

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(problems.join('\n'))
    this.name = 'ConfigError'
  }
}

type Validate = ReturnType<Ajv['compile']>
// Compiled on first use: compiling takes a good part of a second on a small box, and commands
// that read no config (--version, --help) should not pay for it. Held only weakly, with an Ajv of
// its own: the gateway reads its config once, and the compiled validator (about 2 MB of heap) is
// then garbage for the rest of the run (docs/performance.md, "Memory"); a later parse soon after
// (tests, check-config) finds it still there.
let validateBuiltIn: WeakRef<Validate> | undefined
const compileConfig = (schema: TSchema): Validate => new Ajv({ allErrors: true, useDefaults: true, strict: false, verbose: true }).compile(schema)
function builtInValidator(): Validate {
  let validate = validateBuiltIn?.deref()
  if (!validate) validateBuiltIn = new WeakRef((validate = compileConfig(ConfigSchema)))
  return validate
}

/** The root schema with further adapters' sections (tests register their own adapters). */
export function configSchemaWith(extra: readonly KeyedAdapterEntry[]): TSchema {
  if (extra.length === 0) return ConfigSchema
  return Type.Object({ ...rootProperties, ...Object.fromEntries(extra.map((e) => [e.key, e.configSchema])) }, { additionalProperties: false, default: {} })
}

// Ajv messages are generic; a few keys deserve one that says what to do.
const friendly: Record<string, string> = {
  'northbound.url': 'must be mqtt:// or mqtts://',
}

function keyPath(err: ErrorObject): string {
  const parts = err.instancePath.split('/').filter(Boolean)
  if (err.keyword === 'additionalProperties') parts.push(String(err.params.additionalProperty))
  if (err.keyword === 'required') parts.push(String(err.params.missingProperty))
  return parts.map((p) => (/^\d+$/.test(p) ? `[${p}]` : p)).join('.').replace(/\.\[/g, '[') || '(root)'
}

/** Edit distance (insertions, deletions, substitutions, swapped neighbours), for "did you mean". */
function distance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)))
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1))
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1)
    }
  }
  return d[a.length][b.length]
}

/** The key of the same object a mistyped one most likely meant (`datadir`, `dataDirr`: dataDir). */
function meant(unknown: string, parent: TSchema | undefined): string | undefined {
  const known = Object.keys((parent as { properties?: Record<string, unknown> } | undefined)?.properties ?? {})
  const lower = unknown.toLowerCase()
  let best: { key: string; d: number } | undefined
  for (const key of known) {
    const d = key.toLowerCase() === lower ? 0 : distance(lower, key.toLowerCase())
    if (!best || d < best.d) best = { key, d }
  }
  return best && best.d <= Math.max(1, Math.floor(unknown.length / 3)) ? best.key : undefined
}

const kindOf = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'a list' : typeof v === 'object' ? 'a mapping' : `a ${typeof v}`)

function describe(err: ErrorObject): string {
  const key = keyPath(err)
  if (err.keyword === 'additionalProperties') {
    const guess = meant(String(err.params.additionalProperty), err.parentSchema as TSchema | undefined)
    return `${key}: unknown key (${guess ? `did you mean ${guess}? ` : ''}check the spelling against docs/configuration.md)`
  }
  // The value's kind, never the value itself: a secret typed as a number must not be echoed.
  if (err.keyword === 'type') {
    if (key === '(root)') return `(root): the file must be a YAML mapping of sections (gateway:, broker:, ...), not ${kindOf(err.data)}`
    return `${key}: ${err.message ?? 'is invalid'}, not ${kindOf(err.data)}`
  }
  if (err.keyword === 'pattern' && friendly[key]) return `${key}: ${friendly[key]}`
  if (err.keyword === 'pattern' && /^broker\.apps\[\d+\]\.username$/.test(key)) {
    return `${key}: must be 1-64 of [A-Za-z0-9_.@-], without "/" (a user name with "/", {ProductId}/{DeviceId}, is a device's)`
  }
  if (/^rules\[\d+\]\.actions\[\d+\]$/.test(key) && ['minProperties', 'maxProperties', 'type'].includes(err.keyword)) {
    return `${key}: one action per list item, an object with exactly one key: ${Object.keys(RuleActionSchema.properties).join(', ')}`
  }
  if (err.keyword === 'anyOf' || err.keyword === 'enum') {
    return `${key}: must be one of ${JSON.stringify(allowed(err.parentSchema as TSchema))}`
  }
  return `${key}: ${err.message ?? 'is invalid'}`
}

function allowed(schema: TSchema | undefined): unknown[] {
  const anyOf = (schema as { anyOf?: { const: unknown }[] } | undefined)?.anyOf
  return anyOf ? anyOf.map((s) => s.const) : []
}

/** Validate a parsed document, fill defaults, and apply cross-key rules. Throws ConfigError. */
export function parseConfig(doc: unknown, baseDir = process.cwd(), extraAdapters: readonly KeyedAdapterEntry[] = []): Config {
  const input = doc == null ? {} : structuredClone(doc)
  const validate = extraAdapters.length ? compileConfig(configSchemaWith(extraAdapters)) : builtInValidator()
  if (!validate(input)) {
    const errors = (validate.errors ?? []).filter((e) => e.keyword !== 'if')
    // For union (anyOf) failures Ajv also reports every branch; keep only the summary line.
    const anyOfPaths = new Set(errors.filter((e) => e.keyword === 'anyOf').map((e) => e.instancePath))
    const lines = errors
      .filter((e) => e.keyword === 'anyOf' || !anyOfPaths.has(e.instancePath))
      .map(describe)
    throw new ConfigError([...new Set(lines)])
  }
  const cfg = input as Config
  const problems: string[] = []
  const seen = new Set<string>()
  cfg.devices.forEach((d, i) => {
    const key = `${d.productId}/${d.deviceId}`
    if (seen.has(key)) problems.push(`devices[${i}]: duplicate device ${key}`)
    seen.add(key)
    if (cfg.northbound.mode === 'devices' && !d.secret) {
      problems.push(`devices[${i}].secret: required when northbound.mode is "devices" (each child connects with its own secret)`)
    }
  })
  const httpTls = cfg.http.tls
  if (httpTls && !httpTls.selfSigned && !(httpTls.cert && httpTls.key)) problems.push('http.tls: set both cert and key (PEM files), or selfSigned: true')
  if (httpTls?.selfSigned && (httpTls.cert || httpTls.key)) problems.push('http.tls: either cert and key, or selfSigned: true, not both')
  for (const e of adapterEntries(extraAdapters)) {
    const section = (cfg as Record<string, unknown>)[e.key]
    if (section !== undefined && e.check) problems.push(...e.check(section as never))
  }
  // Every CEL expression compiled now: a wrong one stops the start with its key path (exit 78).
  problems.push(...compileRules(cfg.rules).problems)
  if (problems.length) throw new ConfigError(problems)
  // Paths in the file are the file's own: relative to its folder, wherever the command runs from
  // (the unit's, a technician's shell, a test's working directory).
  cfg.gateway.dataDir = path.resolve(baseDir, cfg.gateway.dataDir)
  for (const f of namedFiles(cfg)) f.set(path.resolve(baseDir, f.file))
  return deepFreeze(cfg)
}

export function loadConfig(file?: string, extraAdapters: readonly KeyedAdapterEntry[] = []): Config {
  if (!file) return parseConfig({}, process.cwd(), extraAdapters)
  let text: string
  try {
    text = readFileSync(file, 'utf8')
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    const abs = path.resolve(file)
    const why =
      code === 'ENOENT'
        ? `there is no such file${abs !== file ? ` (${abs})` : ''}`
        : code === 'EACCES'
          ? `not readable by this user (uid ${process.getuid?.() ?? '?'}): run the command as root or as the gateway's user (sudo -u iothub-edge iothub-edge ...)`
          : code === 'EISDIR'
            ? 'it is a folder; give the config file in it'
            : (err as Error).message
    throw new ConfigError([`${file}: cannot read: ${why}`])
  }
  let doc: unknown
  try {
    doc = YAML.parse(text)
  } catch (err) {
    throw new ConfigError([`${file}: not valid YAML (${(err as Error).message.split('\n')[0]})`])
  }
  // Relative to the file, not to wherever the command was run from: `devices add -c /etc/...` run
  // from a home folder must find the gateway's database, not create a second one there.
  return parseConfig(doc, path.dirname(path.resolve(file)), extraAdapters)
}

const TLS_FILE_KEYS = new Set(['ca', 'cert', 'key'])

interface NamedFile {
  key: string
  file: string
  /** A TLS file stops the start; without a codec file the start goes on (its payloads go up raw). */
  kind: 'tls' | 'codec'
  /** Replaces the path in the (not yet frozen) config. */
  set(file: string): void
}

/**
 * The files a config names, with their key paths: TLS CA, certificate and key of the broker's
 * listeners, of the hub link and of any adapter's `tls` section, and LoRaWAN codec files (`codec:
 * /path`). One rule for every section, so an adapter's `tls` is covered without listing it here.
 */
function namedFiles(cfg: unknown): NamedFile[] {
  const found: NamedFile[] = []
  const walk = (node: unknown, key: string): void => {
    if (Array.isArray(node)) return node.forEach((v, i) => walk(v, `${key}[${i}]`))
    if (!node || typeof node !== 'object') return
    const obj = node as Record<string, unknown>
    for (const [k, v] of Object.entries(obj)) {
      const at = key ? `${key}.${k}` : k
      const kind = typeof v !== 'string' ? undefined : key.endsWith('tls') && TLS_FILE_KEYS.has(k) ? 'tls' : k === 'codec' && v.startsWith('/') ? 'codec' : undefined
      if (kind) found.push({ key: at, file: v as string, kind, set: (f) => (obj[k] = f) })
      else walk(v, at)
    }
  }
  walk(cfg, '')
  return found
}

/**
 * One line per file the config names (see namedFiles) that is not there or not readable by this
 * user, with its key path: TLS files (problems: the start cannot work without them) or codec files
 * (warnings). Relative paths were resolved against the config file's folder.
 */
export function fileProblems(cfg: Config, kind: NamedFile['kind'] = 'tls'): string[] {
  const problems: string[] = []
  for (const { key, file } of namedFiles(cfg).filter((f) => f.kind === kind)) {
    try {
      accessSync(file, fsConstants.R_OK)
      if (!statSync(file).isFile()) problems.push(`${key}: ${file} is not a file`)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      const why = code === 'ENOENT' ? 'does not exist' : code === 'EACCES' ? `is not readable by this user (uid ${process.getuid?.() ?? '?'})` : `cannot be read (${code})`
      problems.push(`${key}: ${file} ${why}`)
    }
  }
  return problems
}

/** Every `url` key of any section (the hub, ChirpStack's broker, ...) whose URL carries a user or password. */
function urlsWithCredentials(cfg: unknown): { key: string; section: string }[] {
  const found: { key: string; section: string }[] = []
  const walk = (node: unknown, key: string): void => {
    if (Array.isArray(node)) return node.forEach((v, i) => walk(v, `${key}[${i}]`))
    if (!node || typeof node !== 'object') return
    for (const [k, v] of Object.entries(node)) {
      const at = key ? `${key}.${k}` : k
      if (k === 'url' && typeof v === 'string' && URL.canParse(v)) {
        const u = new URL(v)
        if (u.username || u.password) found.push({ key: at, section: key })
      } else walk(v, at)
    }
  }
  walk(cfg, '')
  return found
}

/** Settings that start but are most likely not what the operator wants; one line each, key first. */
export function configWarnings(cfg: Config): string[] {
  const warnings = fileProblems(cfg, 'codec').map((p) => `${p}: its devices' payloads go up undecoded until it is fixed and the gateway restarted`)
  for (const { key, section } of urlsWithCredentials(cfg)) {
    warnings.push(`${key}: holds credentials (user:password@host): they show in process listings and support bundles; use ${section}.username and ${section}.password instead`)
  }
  // An internal listener checks no login and no ACL: fine on 127.0.0.1, open to anyone anywhere else.
  const listeners = (cfg as { broker?: { listeners: { host: string; port: number; zone: string }[] } }).broker?.listeners ?? []
  listeners.forEach((l, i) => {
    if (l.zone !== 'internal' || l.host === 'localhost' || l.host === '::1' || l.host.startsWith('127.')) return
    warnings.push(
      `broker.listeners[${i}]: an internal listener (no login, no ACL) on ${l.host}:${l.port}: anyone who reaches it may publish and subscribe to everything, the hub's topics included; ` +
        'bind it to 127.0.0.1, or give LAN applications accounts on an external listener (broker.apps, docs/operators/local-apps.md)',
    )
  })
  const nb = cfg.northbound
  if (!nb.url) return warnings
  let url: URL | undefined
  try {
    url = new URL(nb.url)
  } catch {
    // the schema's pattern let it through; the connection will say what is wrong
  }
  const defaults = rootProperties.gateway.properties
  const defaultIdentity = cfg.gateway.productId === defaults.productId.default && cfg.gateway.deviceId === defaults.deviceId.default
  const hasSecret = !!(nb.password ?? cfg.gateway.secret) || !!url?.password || !!nb.tls?.cert
  if (nb.mode === 'gateway' && !hasSecret) {
    warnings.push(
      `gateway.secret: not set (nor northbound.password, nor a client certificate) while northbound.url is: the hub will refuse the gateway; set the gateway's Secret at the hub`,
    )
  }
  // With a secret, gateways/gw-01 may well be its real identity at the hub; without one it is unconfigured.
  if (defaultIdentity && !hasSecret) {
    warnings.push(
      `gateway.deviceId: still the default ${defaults.productId.default}/${defaults.deviceId.default} while northbound.url is set: every gateway installed this way logs in to the hub as the same device; set gateway.productId and gateway.deviceId to this gateway's own identity`,
    )
  }
  return warnings
}

/**
 * Outbox quota: configured, or half the space the store can use, measured at start: the free space
 * of the data folder's filesystem plus what the database already occupies. Counting the database
 * matters after a restart on a nearly full disk: measured on free space alone, the quota would
 * shrink to nothing and evict what was acknowledged before the restart.
 */
export function outboxQuota(cfg: Config): number {
  if (cfg.store.outbox.maxBytes) return cfg.store.outbox.maxBytes
  mkdirSync(cfg.gateway.dataDir, { recursive: true })
  const fs = statfsSync(cfg.gateway.dataDir)
  let stored = 0
  for (const f of ['gateway.db', 'gateway.db-wal']) {
    try {
      stored += statSync(path.join(cfg.gateway.dataDir, f)).size
    } catch {
      // not created yet
    }
  }
  return Math.max(4096, Math.floor((fs.bavail * fs.bsize + stored) / 2))
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    Object.freeze(o)
    for (const v of Object.values(o)) deepFreeze(v)
  }
  return o
}
