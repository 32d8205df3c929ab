// The web API's health and system answers (GET /api/health, /api/system), as the CLI, scripts and
// the web app read them. Types only, importing only other type-only files (*-types.ts): the web
// app (ui/, a DOM project) names them too, and esbuild erases them from its bundle.
import type { HistoryHealth } from '../history/history-types.js'
import type { SalvageReport } from '../store/salvage-types.js'
import type { BridgeStatus } from '../core/link-types.js'

export interface AdapterHealth {
  name: string
  kind: 'native' | 'mapped'
  state: 'starting' | 'running' | 'failed' | 'stopped'
  /** Why it failed, with what to do (state 'failed'). */
  error?: string
}

export interface HealthReport {
  status: 'ok' | 'degraded'
  /** disk_full, outbox_near_quota, northbound_down, adapter_failed:<name>, broker_sessions_in_memory, ... */
  reasons: string[]
  northbound: BridgeStatus
  outbox: {
    messages: number
    bytes: number
    oldestAgeMs: number
    maxBytes: number
    /** Messages per second the hub acknowledged over the last 10 and 60 s. */
    drainRate: { last10s: number; last60s: number }
  }
  clock: { offsetMs: number; measuredAt: number | null }
  adapters: AdapterHealth[]
  /** The local history (absent when store.history.enabled is false). */
  history?: HistoryHealth
  /** A salvage of a damaged gateway.db (salvage) or broker.db (brokerSalvage) that no operator has acknowledged yet. */
  store?: { salvage?: SalvageReport; brokerSalvage?: SalvageReport }
}

export interface SystemInfo {
  version: string
  node: string
  /** Seconds since the gateway process started. */
  uptimeSeconds: number
  hostUptimeSeconds: number
  cpu: {
    cores: number
    load1: number
    /** The whole machine's CPU busy share since the previous read, 0-100. */
    usagePercent: number
    /** This process's CPU time since the previous read, as a share of one core, 0-100 per core. */
    processPercent: number
  }
  memory: { rss: number; heapUsed: number; systemTotal: number; systemFree: number }
  /** The data folder's file system; null fields when it cannot be read. */
  disk: { path: string; totalBytes: number | null; freeBytes: number | null }
  platform: string
  arch: string
}
