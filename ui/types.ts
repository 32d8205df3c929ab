// The API's shapes the app reads (docs/integrators/api.md). Only what the pages show.
export interface HealthReport {
  status: 'ok' | 'degraded'
  reasons: string[]
  northbound: {
    configured: boolean
    connected: boolean
    since: number | null
    downSince: number | null
    links: number
    linksConnected: number
    lastError: { at: number; code: string; reason: string | null; message: string } | null
    nextRetryAt: number | null
  }
  outbox: { messages: number; bytes: number; oldestAgeMs: number; maxBytes: number; drainRate: { last10s: number; last60s: number } }
  clock: { offsetMs: number; measuredAt: number | null }
  adapters: { name: string; kind: string; state: string; error?: string }[]
  history?: { enabled: boolean; state: string; bytes: number; series: number }
}

export interface OutboxStats {
  messages: number
  bytes: number
  oldestAgeMs: number
  maxBytes: number
  byPriority: Record<string, { messages: number; bytes: number }>
  dropped: Record<string, number>
}

export interface SystemInfo {
  version: string
  node: string
  uptimeSeconds: number
  cpu: { cores: number; load1: number; usagePercent: number }
  memory: { rss: number; heapUsed: number; systemTotal: number; systemFree: number }
  disk: { path: string; totalBytes: number; freeBytes: number }
}

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

export interface AlarmView {
  rule: string
  alarm: string
  productId: string
  deviceId: string
  state: 'raised' | 'cleared'
  value: unknown
  since: number
}

export interface LogLine {
  time: number
  level: number
  levelName?: string
  msg: string
  [field: string]: unknown
}
