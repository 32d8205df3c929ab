// What the web layer needs of the rest of the gateway, and nothing more: the composition root
// (src/gateway.ts) builds this from the core and the stores. The web never imports the core's
// classes, so it can be built and tested with `inject()` against any implementation of this.
import type { FastifyPluginAsync } from 'fastify'
import type { Logger } from '../core/log.js'
import type { Command, DeviceRef } from '../core/types.js'
import type { ShadowDoc } from '../core/shadow-doc.js'
import type { ConnectionInfo } from '../store/connections.js'
import type { Device } from '../store/devices.js'
import type { OutboxStats } from '../store/outbox-types.js'
import type { SalvageReport } from '../store/salvage-types.js'
import type { StoredCommand } from '../store/commands.js'
import type { AlarmView, RuleStats } from '../rules/rule-types.js'
import type { HistoryEvent, SeriesInfo, SeriesQuery } from '../history/history-store.js'
import type { ExportRange } from '../history/history-csv.js'
import type { DeviceActivityView, RecentMessage } from '../live/device-activity.js'
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { UiAuthStore } from '../store/ui-auth.js'
import type { AdapterHealth, HealthReport } from './api-types.js'

export type { AdapterHealth, HealthReport } from './api-types.js'

export interface NewDevice {
  productId: string
  deviceId: string
  secret?: string
  tags?: string[]
  enabled: boolean
}

/** Device administration for the technician (registry plus what the core knows of the device). */
export interface DeviceAdmin {
  list(): readonly Device[]
  get(ref: DeviceRef): Device | undefined
  /** Rejects with `{code: 'EXISTS'}` when the device exists. The secret is returned this once. */
  add(d: NewDevice): Promise<{ device: Device; secret?: string }>
  setEnabled(ref: DeviceRef, enabled: boolean): void
  setSecret(ref: DeviceRef, secret: string): Promise<void>
  /** Replaces the device's tags (the next tags_version); undefined when there is no such device. */
  setTags(ref: DeviceRef, tags: string[]): Promise<Device | undefined>
  /** False when there was no such device. */
  remove(ref: DeviceRef): boolean
  connections(ref: DeviceRef): ConnectionInfo[]
  /** Whether an adapter is the route to the device right now. */
  online(ref: DeviceRef): boolean
  /** When the gateway last heard from the device (ms): a message, a connect or a disconnect; null if never. */
  lastSeen(ref: DeviceRef): number | null
  shadow(ref: DeviceRef): ShadowDoc
  /** Radio, battery, firmware, error counts and protocol from what the device sent since the start (src/live). */
  activity?(ref: DeviceRef): DeviceActivityView
  /** Its last uplinks, newest first. */
  messages?(ref: DeviceRef, limit?: number): RecentMessage[]
  /** Commands waiting for their device (queued or held), by `p/d`. */
  waitingCommands?(): Map<string, number>
}

export type SendOutcome = 'queued' | 'duplicate' | 'expired' | 'rpc_sent' | 'rpc_offline'

/** The technician's commands: sent with origin 'local', so replies stay on the gateway. */
export interface CommandDesk {
  history(ref: DeviceRef, limit?: number): StoredCommand[]
  send(cmd: Command): SendOutcome
  waitForReply(ref: DeviceRef, requestId: string, timeoutMs: number): Promise<Buffer | undefined>
}

/**
 * A route plugin an adapter contributes: in `adapterRoutes` mounted under /api/adapters/{adapter}/
 * behind the token; in `deviceRoutes` mounted under /devices/ without it (the plugin authenticates
 * devices with their own credentials).
 */
export interface ServiceRoutes {
  prefix: string
  api?: FastifyPluginAsync
  files?: FastifyPluginAsync
}

export interface AdapterRoutes {
  adapter: string
  plugin: FastifyPluginAsync
}

/** The local history's queries (src/history): what exists, ranges downsampled, events, CSV. */
export interface HistoryReader {
  series(device?: string): { series: SeriesInfo[]; rejected: { device: string; count: number; lastName: string; lastAt: number }[] }
  find(id: number): SeriesInfo | undefined
  findByName(device: string, name: string): SeriesInfo | undefined
  query(series: SeriesInfo, from: number, to: number, points: number): SeriesQuery
  events(device: DeviceRef, from: number, to: number, limit: number): HistoryEvent[]
  csv(range: ExportRange): Iterable<string>
}

export interface WebDeps {
  log: Logger
  /** The bearer token every /api route except /api/health requires. */
  apiToken: string
  /** Where the token is, for the 401 message: the file's path, or the config key. */
  apiTokenWhere?: string
  health(): HealthReport
  /** Prometheus exposition of every metric (the core's and the adapters'). */
  metrics(): Promise<{ contentType: string; body: string }>
  outboxStats(): OutboxStats
  devices: DeviceAdmin
  commands: CommandDesk
  adapterRoutes: readonly AdapterRoutes[]
  /** Device-facing routes (HTTP ingest), under /devices/, outside /api and not behind the token. */
  deviceRoutes?: readonly AdapterRoutes[]
  /** Absent when the history is off (store.history.enabled: false). */
  history?: HistoryReader
  /**
   * Routes of a gateway service (the OTA relay): `api` under /api/{prefix}/ behind the token;
   * `files` under /{prefix}/ without it (devices fetch with an unguessable URL of their own).
   */
  serviceRoutes?: readonly ServiceRoutes[]
  /** How long `POST .../commands` with `rpc: true` waits for the reply; 5 s when not given. */
  rpcWaitMs?: number
  /** The local rules: their counters and last errors, and the alarms they keep (none when no rules are configured). */
  rules?: RulesView
  /** The technician web app's build folder (index.html, assets/); absent: no app is served. */
  uiDir?: string
  /** The live stream's fan-out (GET /api/events). */
  live?: LiveStream
  /** The recent log lines (GET /api/logs, the diagnostics bundle). */
  logs?: LogReader
  /** What the system page and the diagnostics bundle tell besides health and metrics. */
  support?: SupportInfo
  /** The web UI's login: users, sessions, API tokens (src/web/auth-service.ts). Absent: bearer token only. */
  ui?: UiAuthDeps
}

/** What the UI's login needs: its tables, where the setup code file is, the session policy. */
export interface UiAuthDeps {
  store: Pick<UiAuthStore, keyof UiAuthStore>
  /** Where the setup code file (ui-setup-code) is. */
  dataDir: string
  idleTimeoutSeconds: number
  maxLifetimeSeconds: number
  /** The cookie's Secure attribute: on when the server speaks TLS. */
  secureCookie: boolean
  /** A refused login or setup, by reason (bad_credentials, bad_setup_code, rate_limited): a metric. */
  countFailure?(reason: 'bad_credentials' | 'bad_setup_code' | 'rate_limited'): void
  /** The clock (tests). */
  now?: () => number
}

/** The live stream's fan-out (src/web/live-hub.ts is the one there is). */
export interface LiveStream {
  /** Whether another client may connect. */
  readonly full: boolean
  /** Take over a response as a stream client; `stillValid`, checked at each ping, ends the stream when false. */
  attach(req: IncomingMessage, res: ServerResponse, stillValid?: () => boolean): void
  /** End every stream (the server closes). */
  close(): void
}

export interface LogReader {
  /** The newest `limit` lines at `minLevel` (pino's number) or above, oldest first, as logged (JSON text). */
  lines(minLevel: number, limit: number): string[]
}

export interface SupportInfo {
  version: string
  /** The data folder: its disk's size and free space. */
  dataDir: string
  /** The config as running, every secret replaced; `secrets` are the values replaced (scrubbed from the whole bundle too). */
  redactedConfig(): { config: unknown; secrets: string[] }
}

export interface RulesView {
  list(): RuleStats[]
  alarms(): AlarmView[]
}
