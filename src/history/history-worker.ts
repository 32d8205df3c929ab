// The history's writer, on a worker thread of its own: parsing payloads and writing history.db
// cost the gateway's event loop nothing (the outbox's group commit, the devices' acknowledgements
// and the hub link stay on the main thread). It owns the writing connection; the main thread
// reads through one of its own (WAL lets both).
import { parentPort, workerData } from 'node:worker_threads'
import { isCorrupt, openHistoryDb, quarantine, type HistoryDb } from './history-db.js'
import { HistoryStore, type DroppedTables, type HistoryEvent, type HistoryLimits, type Sample } from './history-store.js'
import { SampleMaker } from './uplink-samples.js'
import { unpack } from './uplink-pack.js'

export interface WorkerSetup {
  dataDir: string
  limits: HistoryLimits
}

export type WorkerRequest =
  /** `uplinks`: an UplinkPack's bytes (uplink-pack.ts), moved to this thread. */
  | { type: 'batch'; uplinks: Uint8Array; events: HistoryEvent[]; samples: Sample[] }
  | { type: 'maintain' }
  | { type: 'stop' }

export type WorkerReply =
  | { type: 'opened'; quarantined?: { file: string; error: string } }
  | { type: 'written'; uplinks: number; written: number; rejected: [string, number][]; error?: string; full?: boolean }
  | { type: 'recreated'; quarantined: { file: string; error: string } }
  | { type: 'maintained'; dropped: DroppedTables; bytes: number; series: number; error?: string }
  | { type: 'failed'; error: string }
  | { type: 'stopped' }

class HistoryWriter {
  private db!: HistoryDb
  private store?: HistoryStore
  private readonly maker = new SampleMaker()

  constructor(
    private readonly setup: WorkerSetup,
    private readonly reply: (r: WorkerReply) => void,
  ) {}

  open(): void {
    const opened = openHistoryDb(this.setup.dataDir)
    this.db = opened.db
    this.store = new HistoryStore(opened.db, this.setup.limits)
    this.reply({ type: 'opened', ...(opened.quarantined ? { quarantined: opened.quarantined } : {}) })
  }

  handle(m: WorkerRequest): void {
    switch (m.type) {
      case 'batch':
        return this.batch(m.uplinks, m.events, m.samples)
      case 'maintain':
        return this.maintain()
      case 'stop':
        this.db.close()
        this.reply({ type: 'stopped' })
        return
    }
  }

  private batch(packed: Uint8Array, events: HistoryEvent[], samples: Sample[]): void {
    const uplinks = unpack(packed)
    for (const up of uplinks) this.maker.add(up, samples, events)
    if (!this.store) return this.reply({ type: 'written', uplinks: uplinks.length, written: 0, rejected: [], error: 'the history is off after a failure' })
    try {
      const r = this.store.write(samples, events)
      this.reply({ type: 'written', uplinks: uplinks.length, written: r.written, rejected: [...r.rejected] })
    } catch (err) {
      const e = err as Error & { code?: string }
      this.reply({ type: 'written', uplinks: uplinks.length, written: 0, rejected: [], error: e.message, full: e.code === 'SQLITE_FULL' })
      if (isCorrupt(err)) this.recreate(e)
    }
  }

  private maintain(): void {
    if (!this.store) return
    try {
      const dropped = this.store.maintain()
      this.reply({ type: 'maintained', dropped, bytes: this.store.bytes(), series: this.store.seriesCount })
    } catch (err) {
      this.reply({ type: 'maintained', dropped: { expiry: [], quota: [] }, bytes: 0, series: this.store.seriesCount, error: (err as Error).message })
      if (isCorrupt(err)) this.recreate(err as Error)
    }
  }

  /** A damaged file found while running: moved aside and made anew, like at start. */
  private recreate(err: Error): void {
    try {
      const file = this.db.name
      this.db.close()
      const moved = quarantine(file)
      const opened = openHistoryDb(this.setup.dataDir)
      this.db = opened.db
      this.store = new HistoryStore(opened.db, this.setup.limits)
      this.reply({ type: 'recreated', quarantined: { file: moved, error: err.message } })
    } catch (e) {
      this.store = undefined
      this.reply({ type: 'failed', error: (e as Error).message })
    }
  }
}

// Only when run as the worker (the main thread imports this file for its types alone).
if (parentPort && (workerData as { history?: WorkerSetup } | undefined)?.history) {
  const port = parentPort
  const writer = new HistoryWriter((workerData as { history: WorkerSetup }).history, (r) => port.postMessage(r))
  try {
    writer.open()
  } catch (err) {
    port.postMessage({ type: 'failed', error: (err as Error).message } satisfies WorkerReply)
  }
  port.on('message', (m: WorkerRequest) => writer.handle(m))
}
