// The outbox's group commit as one transaction over a batch the main thread put together (new rows,
// the hub's acknowledgements, drops (the quota's victims among them), the commit participants'
// writes). It runs on a
// writer thread of its own (outbox-worker.ts) with its own connection to gateway.db, so the fsync of
// synchronous=FULL never blocks the event loop: the main thread goes on parsing, acknowledging and
// publishing to the hub while a commit is on its way to the disk, and the next batch gathers
// meanwhile (decision 0022-store-off-event-loop). Where it runs: outbox-committer.ts.
import type Database from 'better-sqlite3'
import type { Statement } from 'better-sqlite3'

import type { DropReason, Priority } from './outbox-types.js'

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
  /** Instead of `payloads`, for a commit on the calling thread: the payloads as they came (nothing copied). */
  list?: Uint8Array[]
}

/** Rows deleted for a reason (counted): the hub no longer wants them, or the quota evicts them. */
export interface BatchDrop {
  ids: number[]
  reason: DropReason
  /** New rows of this batch dropped without being written (the quota, when the batch alone is over it): counted with the rest. */
  unsaved?: number
}

export interface CommitBatch {
  rows: NewRows
  /** Rows the hub acknowledged. */
  acked: number[]
  /**
   * Rows dropped for a reason (counted). The quota's victims are among them: chosen by the main
   * thread when it put the batch together (Outbox.batch), never in the transaction, so that a row the
   * hub link publishes while the commit runs cannot be evicted under it.
   */
  drops: BatchDrop[]
  writes: SqlWrite[]
}

export interface CommitResult {
  /** The ids the new rows got, in order. */
  ids: number[]
  /** Net change of the totals per priority (inserted minus deleted and dropped). */
  delta: Record<Priority, { messages: number; bytes: number }>
  dropped: Partial<Record<DropReason, number>>
}

/** Where and how a committer's connection commits (read back from the connection itself). */
export interface CommitterSettings {
  thread: boolean
  /** 2 is FULL. */
  synchronous: number
  journalMode: string
}

export function connectionSettings(db: Database.Database, thread: boolean): CommitterSettings {
  return { thread, synchronous: db.pragma('synchronous', { simple: true }) as number, journalMode: db.pragma('journal_mode', { simple: true }) as string }
}

export interface CommitError {
  message: string
  code?: string
}

/** Runs a batch as one transaction on a connection. */
export class OutboxTransaction {
  private readonly st: { insert: Statement; weigh: Statement; delSet: Statement; bumpCounter: Statement }
  private readonly prepared = new Map<string, Statement>()

  constructor(private readonly db: Database.Database) {
    this.st = {
      insert: db.prepare('INSERT INTO outbox (prio, device, kind, topic, payload, bytes, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      // A batch of deletions in one pass over the ids (bench/outbox-statements.ts; docs/performance.md,
      // "2026-12-02: the outbox's drain"): what the rows still there weigh, per priority, then their
      // deletion. Counted in SQL, so a row already gone (evicted, or acknowledged twice) counts
      // nothing, and no row becomes a JS value.
      weigh: db.prepare('SELECT prio, COUNT(*), SUM(bytes) FROM outbox WHERE id IN (SELECT value FROM json_each(?)) GROUP BY prio').raw(),
      delSet: db.prepare('DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))'),
      bumpCounter: db.prepare('INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value'),
    }
  }

  run(b: CommitBatch): CommitResult {
    const delta: CommitResult['delta'] = { 0: { messages: 0, bytes: 0 }, 1: { messages: 0, bytes: 0 }, 2: { messages: 0, bytes: 0 } }
    const res: CommitResult = { ids: [], delta, dropped: {} }
    const payloads = Buffer.from(b.rows.payloads.buffer, b.rows.payloads.byteOffset, b.rows.payloads.byteLength)
    this.db.transaction(() => {
      this.deleteRows(b.acked, delta)
      for (const d of b.drops) this.drop(d.reason, this.deleteRows(d.ids, delta) + (d.unsaved ?? 0), res)
      const r = b.rows
      let start = 0
      for (let i = 0; i < r.prio.length; i++) {
        const end = r.ends[i]
        const ins = this.st.insert.run(r.prio[i], r.device[i], r.kind[i], r.topic[i], r.list ? r.list[i] : payloads.subarray(start, end), r.bytes[i], r.receivedAt[i])
        start = end
        res.ids.push(Number(ins.lastInsertRowid))
        delta[r.prio[i]].messages++
        delta[r.prio[i]].bytes += r.bytes[i]
      }
      for (const w of b.writes) this.statement(w.sql).run(...w.args)
    })()
    return res
  }

  private statement(sql: string): Statement {
    let st = this.prepared.get(sql)
    if (!st) this.prepared.set(sql, (st = this.db.prepare(sql)))
    return st
  }

  /**
   * Deletes the rows of these ids that are still there (one the quota evicted, or one acknowledged
   * twice, is not there) and takes exactly those off the totals: how many it deleted.
   */
  private deleteRows(ids: readonly number[], delta: CommitResult['delta']): number {
    if (ids.length === 0) return 0
    const set = JSON.stringify(ids)
    let n = 0
    for (const [prio, count, bytes] of this.st.weigh.all(set) as [Priority, number, number][]) {
      delta[prio].messages -= count
      delta[prio].bytes -= bytes
      n += count
    }
    if (n) this.st.delSet.run(set)
    return n
  }

  private drop(reason: DropReason, n: number, res: CommitResult): void {
    if (!n) return
    this.st.bumpCounter.run(`dropped.${reason}`, n)
    res.dropped[reason] = (res.dropped[reason] ?? 0) + n
  }
}

