// The local history as an observer of the pipeline: it is handed each group commit of the outbox
// (after it is durable, never inside its transaction), keeps a reference and returns; a timer
// writes what gathered, in batches, to history.db. When it falls behind it sheds whole batches and
// counts them: devices are never held up for the history. It also records device events (sessions
// from `$connection`, commands and replies), transport metadata and the gateway's own vitals.
import { statfsSync } from 'node:fs'
import { Counter, Gauge, type Registry } from 'prom-client'
import type { Logger } from '../core/log.js'
import { RateLimitedLog } from '../core/log.js'
import { ErrorCodes } from '../core/errors.js'
import type { DeviceEvent, PipelineObserver } from '../core/observers.js'
import type { Uplink } from '../core/types.js'
import { deviceKey } from '../core/types.js'
import { isCorrupt, openHistoryDb, quarantine, type HistoryDb } from './history-db.js'
import { HistoryStore, MINUTE, type HistoryEvent, type Sample } from './history-store.js'
import { payloadLeaves } from './payload-leaves.js'
import type { HistoryConfig } from './schema.js'

// Batches are written this often; at most this many uplinks per turn of the event loop.
const FLUSH_MS = 1_000
const CHUNK = 5_000
const MAINTAIN_MS = 10 * MINUTE

export interface HistoryDeps {
  dataDir: string
  config: HistoryConfig
  log: Logger
  registry: Registry
  /** The gateway's own device key: its vitals are recorded under it. */
  gateway: string
  /** Vitals the composition root knows (outbox depth and age, hub link); the recorder adds CPU, memory, disk. */
  vitals: () => Record<string, number>
  now?: () => number
}

export interface HistoryHealth {
  enabled: boolean
  state: 'ok' | 'recreated' | 'failed'
  /** Where an unusable history.db was moved, and why. */
  quarantined?: { file: string; error: string }
  bytes: number
  series: number
  shed: number
  seriesRejected: number
}

export class HistoryRecorder implements PipelineObserver {
  private db?: HistoryDb
  private store?: HistoryStore
  private pending: (readonly Uplink[])[] = []
  private pendingCount = 0
  private events: HistoryEvent[] = []
  private extra: Sample[] = []
  private flushTimer?: NodeJS.Timeout
  private vitalsTimer?: NodeJS.Timeout
  private maintainTimer?: NodeJS.Timeout
  private state: HistoryHealth['state'] = 'ok'
  private quarantined?: HistoryHealth['quarantined']
  private readonly warn: RateLimitedLog
  private readonly lastFcnt = new Map<string, number>()
  private committedSinceVitals = 0
  private lastVitals?: { at: number; cpu: NodeJS.CpuUsage; depth: number }
  private shedTotal = 0
  private rejectedTotal = 0
  private readonly now: () => number
  private readonly m: {
    samples: Counter
    shed: Counter
    rejected: Counter
    dropped: Counter<'reason'>
    failures: Counter
    bytes: Gauge
    series: Gauge
  }

  constructor(private readonly d: HistoryDeps) {
    this.now = d.now ?? Date.now
    this.warn = new RateLimitedLog(d.log)
    const registers = [d.registry]
    this.m = {
      samples: new Counter({ name: 'iothub_edge_history_samples_total', help: 'Samples written to the local history', registers }),
      shed: new Counter({ name: 'iothub_edge_history_shed_total', help: 'Uplinks the history skipped because it was behind (the outbox was never held up)', registers }),
      rejected: new Counter({ name: 'iothub_edge_history_series_rejected_total', help: 'Samples refused because their device reached store.history.maxSeriesPerDevice', registers }),
      dropped: new Counter({
        name: 'iothub_edge_history_tables_dropped_total',
        help: 'History tables dropped whole, by reason: expiry (retention) or quota (store.history.maxBytes; oldest raw day first)',
        labelNames: ['reason'] as const,
        registers,
      }),
      failures: new Counter({ name: 'iothub_edge_history_write_failures_total', help: 'History batches that could not be written (disk full, damaged file)', registers }),
      bytes: new Gauge({ name: 'iothub_edge_history_bytes', help: 'Bytes in use in history.db', registers, collect: () => this.refreshGauges() }),
      series: new Gauge({ name: 'iothub_edge_history_series', help: 'Series in the local history', registers }),
    }
  }

  /** Open history.db (an unusable one is quarantined and made anew), expire what is due, start the timers. */
  start(): void {
    this.open()
    this.maintain()
    this.vitalsTimer = setInterval(() => this.recordVitals(), this.d.config.vitalsIntervalSeconds * 1000).unref()
    this.maintainTimer = setInterval(() => this.maintain(), MAINTAIN_MS).unref()
  }

  private open(): void {
    const opened = openHistoryDb(this.d.dataDir, this.now())
    this.db = opened.db
    this.store = new HistoryStore(opened.db, this.d.config, this.now)
    if (opened.quarantined) this.recreated(opened.quarantined)
  }

  private recreated(q: { file: string; error: string }): void {
    this.state = 'recreated'
    this.quarantined = q
    this.d.log.error(
      { code: ErrorCodes.HISTORY_QUARANTINED, movedTo: q.file, err: q.error },
      `history.db was unusable (${q.error}): moved to ${q.file} and started anew; the outbox and every message waiting for the hub are untouched. Keep the moved file for support or delete it`,
    )
  }

  /** The history's tables, for the query API (undefined until started). */
  get tables(): HistoryStore | undefined {
    return this.store
  }

  // --- PipelineObserver: called in the outbox's commit turn, so only a reference is kept -----------

  committed(batch: readonly Uplink[]): void {
    if (!this.store) return
    if (this.pendingCount + batch.length > this.d.config.maxPending) {
      this.m.shed.inc(batch.length)
      this.shedTotal += batch.length
      this.warn.warn(
        'shed',
        { code: ErrorCodes.HISTORY_BEHIND, shed: this.shedTotal, pending: this.pendingCount },
        'the local history is behind and skips uplinks (they still go to the hub); raise store.history.maxPending or give the gateway more CPU/disk',
      )
      return
    }
    this.pending.push(batch)
    this.pendingCount += batch.length
    this.committedSinceVitals += batch.length
    this.schedule()
  }

  deviceEvent(e: DeviceEvent): void {
    if (!this.store) return
    this.events.push({ device: deviceKey(e.device), ts: e.at, type: e.type, detail: e.detail })
    this.schedule()
  }

  private schedule(delay = FLUSH_MS): void {
    if (this.flushTimer) return
    this.flushTimer = setTimeout(() => {
      this.flushTimer = undefined
      this.flush()
    }, delay).unref()
  }

  /** Write what gathered, at most CHUNK uplinks now; the rest in the next turn. */
  flush(all = false): void {
    do {
      const samples = this.extra
      const events = this.events
      this.extra = []
      this.events = []
      let taken = 0
      while (this.pending.length && taken < CHUNK) {
        const batch = this.pending.shift()!
        taken += batch.length
        for (const up of batch) this.translate(up, samples, events)
      }
      this.pendingCount -= taken
      if (samples.length || events.length) this.write(samples, events)
    } while (all && this.pending.length)
    if (this.pending.length) this.schedule(0)
  }

  private write(samples: Sample[], events: HistoryEvent[]): void {
    const store = this.store
    if (!store) return
    try {
      const r = store.write(samples, events)
      this.m.samples.inc(r.written)
      for (const [device, n] of r.rejected) {
        this.m.rejected.inc(n)
        this.rejectedTotal += n
        this.warn.warn(
          `cap:${device}`,
          { code: ErrorCodes.HISTORY_SERIES_CAP, device, refused: n, maxSeriesPerDevice: this.d.config.maxSeriesPerDevice },
          `device ${device} sends more distinct keys than store.history.maxSeriesPerDevice: samples of new keys are not recorded (the messages still go to the hub); fix the device's payload or raise the cap`,
        )
      }
    } catch (err) {
      this.m.failures.inc()
      if (isCorrupt(err)) {
        this.reopenDamaged(err as Error)
        return
      }
      this.warn.warn('write', { err, code: ErrorCodes.HISTORY_FAILED }, 'could not write to the local history (this batch is not recorded; the outbox is not affected): check the disk of gateway.dataDir')
    }
  }

  private reopenDamaged(err: Error): void {
    try {
      const file = this.db!.name
      this.db?.close()
      const moved = quarantine(file, this.now())
      this.open()
      this.recreated({ file: moved, error: err.message })
    } catch (e) {
      this.state = 'failed'
      this.store = undefined
      this.d.log.error({ err: e, code: ErrorCodes.HISTORY_FAILED }, 'the local history could not be recreated and is off until restart; the outbox is not affected')
    }
  }

  /** One committed uplink as samples (payload leaves, transport metadata) and events. */
  private translate(up: Uplink, samples: Sample[], events: HistoryEvent[]): void {
    const t = up.topic
    const device = deviceKey(t)
    const ts = up.receivedAt
    if (t.kind === 'upload_data' && t.name === '$connection') {
      const c = payloadObject(up.payload)
      events.push({ device, ts, type: c?.connected === true ? 'connected' : 'disconnected', detail: c ? pick(c, ['client_id', 'transport', 'ipaddress']) : undefined })
      return
    }
    if (t.kind === 'update_ota_status') {
      events.push({ device, ts, type: 'ota_status', detail: payloadObject(up.payload) ?? undefined })
      return
    }
    const prefix = t.kind === 'upload_data' && t.name && !t.name.startsWith('$') ? t.name : t.kind === 'update_status' ? 'status' : undefined
    if (prefix) for (const l of payloadLeaves(up.payload)) samples.push({ device, name: l.path ? `${prefix}.${l.path}` : prefix, ts, value: l.value })
    const meta = up.meta
    if (!meta) return
    if (meta.rssi !== undefined) samples.push({ device, name: '$meta.rssi', ts, value: meta.rssi })
    if (meta.snr !== undefined) samples.push({ device, name: '$meta.snr', ts, value: meta.snr })
    if (meta.battery !== undefined) samples.push({ device, name: '$meta.battery', ts, value: meta.battery })
    if (meta.gatewayCount !== undefined) samples.push({ device, name: '$meta.gateways', ts, value: meta.gatewayCount })
    if (meta.frameCounter !== undefined) {
      samples.push({ device, name: '$meta.fcnt', ts, value: meta.frameCounter })
      // Frames lost on the radio between two that arrived (a counter reset after a rejoin is not a gap).
      const last = this.lastFcnt.get(device)
      if (last !== undefined && meta.frameCounter > last) samples.push({ device, name: '$meta.fcnt_gap', ts, value: meta.frameCounter - last - 1 })
      this.lastFcnt.set(device, meta.frameCounter)
    }
  }

  /** The gateway's own vitals, as samples of its own device. */
  private recordVitals(): void {
    if (!this.store) return
    const at = this.now()
    const cpu = process.cpuUsage()
    const mem = process.memoryUsage()
    const v: Record<string, number> = { ...this.d.vitals(), rss_bytes: mem.rss, heap_bytes: mem.heapUsed, history_bytes: this.store.bytes() }
    try {
      const fs = statfsSync(this.d.dataDir)
      v.disk_free_bytes = fs.bavail * fs.bsize
    } catch {
      // no statfs here: no disk figure
    }
    const depth = v.outbox_messages ?? 0
    if (this.lastVitals) {
      const s = (at - this.lastVitals.at) / 1000
      if (s > 0) {
        const used = cpu.user + cpu.system - this.lastVitals.cpu.user - this.lastVitals.cpu.system
        v.cpu_percent = Math.round(used / 10_000 / s) // µs of CPU per s of wall time, as percent of one core
        // What left the outbox (to the hub, or evicted): depth before + committed since - depth now.
        v.outbox_drain_per_s = Math.max(0, (this.lastVitals.depth + this.committedSinceVitals - depth) / s)
      }
    }
    this.lastVitals = { at, cpu, depth }
    this.committedSinceVitals = 0
    for (const [k, value] of Object.entries(v)) this.extra.push({ device: this.d.gateway, name: `$vitals.${k}`, ts: at, value })
    this.schedule()
  }

  /** Retention and the byte quota; dropped tables counted and logged. */
  maintain(): void {
    const store = this.store
    if (!store) return
    try {
      const dropped = store.maintain()
      if (dropped.expiry.length) this.m.dropped.inc({ reason: 'expiry' }, dropped.expiry.length)
      if (dropped.quota.length) {
        this.m.dropped.inc({ reason: 'quota' }, dropped.quota.length)
        this.d.log.warn(
          { tables: dropped.quota, maxBytes: this.d.config.maxBytes, bytes: store.bytes() },
          'history.db reached store.history.maxBytes: dropped the oldest raw days before their retention (the rollups keep them summarised); raise the quota or lower retentionDays',
        )
      }
    } catch (err) {
      if (isCorrupt(err)) this.reopenDamaged(err as Error)
      else this.warn.warn('maintain', { err, code: ErrorCodes.HISTORY_FAILED }, 'history expiry failed; it is tried again in 10 minutes')
    }
  }

  private refreshGauges(): void {
    if (!this.store) return
    this.m.bytes.set(this.store.bytes())
    this.m.series.set(this.store.seriesCount)
  }

  health(): HistoryHealth {
    return {
      enabled: true,
      state: this.state,
      ...(this.quarantined ? { quarantined: this.quarantined } : {}),
      bytes: this.store?.bytes() ?? 0,
      series: this.store?.seriesCount ?? 0,
      shed: this.shedTotal,
      seriesRejected: this.rejectedTotal,
    }
  }

  /** Write what waits, stop the timers, close history.db. */
  stop(): void {
    clearTimeout(this.flushTimer)
    clearInterval(this.vitalsTimer)
    clearInterval(this.maintainTimer)
    this.flushTimer = undefined
    this.flush(true)
    this.store = undefined
    this.db?.close()
    this.db = undefined
  }
}

function payloadObject(payload: Buffer): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(payload.toString('utf8'))
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined
  } catch {
    return undefined
  }
}

function pick(o: Record<string, unknown>, keys: string[]): Record<string, unknown> {
  return Object.fromEntries(keys.filter((k) => o[k] !== undefined).map((k) => [k, o[k]]))
}
