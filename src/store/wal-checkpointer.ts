// Checkpoints of gateway.db's WAL off the event loop (decision 0026-wal-checkpoint-thread).
//
// In WAL mode every commit appends pages to the WAL; a checkpoint copies them into the database file
// and fsyncs it. SQLite runs it inside the commit that crosses wal_autocheckpoint pages, on the
// connection that committed: for the outbox that was the main thread, which then stalled for the
// copy and a second fsync while no socket was read (the p99 latency at 1,000 msg/s). Under sustained
// writes a thread with its own connection checkpoints instead (PASSIVE: it never waits for the main
// connection, which never waits for it either); the main connection's automatic checkpoint stays,
// at the same threshold as before, as the backstop if the thread falls behind, so the WAL stays as
// bounded as it was (decision 0015-wal-full-disk). The thread starts once commits are frequent and
// ends after a while without anything to copy, so an idle gateway does not keep it.
import type { Worker } from 'node:worker_threads'
import type Database from 'better-sqlite3'
import { workerBeside } from '../core/worker-thread.js'
import type { CheckpointReply, CheckpointSetup } from './wal-checkpoint-worker.js'

export interface WalCheckpointerOptions {
  /** How often the thread checkpoints while it runs (0: never started). */
  everyMs?: number
  /** The thread ends after this long with nothing new in the WAL. */
  idleMs?: number
  /** Commits in a row (none more than `gapMs` apart) before the thread is started. */
  startAfter?: number
  gapMs?: number
  /** A checkpoint failed for another reason than the main connection being busy with one. */
  onError?: (err: { message: string; code?: string }) => void
}

const CLOSE_WAIT_MS = 5_000

export class WalCheckpointer {
  private worker?: Worker
  private closedFlag?: Int32Array
  private run = 0
  private last = 0
  private closed = false
  /** Threads started so far (tests, metrics). */
  starts = 0
  private readonly o: Required<Omit<WalCheckpointerOptions, 'onError'>> & Pick<WalCheckpointerOptions, 'onError'>

  constructor(
    private readonly db: Database.Database,
    opts: WalCheckpointerOptions = {},
  ) {
    this.o = { everyMs: 100, idleMs: 10_000, startAfter: 50, gapMs: 500, ...opts }
  }

  get running(): boolean {
    return this.worker !== undefined
  }

  /** A commit on the main connection wrote to the WAL. */
  committed(): void {
    if (this.worker || this.closed || this.db.memory || this.o.everyMs <= 0) return
    const now = Date.now()
    this.run = now - this.last > this.o.gapMs ? 1 : this.run + 1
    this.last = now
    if (this.run >= this.o.startAfter) this.start()
  }

  private start(): void {
    this.run = 0
    const closed = new Int32Array(new SharedArrayBuffer(4))
    const setup: CheckpointSetup = { file: this.db.name, everyMs: this.o.everyMs, idleMs: this.o.idleMs, closed }
    const worker = workerBeside(import.meta.url, 'wal-checkpoint-worker', { workerData: { checkpoint: setup } })
    this.worker = worker
    this.closedFlag = closed
    this.starts++
    worker.on('message', (r: CheckpointReply) => this.o.onError?.(r))
    worker.on('error', (err: Error & { code?: string }) => this.o.onError?.({ message: err.message, code: err.code }))
    worker.on('exit', () => {
      if (this.worker === worker) this.worker = undefined
    })
    worker.unref()
  }

  /**
   * The thread closes its connection, waited for (bounded): the main connection is then the last one
   * open, and its close checkpoints the whole WAL into the file and removes it, as a clean stop should.
   */
  close(): void {
    this.closed = true
    const worker = this.worker
    const flag = this.closedFlag
    if (!worker || !flag) return
    this.worker = undefined
    worker.postMessage({ close: true })
    const deadline = Date.now() + CLOSE_WAIT_MS
    while (Atomics.load(flag, 0) === 0 && Date.now() < deadline) Atomics.wait(flag, 0, 0, 50)
    void worker.terminate()
  }
}
