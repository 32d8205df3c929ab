// The local history as an observer of the pipeline: it is handed each group commit of the outbox
// (after it is durable, never inside its transaction), keeps a reference and returns. A timer hands
// what gathered, in batches, to the history's worker thread (history-worker.ts), which parses and
// writes history.db, so the gateway's event loop does almost nothing for it. When the history falls
// behind it sheds whole batches and counts them: devices are never held up for it. It also records
// device events (sessions, commands, replies) and the gateway's own vitals, and reads history.db for
// the API through a connection of its own.
//
// The writer thread (its own V8 isolate, ~13 MB) runs only while there is something to write: it
// is stopped after `writerIdleMs` without a batch and started again by the next uplink or device
// event. While it sleeps the gateway's own vitals gather here and are written at the latest every
// 10 minutes (with the expiry run), so an idle gateway does not keep a thread for them
// (docs/performance.md, "Memory"). At the gateway's start the thread opens history.db (quarantining
// an unusable one) and runs the expiry; when nothing else came to write meanwhile it sleeps as soon
// as that is done, not 30 s later (an idle gateway's first minute is measured too).
import { statfsSync } from 'node:fs'
import path from 'node:path'
import type { Worker } from 'node:worker_threads'
import { workerBeside } from '../core/worker-thread.js'
import { Counter, Gauge, type Registry } from 'prom-client'
import type { Logger } from '../core/log.js'
import { RateLimitedLog } from '../core/log.js'
import { ErrorCodes } from '../core/errors.js'
import type { DeviceEvent, PipelineObserver } from '../core/observers.js'
import type { Uplink } from '../core/types.js'
import { deviceKey } from '../core/types.js'
import { HISTORY_FILE, openHistoryReadOnly, type HistoryDb } from './history-db.js'
import { HistoryStore, MINUTE, type HistoryEvent, type Sample } from './history-store.js'
import type { WorkerReply, WorkerRequest, WorkerSetup } from './history-worker.js'
import { UplinkPack } from './uplink-pack.js'
import type { HistoryConfig } from './schema.js'
import type { HistoryHealth } from './history-types.js'

export type { HistoryHealth } from './history-types.js'

// Batches are handed over this often, at most this many uplinks at a time.
const FLUSH_MS = 1_000
const CHUNK = 5_000
const MAINTAIN_MS = 10 * MINUTE
const START_TIMEOUT_MS = 15_000
const STOP_TIMEOUT_MS = 5_000
const WRITER_IDLE_MS = 30_000
// While the writer sleeps, vitals alone wake it at most this often.
const VITALS_MAX_WAIT_MS = MAINTAIN_MS

export interface HistoryDeps {
  dataDir: string
  config: HistoryConfig
  log: Logger
  registry: Registry
  /** The gateway's own device key: its vitals are recorded under it. */
  gateway: string
  /** Vitals the composition root knows (outbox depth and age, hub link); the recorder adds CPU, memory, disk. */
  vitals: () => Record<string, number>
  /** Called right after the writer thread is created (each time it wakes). */
  threadStarted?: () => void
  /** The writer thread stops after this long without anything to write (default 30 s). */
  writerIdleMs?: number
}

export class HistoryRecorder implements PipelineObserver {
  /** The writer thread, while it runs (it sleeps when idle: see the top of this file). */
  private worker?: Worker
  /** Started and not off after a failure: what is committed is recorded. */
  private running = false
  private waking?: Promise<void>
  private sleeping?: Promise<void>
  /** Requests for the writer while it sleeps or wakes. */
  private queued: WorkerRequest[] = []
  /** Batches and expiry runs the writer has not answered yet: it sleeps only when there are none. */
  private outstanding = 0
  private idleTimer?: NodeJS.Timeout
  /** Uplinks or device events were handed to the writer since the start (until then it sleeps as soon as it is idle). */
  private handedWork = false
  private extraSince = 0
  private wakes = 0
  private reader?: { db: HistoryDb; store: HistoryStore }
  // Committed uplinks packed for the writer (uplink-pack.ts), at most CHUNK a pack.
  private buffered: UplinkPack[] = []
  // Uplinks buffered here or handed to the worker and not yet written: what "behind" is measured in.
  private pendingCount = 0
  private events: HistoryEvent[] = []
  private extra: Sample[] = []
  private flushTimer?: NodeJS.Timeout
  private vitalsTimer?: NodeJS.Timeout
  private maintainTimer?: NodeJS.Timeout
  private state: HistoryHealth['state'] = 'ok'
  private quarantined?: HistoryHealth['quarantined']
  private readonly warn: RateLimitedLog
  private committedSinceVitals = 0
  private lastVitals?: { at: number; cpu: NodeJS.CpuUsage; depth: number }
  private shedTotal = 0
  private rejectedTotal = 0
  private stopped?: () => void
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

  /** Start the writer thread (it opens history.db, quarantining an unusable one), then the reader and the timers. */
  async start(): Promise<void> {
    await this.spawnWriter()
    this.running = true
    this.post({ type: 'maintain' })
    this.vitalsTimer = setInterval(() => this.recordVitals(), this.d.config.vitalsIntervalSeconds * 1000).unref()
    this.maintainTimer = setInterval(() => this.post({ type: 'maintain' }), MAINTAIN_MS).unref()
  }

  /** How often the writer thread was started again after sleeping (tests, diagnostics). */
  get writerWakes(): number {
    return this.wakes
  }

  /** Whether the writer thread runs now. */
  get writerRunning(): boolean {
    return this.worker !== undefined
  }

  /** The writer thread, opened; throws when it cannot open history.db. */
  private async spawnWriter(): Promise<void> {
    const setup: WorkerSetup = { dataDir: this.d.dataDir, limits: this.d.config }
    const worker = workerBeside(import.meta.url, 'history-worker', { workerData: { history: setup } })
    this.d.threadStarted?.()
    const opened = await new Promise<WorkerReply>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the history writer did not open ${HISTORY_FILE} within ${START_TIMEOUT_MS / 1000} s`)), START_TIMEOUT_MS)
      worker.once('message', (r: WorkerReply) => {
        clearTimeout(timer)
        resolve(r)
      })
      worker.once('error', (err) => {
        clearTimeout(timer)
        reject(err)
      })
    }).catch(async (err: Error) => {
      await worker.terminate()
      throw err
    })
    if (opened.type === 'failed') {
      await worker.terminate()
      throw new Error(opened.error)
    }
    worker.on('message', (r: WorkerReply) => this.fromWorker(r))
    worker.on('error', (err) => this.workerDied(worker, err))
    worker.unref()
    this.worker = worker
    if (!this.reader || (opened.type === 'opened' && opened.quarantined)) this.openReader()
    if (opened.type === 'opened' && opened.quarantined) this.recreated(opened.quarantined)
  }

  /** Start the sleeping writer again, then hand it what waited. */
  private wake(): void {
    if (this.waking || this.worker || !this.running) return
    this.waking = (async () => {
      await this.sleeping
      this.wakes++
      await this.spawnWriter()
      const queued = this.queued
      this.queued = []
      for (const m of queued) this.post(m)
    })()
      .catch((err: Error) => this.off(err.message))
      .finally(() => {
        this.waking = undefined
      })
  }

  /** No batch for writerIdleMs and none unanswered: close history.db and end the thread. */
  private armIdle(): void {
    clearTimeout(this.idleTimer)
    if (!this.worker || this.outstanding > 0) return
    this.idleTimer = setTimeout(() => this.sleep(), this.handedWork ? (this.d.writerIdleMs ?? WRITER_IDLE_MS) : 0).unref()
  }

  private sleep(): void {
    const worker = this.worker
    // An unanswered request re-arms the timer when its answer comes; uplinks or events about to be
    // handed over, now (vitals alone wait: see flush).
    if (!worker || this.outstanding > 0) return
    if (this.buffered.length || this.events.length) return this.armIdle()
    this.worker = undefined
    this.sleeping = this.closeWriter(worker).finally(() => {
      this.sleeping = undefined
    })
  }

  /** Let the writer finish what it has and close history.db (bounded), then end the thread. */
  private async closeWriter(worker: Worker): Promise<void> {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, STOP_TIMEOUT_MS)
      this.stopped = () => {
        clearTimeout(timer)
        resolve()
      }
      worker.postMessage({ type: 'stop' } satisfies WorkerRequest)
    })
    this.stopped = undefined
    await worker.terminate()
  }

  private openReader(): void {
    this.reader?.db.close()
    const db = openHistoryReadOnly(path.join(this.d.dataDir, HISTORY_FILE))
    this.reader = { db, store: new HistoryStore(db, this.d.config, Date.now, { reader: true }) }
  }

  /** The history's tables, read-only, for the query API (undefined when it is off after a failure). */
  get tables(): HistoryStore | undefined {
    return this.reader?.store
  }

  private fromWorker(r: WorkerReply): void {
    switch (r.type) {
      case 'written':
        this.outstanding = Math.max(0, this.outstanding - 1)
        this.armIdle()
        this.pendingCount = Math.max(0, this.pendingCount - r.uplinks)
        this.m.samples.inc(r.written)
        for (const [device, n] of r.rejected) this.capped(device, n)
        if (r.error) {
          this.m.failures.inc()
          this.warn.warn(
            'write',
            { err: r.error, code: ErrorCodes.HISTORY_FAILED },
            `could not write to the local history (this batch is not recorded; the outbox is not affected): ${r.full ? 'the disk of gateway.dataDir is full' : 'check the disk of gateway.dataDir'}`,
          )
        }
        return
      case 'maintained':
        this.outstanding = Math.max(0, this.outstanding - 1)
        this.armIdle()
        this.m.bytes.set(r.bytes)
        this.m.series.set(r.series)
        if (r.dropped.expiry.length) this.m.dropped.inc({ reason: 'expiry' }, r.dropped.expiry.length)
        if (r.dropped.quota.length) {
          this.m.dropped.inc({ reason: 'quota' }, r.dropped.quota.length)
          this.d.log.warn(
            { tables: r.dropped.quota, maxBytes: this.d.config.maxBytes, bytes: r.bytes },
            'history.db reached store.history.maxBytes: dropped the oldest raw days before their retention (the rollups keep them summarised); raise the quota or lower retentionDays',
          )
        }
        if (r.error) this.warn.warn('maintain', { err: r.error, code: ErrorCodes.HISTORY_FAILED }, 'history expiry failed; it is tried again in 10 minutes')
        return
      case 'recreated':
        this.recreated(r.quarantined)
        this.openReader()
        return
      case 'failed':
        this.off(r.error)
        return
      case 'stopped':
        this.stopped?.()
        return
      case 'opened':
        return
    }
  }

  private recreated(q: { file: string; error: string }): void {
    this.state = 'recreated'
    this.quarantined = q
    this.d.log.error(
      { code: ErrorCodes.HISTORY_QUARANTINED, movedTo: q.file, err: q.error },
      `history.db was unusable (${q.error}): moved to ${q.file} and started anew; the outbox and every message waiting for the hub are untouched. Keep the moved file for support or delete it`,
    )
  }

  private workerDied(worker: Worker, err: Error): void {
    if (worker === this.worker) this.off(err.message)
  }

  private off(error: string): void {
    this.state = 'failed'
    this.running = false
    clearTimeout(this.idleTimer)
    void this.worker?.terminate()
    this.worker = undefined
    this.queued = []
    this.reader?.db.close()
    this.reader = undefined
    this.d.log.error({ err: error, code: ErrorCodes.HISTORY_FAILED }, 'the local history stopped and is off until restart; the outbox and the devices are not affected')
  }

  private capped(device: string, n: number): void {
    this.m.rejected.inc(n)
    this.rejectedTotal += n
    this.warn.warn(
      `cap:${device}`,
      { code: ErrorCodes.HISTORY_SERIES_CAP, device, refused: n, maxSeriesPerDevice: this.d.config.maxSeriesPerDevice },
      `device ${device} sends more distinct keys than store.history.maxSeriesPerDevice: samples of new keys are not recorded (the messages still go to the hub); fix the device's payload or raise the cap`,
    )
  }

  // --- PipelineObserver: called in the outbox's commit turn, so only a reference is kept -----------

  committed(batch: readonly Uplink[]): void {
    if (!this.running) return
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
    // Packed now, in the commit's turn: nothing of the batch is kept until the hand-over.
    let pack = this.buffered.at(-1)
    for (const up of batch) {
      if (!pack || pack.count >= CHUNK) this.buffered.push((pack = new UplinkPack()))
      pack.add(up)
    }
    this.pendingCount += batch.length
    this.committedSinceVitals += batch.length
    this.schedule()
  }

  deviceEvent(e: DeviceEvent): void {
    if (!this.running) return
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

  /** Hand what gathered to the writer, at most CHUNK uplinks per message (all of it when `all`). */
  private flush(all = false): void {
    // The writer sleeps and only vitals wait: they wake it at most every VITALS_MAX_WAIT_MS.
    if (!this.worker && !all && !this.buffered.length && !this.events.length && Date.now() - this.extraSince < VITALS_MAX_WAIT_MS) return
    do {
      const pack = this.buffered.shift()
      const events = this.events
      const samples = this.extra
      this.events = []
      this.extra = []
      if (pack || events.length) this.handedWork = true
      if (pack || events.length || samples.length) this.post({ type: 'batch', uplinks: pack?.bytes() ?? new Uint8Array(0), events, samples })
    } while (all && this.buffered.length)
    if (this.buffered.length) this.schedule(0)
  }

  private post(m: WorkerRequest): void {
    if (m.type === 'batch' || m.type === 'maintain') this.outstanding++
    if (!this.worker) {
      if (m.type === 'batch' || m.type === 'maintain') this.outstanding--
      this.queued.push(m)
      return this.wake()
    }
    clearTimeout(this.idleTimer)
    // A pack's buffer is its own (uplink-pack.ts): moved to the writer, not copied.
    this.worker.postMessage(m, m.type === 'batch' && m.uplinks.byteLength ? [m.uplinks.buffer as ArrayBuffer] : [])
  }

  /** The gateway's own vitals, as samples of its own device. */
  private recordVitals(): void {
    if (!this.running) return
    const at = Date.now()
    const cpu = process.cpuUsage()
    const mem = process.memoryUsage()
    const v: Record<string, number> = { ...this.d.vitals(), rss_bytes: mem.rss, heap_bytes: mem.heapUsed }
    if (this.reader) v.history_bytes = this.reader.store.bytes()
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
    if (!this.extra.length) this.extraSince = at
    for (const [k, value] of Object.entries(v)) this.extra.push({ device: this.d.gateway, name: `$vitals.${k}`, ts: at, value })
    this.schedule()
  }

  private refreshGauges(): void {
    const store = this.reader?.store
    if (!store) return
    this.m.bytes.set(store.bytes())
    this.m.series.set(store.seriesCount)
  }

  health(): HistoryHealth {
    const store = this.reader?.store
    return {
      enabled: true,
      state: this.state,
      ...(this.quarantined ? { quarantined: this.quarantined } : {}),
      bytes: store?.bytes() ?? 0,
      series: store?.seriesCount ?? 0,
      shed: this.shedTotal,
      seriesRejected: this.rejectedTotal,
    }
  }

  /** Hand over what waits, let the writer finish and close history.db (bounded), stop the timers. */
  async stop(): Promise<void> {
    clearTimeout(this.flushTimer)
    clearInterval(this.vitalsTimer)
    clearInterval(this.maintainTimer)
    clearTimeout(this.idleTimer)
    this.flushTimer = undefined
    // What waits is written before the end: a sleeping writer is woken for it.
    if (this.buffered.length || this.events.length || this.extra.length || this.queued.length) this.wake()
    await this.waking
    await this.sleeping
    this.running = false
    const worker = this.worker
    if (worker) {
      this.flush(true)
      this.worker = undefined
      await this.closeWriter(worker)
    }
    this.reader?.db.close()
    this.reader = undefined
  }
}
