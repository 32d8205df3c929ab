// The rules' durable state (window accumulators, last reported values, alarm states), one JSON value
// per key in the gateway's database. Changes are staged in memory and written by the outbox's group
// commit, in the same transaction as the batch's messages (decision 0013-rules): a message that fed a
// window and the window's new sum are on disk together or not at all, for the price of one upsert per
// changed key per batch (several messages of one device in a batch collapse into one write).
import type { Statement } from 'better-sqlite3'
import type { Db } from './db.js'
import type { Outbox } from './outbox.js'
import type { RuleStateStore } from '../core/types.js'

export class RuleStateTable implements RuleStateStore {
  private staged = new Map<string, string | undefined>()
  private readonly failedListeners: (() => void)[] = []
  private readonly st: { put: Statement; del: Statement; all: Statement }

  constructor(
    db: Db,
    private readonly outbox: Outbox,
  ) {
    this.st = {
      put: db.prepare('INSERT INTO rule_state (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value'),
      del: db.prepare('DELETE FROM rule_state WHERE key = ?'),
      all: db.prepare('SELECT key, value FROM rule_state'),
    }
    outbox.addParticipant({
      write: () => {
        for (const [key, value] of this.staged) {
          if (value === undefined) this.st.del.run(key)
          else this.st.put.run(key, value)
        }
      },
      committed: () => {
        if (this.staged.size) this.staged = new Map()
      },
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
