// Durable command state: the queue of commands waiting for their device, the recent history a
// technician sees, and the seen-set that keeps a redelivered RequestId from running twice, even
// across a gateway restart (PROTOCOL.md "Rules every receiver applies").
import type { Statement } from 'better-sqlite3'
import type { Db } from './db.js'
import type { Command } from '../core/types.js'
import { deviceKey, parseDeviceKey } from '../core/types.js'

// held: stored and deduplicated, but kept back from delivery by a command hold (the OTA relay
// until the image is verified); released into 'queued' or finished by the hold.
export type CommandState = 'held' | 'queued' | 'delivered' | 'expired' | 'replied' | 'dropped' | 'failed'
export type CommandOrigin = 'hub' | 'local' | 'm2m' | 'tag' | 'rule'

export interface StoredCommand {
  id: number
  command: Command
  origin: CommandOrigin
  state: CommandState
  createdAt: number
  updatedAt: number
  reply?: Buffer
  reason?: string
}

interface Row {
  id: number
  device: string
  type: Command['type']
  name: string
  encoding: Command['encoding']
  request_id: string
  expires_at: number | null
  sender: string | null
  payload: Buffer
  origin: CommandOrigin
  state: CommandState
  created_at: number
  updated_at: number
  reply: Buffer | null
  reason: string | null
  via_tag: string | null
}

// How many finished commands per device the history keeps for the technician's view.
const HISTORY_PER_DEVICE = 100

export class CommandStore {
  private readonly st: Record<
    'seen' | 'markSeen' | 'insert' | 'setState' | 'setReply' | 'pending' | 'recent' | 'byRequest' | 'expireSeen' | 'expireQueued' | 'trim' | 'release' | 'held' | 'byId' | 'waiting',
    Statement
  >
  private watcher?: (id: number) => void

  constructor(private readonly db: Db) {
    this.st = {
      seen: db.prepare('SELECT 1 FROM seen_requests WHERE scope = ? AND request_id = ?'),
      markSeen: db.prepare('INSERT OR IGNORE INTO seen_requests (scope, request_id, seen_at) VALUES (?, ?, ?)'),
      insert: db.prepare(
        `INSERT INTO commands (device, type, name, encoding, request_id, expires_at, sender, payload, origin, state, created_at, updated_at, via_tag)
         VALUES (@device, @type, @name, @encoding, @requestId, @expiresAt, @sender, @payload, @origin, @state, @now, @now, @viaTag)`,
      ),
      // A reply is final: a device may answer before its PUBACK is matched (or after a delivery
      // timeout), and the delivery outcome recorded afterwards must not hide the reply.
      setState: db.prepare("UPDATE commands SET state = ?, reason = ?, updated_at = ? WHERE id = ? AND state != 'replied'"),
      setReply: db.prepare("UPDATE commands SET state = 'replied', reply = ?, updated_at = ? WHERE id = ?"),
      pending: db.prepare("SELECT * FROM commands WHERE device = ? AND state = 'queued' ORDER BY id"),
      recent: db.prepare('SELECT * FROM commands WHERE device = ? ORDER BY id DESC LIMIT ?'),
      byRequest: db.prepare('SELECT * FROM commands WHERE device = ? AND request_id = ? ORDER BY id DESC LIMIT 1'),
      expireSeen: db.prepare('DELETE FROM seen_requests WHERE seen_at < ?'),
      expireQueued: db.prepare(
        "UPDATE commands SET state = 'expired', updated_at = @now WHERE state = 'queued' AND expires_at IS NOT NULL AND expires_at * 1000 < @now RETURNING id",
      ),
      trim: db.prepare(
        `DELETE FROM commands WHERE device = ? AND state NOT IN ('queued', 'held') AND id NOT IN
           (SELECT id FROM commands WHERE device = ? ORDER BY id DESC LIMIT ${HISTORY_PER_DEVICE})`,
      ),
      release: db.prepare("UPDATE commands SET state = 'queued', payload = ?, updated_at = ? WHERE id = ? AND state = 'held'"),
      held: db.prepare("SELECT * FROM commands WHERE state = 'held' ORDER BY id"),
      byId: db.prepare('SELECT * FROM commands WHERE id = ?'),
      waiting: db.prepare("SELECT device, COUNT(*) AS n FROM commands WHERE state IN ('queued', 'held') GROUP BY device"),
    }
  }

  /**
   * Told the id of each command stored or changed (the live stream): after the write, in its turn.
   * Bulk expiry (expireDue, sweep) tells each id it expired too. One watcher; keep it cheap.
   */
  watch(watcher: ((id: number) => void) | undefined): void {
    this.watcher = watcher
  }

  // Some writes run inside a transaction: a watcher's throw must not roll the command back.
  private tell(id: number): void {
    try {
      this.watcher?.(id)
    } catch {
      // the watcher is an observer: what it missed is its own loss
    }
  }

  /** Commands waiting for their device (queued or held), by device key. */
  waitingCounts(): Map<string, number> {
    return new Map((this.st.waiting.all() as { device: string; n: number }[]).map((r) => [r.device, r.n]))
  }

  /** Run several writes as one transaction (one fsync: a tag command fanned out to hundreds of children). */
  atomically<T>(fn: () => T): T {
    return this.db.transaction(fn)()
  }

  /** Has this RequestId (m2m: MessageId) been seen for this scope (a device key, or a tag topic)? */
  seen(scope: string, requestId: string): boolean {
    return this.st.seen.get(scope, requestId) !== undefined
  }

  /**
   * Record the command as seen and, when `state` is given, store it, in one transaction: after this
   * returns, a crash can neither lose the command nor run it twice. Returns false if it was a duplicate.
   */
  accept(scope: string, cmd: Command, origin: CommandOrigin, state?: CommandState): { fresh: boolean; id?: number } {
    return this.db.transaction(() => {
      const now = Date.now()
      if (this.st.markSeen.run(scope, cmd.requestId, now).changes === 0) return { fresh: false }
      if (!state) return { fresh: true }
      return { fresh: true, id: this.record(cmd, origin, state) }
    })()
  }

  /** Store a command without a seen-set entry (e.g. a fan-out copy whose scope was checked already). */
  record(cmd: Command, origin: CommandOrigin, state: CommandState): number {
    const now = Date.now()
    const id = Number(
      this.st.insert.run({
        device: deviceKey(cmd.device),
        type: cmd.type,
        name: cmd.name,
        encoding: cmd.encoding,
        requestId: cmd.requestId,
        expiresAt: cmd.expiresAt ?? null,
        sender: cmd.senderDeviceId ?? null,
        payload: cmd.payload,
        origin,
        state,
        now,
        viaTag: cmd.via?.tag ?? null,
      }).lastInsertRowid,
    )
    this.tell(id)
    return id
  }

  setState(id: number, state: CommandState, reason?: string): void {
    if (this.st.setState.run(state, reason ?? null, Date.now(), id).changes) this.tell(id)
  }

  setReply(id: number, reply: Buffer): void {
    if (this.st.setReply.run(reply, Date.now(), id).changes) this.tell(id)
  }

  /** A held command goes into the queue with this payload; false if it was not held (any more). */
  release(id: number, payload: Buffer): boolean {
    const released = this.st.release.run(payload, Date.now(), id).changes === 1
    if (released) this.tell(id)
    return released
  }

  /** Every held command, oldest first (a hold picks them up again after a restart). */
  held(): StoredCommand[] {
    return (this.st.held.all() as Row[]).map(toStored)
  }

  byId(id: number): StoredCommand | undefined {
    const r = this.st.byId.get(id) as Row | undefined
    return r && toStored(r)
  }

  /** Queued commands for a device, oldest first. */
  pending(deviceKeyStr: string): StoredCommand[] {
    return (this.st.pending.all(deviceKeyStr) as Row[]).map(toStored)
  }

  recent(deviceKeyStr: string, limit = 50): StoredCommand[] {
    return (this.st.recent.all(deviceKeyStr, limit) as Row[]).map(toStored)
  }

  byRequest(deviceKeyStr: string, requestId: string): StoredCommand | undefined {
    const r = this.st.byRequest.get(deviceKeyStr, requestId) as Row | undefined
    return r && toStored(r)
  }

  /** Mark queued commands whose ExpiresAt has passed as expired; returns how many. */
  expireDue(now = Date.now()): number {
    const ids = this.st.expireQueued.all({ now }) as { id: number }[]
    if (this.watcher) for (const { id } of ids) this.tell(id)
    return ids.length
  }

  /** Housekeeping: forget seen ids past their time to live, expire queued commands, trim history. */
  sweep(seenTtlMs: number, devices: string[]): number {
    return this.db.transaction(() => {
      const now = Date.now()
      this.st.expireSeen.run(now - seenTtlMs)
      const expired = this.expireDue(now)
      for (const d of devices) this.st.trim.run(d, d)
      return expired
    })()
  }
}

function toStored(r: Row): StoredCommand {
  return {
    id: r.id,
    command: {
      type: r.type,
      device: parseDeviceKey(r.device),
      name: r.name,
      encoding: r.encoding,
      requestId: r.request_id,
      expiresAt: r.expires_at ?? undefined,
      senderDeviceId: r.sender ?? undefined,
      payload: r.payload,
      ...(r.via_tag ? { via: { tag: r.via_tag } } : {}),
    },
    origin: r.origin,
    state: r.state,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    reply: r.reply ?? undefined,
    reason: r.reason ?? undefined,
  }
}
