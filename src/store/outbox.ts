// The durable outbox: every message on its way to the hub lives here from the moment the gateway
// acknowledges it until the hub PUBACKs it. Writes are group-committed: everything enqueued in one
// turn of the event loop (a whole socket read of publishes, many devices at once) becomes one
// transaction, so synchronous=FULL costs one fsync per batch, not per message.
import { EventEmitter } from 'node:events'
import { statSync } from 'node:fs'
import path from 'node:path'
import type { Statement } from 'better-sqlite3'
import type { Db } from './db.js'
import type { BatchDrop, CommitBatch, CommitResult, CommitterSettings, SqlWrite } from './outbox-commit.js'
import { committerFor, InlineCommitter, type Committer } from './outbox-committer.js'
import { GroupCommit } from './group-commit.js'
import { freeBytes, isDiskFull } from './db.js'
import { isDamagedDatabase } from '../core/damaged-file.js'
import type { Ballast } from './ballast.js'
import type { Uplink } from '../core/types.js'
import type { UpTopic } from '../core/hub-topics.js'
import { deviceKey } from '../core/types.js'
import { formatUpTopic } from '../core/hub-topics.js'
import type { DropReason, OutboxStats, Priority } from './outbox-types.js'

export type { DropReason, OutboxStats, Priority } from './outbox-types.js'
export type { SqlWrite } from './outbox-commit.js'

export const PRIORITIES = [0, 1, 2] as const satisfies readonly Priority[]

/** Priority class of an up message: 0 replies, 1 control and internal, 2 telemetry (DESIGN.md). */
const NO_BYTES = new Uint8Array(0)

export function priorityOf(t: UpTopic): Priority {
  switch (t.kind) {
    case 'cmd_resp':
    case 'rpc_resp':
      return 0
    case 'upload_data':
      return t.name?.startsWith('$') ? 1 : 2
    case 'update_status':
    case 'update_ota_status':
    case 'get':
    case 'm2m':
      return 1
  }
}

export interface OutboxRow {
  id: number
  prio: Priority
  device: string
  kind: string
  topic: string
  payload: Buffer
  receivedAt: number
}


// An OutboxRow's columns, in the order read() takes them from a raw row.
const ROW_COLUMNS = 'id, prio, device, kind, topic, payload, received_at'

// What a row costs against the quota besides its topic and payload (index entries, row header).
const ROW_OVERHEAD = 64

// Quota eviction reads its candidates in pages of this many rows.
const EVICT_PAGE = 256

// Hub acknowledgements wait at most this long, or until this many are pending, for a commit.
const ACK_DELAY_MS = 50
const ACK_BATCH_MAX = 5_000

/** Free space the data disk needs before intake resumes after it was full. */
export const RESUME_FREE_BYTES = 1 << 20

/** A new row of a batch, before it is written. */
interface FreshRow {
  up: Uplink
  topic: string
  prio: Priority
  bytes: number
  device: string
}

interface Pending {
  /** Absent for a barrier: a caller that only needs its participants' writes committed. */
  up?: Uplink
  resolve: () => void
  reject: (err: Error) => void
}

/**
 * Writes that must commit atomically with the outbox rows of the same batch (the rules' state: a
 * window accumulator and the message that fed it are durable together, or neither is). `write`
 * hands over what is staged (it joins the group-commit transaction); then `committed` or, if the
 * transaction failed, `failed` (the staged writes are gone: the participant puts its memory back to
 * what is on disk).
 */
export interface CommitParticipant {
  write(): SqlWrite[]
  committed(): void
  failed(): void
}

export interface OutboxOptions {
  maxBytes: number
  rpcRespTtlMs: number
  /** Space reserved on the data disk, released when the disk is full (decision 0015-wal-full-disk). */
  ballast?: Ballast
  /**
   * Readers take one device's rows (northbound devices mode): keep the index that finds them
   * (outbox_by_device), created here if missing; without it, dropped (it costs every insert and
   * delete). Default false.
   */
  byDevice?: boolean
  /** Commit on a writer thread of its own (the gateway; decision 0022-store-off-event-loop). Default: on the calling thread. */
  writerThread?: boolean
  /** After each commit (the WAL's checkpointer counts them: wal-checkpointer.ts). */
  onCommit?: () => void
}

/**
 * Events: 'committed' (new rows are readable), 'uplinks' (the Uplinks of that commit, for observers), 'dropped' ({reason, count}), 'evicted' (ids the quota
 * removes, told when the batch that deletes them is put together: readers holding them must forget them), 'full' (disk full, intake must stop),
 * 'writable' (probe() found room again after 'full'), 'relieved' ({ballastBytes, walBytes}: space the
 * gateway gave back to itself on a full disk), 'error' (a commit failed for another reason than a
 * full disk, or a read found the database damaged).
 */
export class Outbox extends EventEmitter {
  private pending: Pending[] = []
  private acked: number[] = []
  private drops: BatchDrop[] = []
  // The quota's victims in the commit in flight: read() passes over them until it is back, so that
  // the hub link never publishes a row that is being evicted (decision 0022-store-off-event-loop).
  private evicting = new Set<number>()
  // Rows published to the hub and awaiting its PUBACK. Quota eviction passes over them: they are
  // leaving anyway, and evicting one would count as dropped a message the hub then acknowledges.
  private readonly sending = new Set<number>()
  private readonly group = new GroupCommit(() => this.flush(), ACK_DELAY_MS)
  private readonly committer: Committer
  private totals = { messages: 0, bytes: 0 }
  private byPrio: Record<Priority, { messages: number; bytes: number }> = {
    0: { messages: 0, bytes: 0 },
    1: { messages: 0, bytes: 0 },
    2: { messages: 0, bytes: 0 },
  }
  private dropCounts: Record<DropReason, number> = { quota: 0, rpc_resp_expired: 0 }
  private diskFull = false
  private closed = false
  private readonly participants: CommitParticipant[] = []
  private readonly st: {
    oldest: Statement
    readPrio: Statement
    readPrioDevice: Statement
    bumpCounter: Statement
    leavingBytes: Statement
    evictCandidates: Statement
  }

  constructor(
    private readonly db: Db,
    private readonly opts: OutboxOptions,
  ) {
    super()
    try {
      db.exec(opts.byDevice ? 'CREATE INDEX IF NOT EXISTS outbox_by_device ON outbox (device, prio, id)' : 'DROP INDEX IF EXISTS outbox_by_device')
    } catch {
      // A full disk at start: the reads by device are slower without it, never wrong; the next start tries again.
    }
    this.st = {
      // The first row of each priority by id (rows go in in arrival order), through outbox_by_prio:
      // three index seeks, where MIN(received_at) read the whole table (1 s at 2M rows, on every
      // health call and metrics scrape).
      oldest: db.prepare(
        `SELECT MIN(t) AS t FROM (${[0, 1, 2].map((p) => `SELECT (SELECT received_at FROM outbox INDEXED BY outbox_by_prio WHERE prio = ${p} ORDER BY id LIMIT 1) AS t`).join(' UNION ALL ')})`,
      ),
      // The columns an OutboxRow has, as arrays (.raw()): cheaper to make than better-sqlite3's
      // objects with named keys, even with the OutboxRow made from each (bench/outbox-statements.ts).
      readPrio: db.prepare(`SELECT ${ROW_COLUMNS} FROM outbox WHERE prio = ? AND id > ? ORDER BY id LIMIT ?`).raw(),
      readPrioDevice: db.prepare(`SELECT ${ROW_COLUMNS} FROM outbox WHERE device = ? AND prio = ? AND id > ? ORDER BY id LIMIT ?`).raw(),
      bumpCounter: db.prepare(
        'INSERT INTO counters (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value',
      ),
      // What the rows a batch deletes anyway free, in one statement (a drain's batch has thousands).
      leavingBytes: db.prepare('SELECT COALESCE(SUM(bytes), 0) FROM outbox WHERE id IN (SELECT value FROM json_each(?))').pluck(),
      evictCandidates: db.prepare(`SELECT id, bytes FROM outbox WHERE prio = ? AND id > ? ORDER BY id LIMIT ${EVICT_PAGE}`),
    }
    for (const r of db.prepare('SELECT prio, COUNT(*) AS n, COALESCE(SUM(bytes), 0) AS b FROM outbox GROUP BY prio').all() as {
      prio: Priority
      n: number
      b: number
    }[]) {
      this.byPrio[r.prio] = { messages: r.n, bytes: r.b }
      this.totals.messages += r.n
      this.totals.bytes += r.b
    }
    for (const r of db.prepare("SELECT name, value FROM counters WHERE name LIKE 'dropped.%'").all() as {
      name: string
      value: number
    }[]) {
      this.dropCounts[r.name.slice('dropped.'.length) as DropReason] = r.value
    }
    this.committer = committerFor(db, opts.writerThread ?? false)
  }

  get maxBytes(): number {
    return this.opts.maxBytes
  }

  get isFull(): boolean {
    return this.diskFull
  }

  /** Resolves once the message is committed to disk: only then may the sender be acknowledged. */
  enqueue(up: Uplink): Promise<void> {
    if (this.closed) return Promise.reject(new Error('outbox closed'))
    return new Promise((resolve, reject) => {
      this.pending.push({ up, resolve, reject })
      this.group.now()
    })
  }

  /** Joins every group commit from now on (see CommitParticipant). */
  addParticipant(p: CommitParticipant): void {
    this.participants.push(p)
  }

  /**
   * Resolves with the next group commit, without a row of its own: for a caller whose work is only a
   * participant's writes (a message the rules absorbed into a window). Rejects if that commit fails.
   */
  barrier(): Promise<void> {
    if (this.closed) return Promise.reject(new Error('outbox closed'))
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject })
      this.group.now()
    })
  }

  /** The hub acknowledged this row; its deletion joins the next group commit. */
  ack(id: number): void {
    this.sending.delete(id)
    this.acked.push(id)
    // A deletion need not be durable at once: if it is lost in a crash the row is sent again with
    // its MessageId, which the hub drops. So deletions ride along with the next commit of new
    // messages, and only get a commit (an fsync) of their own after a short while.
    if (this.acked.length >= ACK_BATCH_MAX) this.group.now()
    else this.group.later()
  }

  /** This row was published to the hub: keep it from quota eviction until `ack` or `unsent`. */
  sent(id: number): void {
    this.sending.add(id)
  }

  /** These rows will not be acknowledged on the connection they were sent on (it went down). */
  unsent(ids: Iterable<number>): void {
    for (const id of ids) this.sending.delete(id)
  }

  /**
   * Commit everything waiting. Public so that shutdown can finish the batch in flight. On the calling
   * thread the commit is done when this returns; on the writer thread the promise says when.
   */
  flush(): Promise<void> {
    this.group.taken()
    if (this.closed) return Promise.resolve()
    const running = this.group.running
    if (running) {
      // One commit at a time: this one starts once the one in flight is done, with all that gathered.
      return running.then(() => this.flush())
    }
    return this.commitWith(this.committer)
  }

  private commitWith(committer: Committer): Promise<void> {
    if (this.pending.length === 0 && this.acked.length === 0 && this.drops.length === 0) return Promise.resolve()
    const batch = this.pending
    const acked = this.acked
    const drops = this.drops
    this.pending = []
    this.acked = []
    this.drops = []
    const rows: OutboxRow[] = []
    let out: CommitResult | Promise<CommitResult>
    try {
      const b = this.batch(batch, acked, drops, rows)
      out = committer.commit(b)
    } catch (err) {
      this.failed(err as Error, batch, acked)
      return Promise.resolve()
    }
    if (!(out instanceof Promise)) {
      this.done(out, batch, rows)
      return Promise.resolve()
    }
    return this.group.track(
      out.then(
        (r) => this.done(r, batch, rows),
        (err: Error) => this.failed(err, batch, acked),
      ),
    )
  }

  private batch(batch: Pending[], acked: number[], drops: BatchDrop[], rows: OutboxRow[]): CommitBatch {
    const fresh: FreshRow[] = []
    for (const p of batch) {
      if (!p.up) continue
      const up = p.up
      const topic = formatUpTopic(up.topic)
      fresh.push({ up, topic, prio: priorityOf(up.topic), bytes: topic.length + up.payload.length + ROW_OVERHEAD, device: deviceKey(up.topic) })
    }
    const { victims, unsaved } = this.eviction(fresh, acked, drops)
    if (victims.length || unsaved.size) {
      drops = drops.concat({ ids: victims, reason: 'quota', unsaved: unsaved.size })
      this.evicting = new Set(victims)
      // Readers holding them (the hub link's read-ahead) forget them now, before the commit runs.
      if (victims.length) this.emit('evicted', victims)
    }
    const packs = this.committer.packs
    const cols: CommitBatch['rows'] = { prio: [], device: [], kind: [], topic: [], bytes: [], receivedAt: [], ends: [], payloads: NO_BYTES, ...(packs ? {} : { list: [] }) }
    let size = 0
    for (let i = 0; i < fresh.length; i++) {
      if (unsaved.has(i)) continue
      const { up, topic, prio, bytes, device } = fresh[i]
      cols.prio.push(prio)
      cols.device.push(device)
      cols.kind.push(up.topic.kind)
      cols.topic.push(topic)
      cols.bytes.push(bytes)
      cols.receivedAt.push(up.receivedAt)
      size += up.payload.length
      cols.ends.push(size)
      cols.list?.push(up.payload)
      rows.push({ id: 0, prio, device, kind: up.topic.kind, topic, payload: up.payload, receivedAt: up.receivedAt })
    }
    if (packs) {
      // One buffer of its own for all payloads: it is moved to the writer thread, not copied.
      const payloads = Buffer.allocUnsafeSlow(size)
      let at = 0
      for (const r of rows) at += r.payload.copy(payloads, at)
      cols.payloads = payloads
    }
    const writes = this.participants.flatMap((p) => p.write())
    return { rows: cols, acked, drops, writes }
  }

  /**
   * Over quota: the oldest telemetry goes first, then the middle class, replies last (DESIGN.md);
   * never a row on its way to the hub (it is leaving anyway, and evicting it would count as dropped
   * a message the hub then acknowledges). The rows on their way count as gone already: the quota
   * may be passed by what is in flight, at most the hub link's window (4 MiB, decision 0028), for the
   * time the hub takes to acknowledge it, rather than a new message be dropped for bytes that are
   * about to be freed. Chosen here, on the main thread, when the batch is put
   * together: no commit is in flight then (one at a time), so the totals and the rows read are the
   * committed state exactly, and `sending` is complete; the victims are hidden from read() until the
   * commit is back. New rows of this batch go last within their class (`unsaved`: never written).
   */
  private eviction(fresh: FreshRow[], acked: number[], drops: BatchDrop[]): { victims: number[]; unsaved: Set<number> } {
    const victims: number[] = []
    const unsaved = new Set<number>()
    const max = this.opts.maxBytes
    let bytes = this.totals.bytes
    for (const f of fresh) bytes += f.bytes
    if (bytes <= max) return { victims, unsaved }
    // What this batch deletes anyway (the hub's acknowledgements, other drops) frees its bytes first.
    const leaving = new Set(acked)
    for (const d of drops) for (const id of d.ids) leaving.add(id)
    for (const id of this.sending) leaving.add(id)
    if (leaving.size) bytes -= this.st.leavingBytes.get(JSON.stringify([...leaving])) as number
    for (const prio of [2, 1, 0] as const) {
      let after = 0
      while (bytes > max) {
        const page = this.st.evictCandidates.all(prio, after) as { id: number; bytes: number }[]
        if (page.length === 0) break
        after = page[page.length - 1].id
        for (const r of page) {
          if (bytes <= max) break
          if (this.sending.has(r.id) || leaving.has(r.id)) continue
          victims.push(r.id)
          bytes -= r.bytes
        }
      }
      for (let i = 0; i < fresh.length && bytes > max; i++) {
        if (fresh[i].prio !== prio) continue
        unsaved.add(i)
        bytes -= fresh[i].bytes
      }
      if (bytes <= max) break
    }
    return { victims, unsaved }
  }

  private done(r: CommitResult, batch: Pending[], rows: OutboxRow[]): void {
    for (const prio of PRIORITIES) {
      const d = r.delta[prio]
      this.byPrio[prio].messages += d.messages
      this.byPrio[prio].bytes += d.bytes
      this.totals.messages += d.messages
      this.totals.bytes += d.bytes
    }
    for (let i = 0; i < rows.length; i++) rows[i].id = r.ids[i]
    this.evicting.clear()
    this.opts.onCommit?.()
    for (const part of this.participants) part.committed()
    for (const [reason, n] of Object.entries(r.dropped) as [DropReason, number][]) {
      this.dropCounts[reason] += n
      this.emit('dropped', { reason, count: n })
    }
    // A commit can succeed with the disk still full (it fits into WAL space a failed one left
    // allocated): it is durable, but only probe() (which asks for headroom) reopens intake.
    for (const p of batch) p.resolve()
    // The new rows go with the event: a reader that is caught up takes them from here instead of
    // reading them back from the database.
    if (rows.length) this.emit('committed', rows)
    // Observers (local history) get the uplinks themselves, transport metadata included, once they
    // are durable; only when someone listens, so the hot path pays nothing otherwise.
    if (rows.length && this.listenerCount('uplinks')) {
      this.emit('uplinks', batch.flatMap((p) => (p.up ? [p.up] : [])))
    }
  }

  private failed(err: Error, batch: Pending[], acked: number[]): void {
    // Nothing of this batch is on disk: refuse it all, so no sender gets an acknowledgement.
    // The acknowledged deletions are kept for the next commit (worst case a duplicate later).
    this.acked = acked.concat(this.acked)
    // The quota's victims are still there; the next commit chooses again.
    this.evicting.clear()
    for (const part of this.participants) part.failed()
    // What gathered while this commit was in flight was staged on top of the state that is now put
    // back to what is on disk: it is refused too (its senders send it again).
    const refused = batch.concat(this.pending)
    this.pending = []
    for (const p of refused) p.reject(err)
    if (isDiskFull(err)) {
      if (!this.diskFull) {
        this.diskFull = true
        this.emit('full', err)
        this.relieve()
      }
    } else {
      this.emit('error', err)
    }
  }

  /** Drop rows the hub no longer wants (an rpc_resp after its RPC timed out): a commit of their own. */
  drop(ids: number[], reason: DropReason): Promise<void> {
    if (ids.length === 0) return Promise.resolve()
    this.drops.push({ ids, reason })
    return this.flush()
  }

  /** Rows of one priority after a cursor, in order; optionally only one device's. Never a row being evicted. */
  read(prio: Priority, afterId: number, limit: number, device?: string): OutboxRow[] {
    type Raw = [number, Priority, string, string, string, Buffer, number]
    const out: OutboxRow[] = []
    for (;;) {
      let raw: Raw[]
      try {
        raw = (device === undefined ? this.st.readPrio.all(prio, afterId, limit) : this.st.readPrioDevice.all(device, prio, afterId, limit)) as Raw[]
      } catch (err) {
        // A damaged page the start's check did not reach (a value's overflow pages), or damage done
        // while running: the drain is where it shows. 'error' tells the owner (the gateway exits so
        // that the next start salvages, decision 0014-damaged-store); the caller gets the error too.
        if (isDamagedDatabase(err)) this.emit('error', err)
        throw err
      }
      const evicting = this.evicting.size > 0
      for (const r of raw) {
        if ((evicting && this.evicting.has(r[0])) || out.length >= limit) continue
        out.push({ id: r[0], prio: r[1], device: r[2], kind: r[3], topic: r[4], payload: r[5], receivedAt: r[6] })
      }
      // A page the eviction in flight thinned out: read on, so that a reader is not told "no more"
      // while rows wait behind the victims.
      if (raw.length < limit || out.length >= limit) return out
      afterId = raw[raw.length - 1][0]
    }
  }

  isRpcRespExpired(row: OutboxRow, now = Date.now()): boolean {
    return row.kind === 'rpc_resp' && now - row.receivedAt > this.opts.rpcRespTtlMs
  }

  stats(now = Date.now()): OutboxStats {
    const oldest = this.totals.messages ? ((this.st.oldest.get() as { t: number | null }).t ?? now) : now
    return {
      messages: this.totals.messages,
      bytes: this.totals.bytes,
      oldestAgeMs: Math.max(0, now - oldest),
      byPriority: structuredClone(this.byPrio),
      dropped: { ...this.dropCounts },
      maxBytes: this.opts.maxBytes,
    }
  }

  /** While the disk is full: true (and 'writable') once there is room again and a write succeeds. */
  /** At start: a disk without headroom is treated as full right away, before a write fails on it. */
  checkHeadroom(): void {
    try {
      if (freeBytes(path.dirname(this.db.name)) >= RESUME_FREE_BYTES || this.diskFull) return
    } catch {
      return
    }
    this.diskFull = true
    this.emit('full', Object.assign(new Error('less than 1 MiB free on the data disk'), { code: 'ENOSPC' }))
  }

  /**
   * A full disk filled by the gateway's own database: give space back to it. The ballast goes
   * first (room for the checkpoint to write the WAL's pages into the database file), then the WAL
   * is checkpointed and truncated to nothing; the deletions the hub's PUBACKs brought can then
   * commit, and the rows they free are reused by new ones. Again at every probe while full.
   */
  private relieve(): void {
    const ballastBytes = this.opts.ballast?.release() ?? 0
    const wal = `${this.db.name}-wal`
    let walBytes = 0
    try {
      const before = statSync(wal).size
      this.db.pragma('wal_checkpoint(TRUNCATE)')
      walBytes = before - statSync(wal).size
    } catch {
      // no WAL file, or the checkpoint could not finish: the next probe tries again
    }
    if (ballastBytes || walBytes > 0) this.emit('relieved', { ballastBytes, walBytes })
    if (this.acked.length) void this.flush()
  }

  /** Room for new rows: free space on the disk plus the database's own free pages (reused first). */
  private room(): number {
    const free = freeBytes(path.dirname(this.db.name))
    try {
      const pages = this.db.pragma('freelist_count', { simple: true }) as number
      return free + pages * (this.db.pragma('page_size', { simple: true }) as number)
    } catch {
      return free
    }
  }

  probe(): boolean {
    if (!this.diskFull) return true
    this.relieve()
    // A tiny write alone proves nothing: it fits into the WAL space the failed commit had already
    // allocated, with the disk still full, and intake would flap open and shut. Ask for headroom.
    try {
      if (this.room() < RESUME_FREE_BYTES) return false
    } catch {
      // No statfs for this path: the write below decides.
    }
    try {
      this.db.transaction(() => this.st.bumpCounter.run('store.probe', 1))()
    } catch {
      return false
    }
    this.diskFull = false
    // The ballast again, when the disk has room for it and the headroom besides.
    this.opts.ballast?.ensure(2 * RESUME_FREE_BYTES)
    this.emit('writable')
    this.group.now()
    return true
  }

  /** Where and how the group commits run: on a writer thread or not, and the connection's synchronous and journal mode, read back from it. */
  durability(): Promise<CommitterSettings> {
    return this.committer.settings()
  }

  /** Refuse new messages, commit what is waiting. */
  close(): void {
    if (this.closed) return
    this.closed = true
    // The commit in flight on the writer thread finishes first; what gathered meanwhile is
    // committed here, on this thread, before the connection closes.
    this.committer.close()
    this.group.cancel()
    const waiting = this.pending.length || this.acked.length || this.drops.length
    if (waiting && this.db.open) void this.commitWith(new InlineCommitter(this.db))
  }
}
