// The rules' durable state (window accumulators, last reported values, alarm states), one JSON value
// per key in the gateway's database. Changes are staged in memory and written by the outbox's group
// commit, in the same transaction as the batch's messages (decision 0013-rules): a message that fed a
// window and the window's new sum are on disk together or not at all, for the price of one upsert per
// changed key per batch (several messages of one device in a batch collapse into one write).
import type { Statement } from 'better-sqlite3'
import type { Db } from './db.js'
import type { Outbox, SqlWrite } from './outbox.js'
import type { RuleStateStore } from '../core/types.js'

const PUT = 'INSERT INTO rule_state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value'
const DEL = 'DELETE FROM rule_state WHERE key = ?'

export class RuleStateTable implements RuleStateStore {
  private staged = new Map<string, string | undefined>()
  private readonly failedListeners: (() => void)[] = []
  private readonly st: { all: Statement }

  constructor(
    db: Db,
    private readonly outbox: Outbox,
  ) {
    this.st = {
      all: db.prepare('SELECT key, value FROM rule_state'),
    }
    outbox.addParticipant({
      // What is staged joins the commit being put together; what is staged from now on, the next.
      write: () => {
        if (!this.staged.size) return []
        const writes: SqlWrite[] = []
        for (const [key, value] of this.staged) writes.push(value === undefined ? { sql: DEL, args: [key] } : { sql: PUT, args: [key, value] })
        this.staged = new Map()
        return writes
      },
      committed: () => undefined,
      failed: () => {
        this.staged = new Map()
        for (const l of this.failedListeners) l()
      },
    })
  }

  load(): Map<string, string> {
    const rows = this.st.all.all() as { key: string; value: string }[]
    return new Map(rows.map((r) => [r.key, r.value]))
  }

  stage(key: string, value: string | undefined): void {
    this.staged.set(key, value)
  }

  committed(): Promise<void> {
    return this.outbox.barrier()
  }

  onFailed(listener: () => void): void {
    this.failedListeners.push(listener)
  }
}
