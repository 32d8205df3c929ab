// Where the outbox's group commits run: on the calling thread, or on a writer thread of their own
// (outbox-worker.ts) with a second connection to the same file (decision 0022-store-off-event-loop).
import { MessageChannel, receiveMessageOnPort, type MessagePort, type Worker } from 'node:worker_threads'
import { workerBeside } from '../core/worker-thread.js'
import type { Db } from './db.js'
import { OutboxTransaction, connectionSettings, type CommitBatch, type CommitResult, type CommitterSettings } from './outbox-commit.js'
import type { WorkerReply, WorkerSetup } from './outbox-worker.js'

/** Where the outbox's batches are committed. */
export interface Committer {
  /** The batch's payloads must be packed into one buffer of their own (it is moved to a writer thread). */
  readonly packs: boolean
  /** The result, or (on a writer thread) a promise of it. Throws/rejects with the transaction's error. */
  commit(batch: CommitBatch): CommitResult | Promise<CommitResult>
  /** Waits (blocking) for a commit in flight, then stops the writer. */
  close(): void
  /** The committing connection's settings, read back from it. */
  settings(): Promise<CommitterSettings>
}

/** On the calling thread, on the caller's connection. */
export class InlineCommitter implements Committer {
  readonly packs = false
  private readonly tx: OutboxTransaction
  constructor(private readonly db: Db) {
    this.tx = new OutboxTransaction(db)
  }
  commit(batch: CommitBatch): CommitResult {
    return this.tx.run(batch)
  }
  close(): void {}
  settings(): Promise<CommitterSettings> {
    return Promise.resolve(connectionSettings(this.db, false))
  }
}

const CLOSE_WAIT_MS = 30_000

/** On a writer thread with its own connection to the same file (WAL: the main thread's reads go on meanwhile). */
export class WorkerCommitter implements Committer {
  readonly packs = true
  private readonly worker: Worker
  private readonly port: MessagePort
  private readonly waiting: { resolve: (r: CommitResult) => void; reject: (e: Error) => void }[] = []
  // A writer thread that died (it could not open the file, or crashed): the commits go on here.
  private fallback?: InlineCommitter
  private closed = false
  private writerClosed = false
  private readonly ready: Promise<CommitterSettings>
  private gotSettings?: (s: CommitterSettings) => void

  constructor(private readonly db: Db) {
    const pragmas = ['journal_mode', 'synchronous', 'busy_timeout', 'wal_autocheckpoint', 'journal_size_limit', 'foreign_keys'].map(
      (p) => `${p} = ${db.pragma(p, { simple: true }) as string | number}`,
    )
    const { port1, port2 } = new MessageChannel()
    this.port = port1
    this.ready = new Promise((resolve) => (this.gotSettings = resolve))
    const workerData = { outbox: { file: db.name, pragmas, port: port2 } satisfies WorkerSetup }
    this.worker = workerBeside(import.meta.url, 'outbox-worker', { workerData, transferList: [port2] })
    // A batch whose commit was cut short is refused (its senders send it again; a commit that did
    // reach the disk before the thread died only makes those messages duplicates, same MessageIds).
    const died = (err: Error): void => {
      if (this.closed || this.fallback) return
      this.fallback = new InlineCommitter(this.db)
      void this.fallback.settings().then(this.gotSettings)
      for (const w of this.waiting.splice(0)) w.reject(Object.assign(new Error(`the outbox writer thread stopped: ${err.message}`), { cause: err }))
    }
    this.worker.on('error', died)
    this.worker.on('exit', (code) => died(new Error(`exit code ${code}`)))
    this.worker.unref()
    this.port.on('message', (r: WorkerReply) => this.reply(r))
    this.port.unref()
  }

  commit(batch: CommitBatch): CommitResult | Promise<CommitResult> {
    if (this.fallback) return this.fallback.commit(batch)
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject })
      this.worker.postMessage(batch, [batch.rows.payloads.buffer as ArrayBuffer])
      // A commit in flight keeps the process alive: the sender's acknowledgement depends on it.
      this.port.ref()
    })
  }

  settings(): Promise<CommitterSettings> {
    return this.ready
  }

  private reply(r: WorkerReply): void {
    if ('settings' in r) {
      this.gotSettings?.(r.settings)
      return
    }
    if ('closed' in r) {
      this.writerClosed = true
      return
    }
    const w = this.waiting.shift()
    if (!this.waiting.length) this.port.unref()
    if (!w) return
    if ('ok' in r) w.resolve(r.ok)
    else w.reject(Object.assign(new Error(r.error.message), r.error.code ? { code: r.error.code } : {}))
  }

  /**
   * The commit in flight finishes (its result is delivered synchronously), then the writer closes its
   * connection, waited for too: the main thread's connection is then the last one open, and its close
   * checkpoints the WAL into the file as a clean stop should.
   */
  close(): void {
    if (this.closed) return
    const deadline = Date.now() + CLOSE_WAIT_MS
    this.waitFor(() => this.waiting.length === 0, deadline)
    this.closed = true
    if (!this.fallback) {
      this.worker.postMessage({ close: true })
      this.waitFor(() => this.writerClosed, deadline)
    }
    this.port.close()
  }

  private waitFor(done: () => boolean, deadline: number): void {
    const nap = new Int32Array(new SharedArrayBuffer(4))
    while (!done() && Date.now() < deadline) {
      const m = receiveMessageOnPort(this.port)
      if (m) this.reply(m.message as WorkerReply)
      else Atomics.wait(nap, 0, 0, 5)
    }
  }
}

/** A writer thread for a database file; on the calling thread otherwise (in memory, or no worker wanted). */
export function committerFor(db: Db, thread: boolean): Committer {
  return thread && !db.memory ? new WorkerCommitter(db) : new InlineCommitter(db)
}
