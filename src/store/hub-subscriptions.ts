// The topic filters each hub link holds. The hub keeps a persistent session's subscriptions across
// our restarts; this record lets the next run unsubscribe what is no longer wanted (a removed
// device, a dropped tag) instead of receiving it forever.
import type { Statement } from 'better-sqlite3'
import type { Db } from './db.js'

export class HubSubscriptionStore {
  private readonly st: Record<'load' | 'clear' | 'add', Statement>

  constructor(private readonly db: Db) {
    this.st = {
      load: db.prepare('SELECT filter FROM hub_subscriptions WHERE link = ? ORDER BY filter'),
      clear: db.prepare('DELETE FROM hub_subscriptions WHERE link = ?'),
      add: db.prepare('INSERT INTO hub_subscriptions (link, filter) VALUES (?, ?)'),
    }
  }

  load(link: string): string[] {
    return (this.st.load.all(link) as { filter: string }[]).map((r) => r.filter)
  }

  save(link: string, filters: Iterable<string>): void {
    this.db.transaction(() => {
      this.st.clear.run(link)
      for (const f of new Set(filters)) this.st.add.run(link, f)
    })()
  }
}
