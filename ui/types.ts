// The API's shapes the app reads (docs/integrators/api.md). Those the server declares come from
// its type-only files in src/ (`*-types.ts`, importing nothing Node-specific; esbuild erases them,
// `npm run check:boundaries` keeps it so); the rest are the JSON the routes build, only what the
// pages show.
export type { HealthReport, SystemInfo } from '../src/web/api-types.js'
export type { OutboxStats } from '../src/store/outbox-types.js'
export type { AlarmView, RuleStats } from '../src/rules/rule-types.js'
export type { Point as HistoryPoint } from '../src/history/history-types.js'
export type { LoraDiagnostics } from '../src/southbound/lorawan/diagnostics-types.js'
export type { OtaJobView } from '../src/ota/ota-types.js'

export interface DeviceRow {
  productId: string
  deviceId: string
  tags: string[]
  tagsVersion: number
  enabled: boolean
  hasSecret: boolean
  createdAt: number
  online: boolean
  lastSeen: number | null
  protocol?: string | null
  rssi?: number | null
  snr?: number | null
  battery?: number | null
  firmwareVersion?: string | null
  errors?: number
  queuedCommands?: number
}

export interface Command {
  id: number
  type: 'cmd' | 'rpc' | 'm2m'
  name: string
  requestId: string
  origin: string
  state: string
  reason: string | null
  createdAt: number
  updatedAt: number
  payload: string
  reply: string | null
}

export interface Uplink {
  productId?: string
  deviceId?: string
  messageId: string
  kind?: string
  /** upload_data's DataType; null for update_status and update_ota_status. */
  dataType: string | null
  ts: number
  payload: unknown
}

export interface LogLine {
  time: number
  level: number
  levelName?: string
  msg: string
  [field: string]: unknown
}
