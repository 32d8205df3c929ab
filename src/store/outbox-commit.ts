// The outbox's group commit as one transaction over a batch the main thread put together (new rows,
// the hub's acknowledgements, drops, the commit participants' writes, and the quota). It runs on a
// writer thread of its own (outbox-worker.ts) with its own connection to gateway.db, so the fsync of
// synchronous=FULL never blocks the event loop: the main thread goes on parsing, acknowledging and
// publishing to the hub while a commit is on its way to the disk, and the next batch gathers
// meanwhile (decision 00XX-store-off-event-loop). A database that is not a file (tests' in-memory
// ones) commits the same batch on the calling thread.
import Database, { type Statement } from 'better-sqlite3'
import { MessageChannel, receiveMessageOnPort, Worker, type MessagePort } from 'node:worker_threads'
import type { Db } from './db.js'

export type DropReason = 'quota' | 'rpc_resp_expired'
export type Priority = 0 | 1 | 2

/** A write a commit participant adds to the transaction (its statement is prepared once per text). */
export interface SqlWrite {
  sql: string
  args: (string | number | null)[]
}

/** New rows as columns, the payloads packed into one buffer (a Buffer from a socket read is a view of a larger pool: sent as is, the whole pool would be copied). */
export interface NewRows {
  prio: Priority[]
  device: string[]
  kind: string[]
  topic: string[]
  bytes: number[]
  receivedAt: number[]
  /** End offset of each payload in `payloads`. */
  ends: number[]
  payloads: Uint8Array
}

export interface CommitBatch {
  rows: NewRows
  /** Rows the hub acknowledged. */
  acked: number[]
  /** Rows dropped for a reason (counted). */
  drops: { ids: number[]; reason: DropReason }[]
  writes: SqlWrite[]
  /** The committed totals per priority before this batch, and the quota they are held to. */
  totals: Record<Priority, { messages: number; bytes: number }>
  maxBytes: number
  /** Rows on their way to the hub: never evicted. Only sent when the batch may exceed the quota. */
  sending?: number[]
}

export interface CommitResult {
  /** The ids the new rows got, in order. */
  ids: number[]
  /** Net change of the totals per priority (inserted minus deleted, evicted and dropped). */
  delta: Record<Priority, { messages: number; bytes: number }>
  dropped: Partial<Record<DropReason, number>>
  evicted: number[]
}

export interface CommitError {
  message: string
  code?: string
}

/** Runs a batch as one transaction on a connection. */
export class OutboxTransaction {
  private readonly st: { insert: Statement; del: Statement; evictCandidates: Statement; bumpCounter: Statement }
  private readonly prepared = new Map<string, Statement>()

  constructor(private readonly db: Database.Database) {
    this.st = {
      insert: db.prepare('INSERT INTO outbox (prio, device, kind, topic, payload, bytes, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      del: db.prepare('DELETE FROM outbox WHERE id = ? RETURNING prio, bytes'),
      evictCandidates: db.prepare('SELECT id, bytes FROM outbox WHERE prio = ? AND id > ? ORDER BY id LIMIT 256'),
      bumpCounter: db.prepare('INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value'),
    }
  }

  run(b: CommitBatch): CommitResult {
    const delta: CommitResult['delta'] = { 0: { messages: 0, bytes: 0 }, 1: { messages: 0, bytes: 0 }, 2: { messages: 0, bytes: 0 } }
    const res: CommitResult = { ids: [], delta, dropped: {}, evicted: [] }
    const payloads = Buffer.from(b.rows.payloads.buffer, b.rows.payloads.byteOffset, b.rows.payloads.byteLength)
    this.db.transaction(() => {
      this.deleteRows(b.acked, delta)
      for (const d of b.drops) this.drop(d.reason, this.deleteRows(d.ids, delta), res)
      const r = b.rows
      let start = 0
      for (let i = 0; i < r.prio.length; i++) {
        const end = r.ends[i]
        const ins = this.st.insert.run(r.prio[i], r.device[i], r.kind[i], r.topic[i], payloads.subarray(start, end), r.bytes[i], r.receivedAt[i])
        start = end
        res.ids.push(Number(ins.lastInsertRowid))
        delta[r.prio[i]].messages++
        delta[r.prio[i]].bytes += r.bytes[i]
      }
      for (const w of b.writes) this.statement(w.sql).run(...w.args)
      this.enforceQuota(b, res)
    })()
    return res
  }

  private statement(sql: string): Statement {
    let st = this.prepared.get(sql)
    if (!st) this.prepared.set(sql, (st = this.db.prepare(sql)))
    return st
  }

  private deleteRows(ids: number[], delta: CommitResult['delta']): number {
    let n = 0
    for (const id of ids) {
      const r = this.st.del.get(id) as { prio: Priority; bytes: number } | undefined
      if (r) {
        delta[r.prio].messages--
        delta[r.prio].bytes -= r.bytes
        n++
      }
    }
    return n
  }

  private drop(reason: DropReason, n: number, res: CommitResult): void {
    if (!n) return
    this.st.bumpCounter.run(`dropped.${reason}`, n)
    res.dropped[reason] = (res.dropped[reason] ?? 0) + n
  }

  // Over quota: the oldest telemetry goes first, then the middle class, replies last (DESIGN.md).
  private enforceQuota(b: CommitBatch, res: CommitResult): void {
    const prios = [0, 1, 2] as const
    const byPrio = prios.map((p) => ({ messages: b.totals[p].messages + res.delta[p].messages }))
    let bytes = 0
    for (const p of prios) bytes += b.totals[p].bytes + res.delta[p].bytes
    if (bytes <= b.maxBytes) return
    const sending = new Set(b.sending)
    let evicted = 0
    for (const prio of [2, 1, 0] as const) {
      let after = 0
      while (bytes > b.maxBytes && byPrio[prio].messages > 0) {
        const rows = this.st.evictCandidates.all(prio, after) as { id: number; bytes: number }[]
        if (rows.length === 0) break
        after = rows[rows.length - 1].id
        const victims: number[] = []
        let freed = 0
        for (const r of rows) {
          if (bytes - freed <= b.maxBytes) break
          if (sending.has(r.id)) continue
          victims.push(r.id)
          freed += r.bytes
        }
        const before = res.delta[prio].bytes
        const n = this.deleteRows(victims, res.delta)
        bytes += res.delta[prio].bytes - before
        byPrio[prio].messages -= n
        evicted += n
        res.evicted.push(...victims)
      }
    }
    this.drop('quota', evicted, res)
  }
}

/** Where the outbox's batches are committed. */
export interface Committer {
  /** The result, or (on a writer thread) a promise of it. Throws/rejects with the transaction's error. */
  commit(batch: CommitBatch): CommitResult | Promise<CommitResult>
  /** Waits (blocking) for a commit in flight, then stops the writer. */
  close(): void
}

/** On the calling thread, on the caller's connection. */
export class InlineCommitter implements Committer {
  private readonly tx: OutboxTransaction
  constructor(db: Db) {
    this.tx = new OutboxTransaction(db)
  }
  commit(batch: CommitBatch): CommitResult {
    return this.tx.run(batch)
  }
  close(): void {}
}

export interface WorkerSetup {
  file: string
  pragmas: string[]
  port: MessagePort
}
export type WorkerReply = { ok: CommitResult } | { error: CommitError }

const CLOSE_WAIT_MS = 30_000

/** On a writer thread with its own connection to the same file (WAL: the main thread's reads go on meanwhile). */
export class WorkerCommitter implements Committer {
  private readonly worker: Worker
  private readonly port: MessagePort
  private readonly waiting: { resolve: (r: CommitResult) => void; reject: (e: Error) => void }[] = []
  // A writer thread that died (it could not open the file, or crashed): the commits go on here.
  private fallback?: InlineCommitter
  private closed = false

  constructor(private readonly db: Db) {
    const pragmas = ['journal_mode', 'synchronous', 'busy_timeout', 'wal_autocheckpoint', 'journal_size_limit', 'foreign_keys'].map(
      (p) => `${p} = ${db.pragma(p, { simple: true }) as string | number}`,
    )
    const { port1, port2 } = new MessageChannel()
    this.port = port1
    const here = import.meta.url
    // Built (dist/): the .js beside this file. From the sources (tests, tsx): the .ts through tsx.
    const ts = here.endsWith('.ts')
    const file = new URL(ts ? './outbox-worker.ts' : './outbox-worker.js', here)
    const workerData = { outbox: { file: db.name, pragmas, port: port2 } satisfies WorkerSetup }
    this.worker = ts
      ? new Worker(`import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(file.href)}) })`, {
          eval: true,
          workerData,
          transferList: [port2],
        })
      : new Worker(file, { workerData, transferList: [port2] })
    // A batch whose commit was cut short is refused (its senders send it again; a commit that did
    // reach the disk before the thread died only makes those messages duplicates, same MessageIds).
    const died = (err: Error): void => {
      if (this.closed || this.fallback) return
      this.fallback = new InlineCommitter(this.db)
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

  private reply(r: WorkerReply): void {
    const w = this.waiting.shift()
    if (!this.waiting.length) this.port.unref()
    if (!w) return
    if ('ok' in r) w.resolve(r.ok)
    else w.reject(Object.assign(new Error(r.error.message), r.error.code ? { code: r.error.code } : {}))
  }

  /** The commit in flight finishes (its result is delivered synchronously), then the writer stops. */
  close(): void {
    if (this.closed) return
    const deadline = Date.now() + CLOSE_WAIT_MS
    const nap = new Int32Array(new SharedArrayBuffer(4))
    while (this.waiting.length && Date.now() < deadline) {
      const m = receiveMessageOnPort(this.port)
      if (m) this.reply(m.message as WorkerReply)
      else Atomics.wait(nap, 0, 0, 5)
    }
    this.closed = true
    // The writer closes its connection and ends (its last port closed).
    this.worker.postMessage({ close: true })
    this.port.close()
  }
}

/** A writer thread for a database file; on the calling thread otherwise (in memory, or no worker wanted). */
export function committerFor(db: Db, thread: boolean): Committer {
  return thread && !db.memory ? new WorkerCommitter(db) : new InlineCommitter(db)
}
