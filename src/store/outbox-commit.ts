// The outbox's group commit as one transaction over a batch the main thread put together (new rows,
// the hub's acknowledgements, drops, the commit participants' writes, and the quota). It runs on a
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
