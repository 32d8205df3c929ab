// The topic filters each hub link holds. The hub keeps a persistent session's subscriptions across
// our restarts; this record lets the next run unsubscribe what is no longer wanted (a removed
// device, a dropped tag) instead of receiving it forever.
import type { Statement } from 'better-sqlite3'
import type { Db } from './db.js'

export class HubSubscriptionStore {
  private readonly st: Record<'load' | 'clear' | 'add' | 'remove', Statement>

  constructor(private readonly db: Db) {
    this.st = {
      load: db.prepare('SELECT filter FROM hub_subscriptions WHERE link = ? ORDER BY filter'),
      clear: db.prepare('DELETE FROM hub_subscriptions WHERE link = ?'),
      add: db.prepare('INSERT OR IGNORE INTO hub_subscriptions (link, filter) VALUES (?, ?)'),
      remove: db.prepare('DELETE FROM hub_subscriptions WHERE link = ? AND filter = ?'),
    }
  }

  load(link: string): string[] {
    return (this.st.load.all(link) as { filter: string }[]).map((r) => r.filter)
  }

  save(link: string, filters: Iterable<string>): void {
    this.db.transaction(() => {
      this.st.clear.run(link)
      for (const f of filters) this.st.add.run(link, f)
    })()
  }

  /** A change to what the link holds: only these rows are written. */
  update(link: string, add: readonly string[], remove: readonly string[]): void {
    this.db.transaction(() => {
      for (const f of remove) this.st.remove.run(link, f)
      for (const f of add) this.st.add.run(link, f)
    })()
  }
}
