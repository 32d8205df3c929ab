// Durable "seen" sets with a time to live, for adapters that must drop what their peer sends twice
// (ChirpStack deduplicationIds, CoAP Message-IDs) also across a restart, without writing SQL.
import type { Statement } from 'better-sqlite3'
import type { Db } from './db.js'

export class SeenStore {
  private readonly st: Record<'mark' | 'refresh' | 'expire' | 'has' | 'forget', Statement>

  constructor(db: Db) {
    this.st = {
      mark: db.prepare('INSERT OR IGNORE INTO adapter_seen (scope, id, expires_at) VALUES (?, ?, ?)'),
      // An entry past its expiry that has not been swept yet counts as not seen.
      refresh: db.prepare('UPDATE adapter_seen SET expires_at = ? WHERE scope = ? AND id = ? AND expires_at < ?'),
      expire: db.prepare('DELETE FROM adapter_seen WHERE expires_at < ?'),
      has: db.prepare('SELECT 1 FROM adapter_seen WHERE scope = ? AND id = ? AND expires_at >= ?'),
      forget: db.prepare('DELETE FROM adapter_seen WHERE scope = ? AND id = ?'),
    }
  }

  /** True the first time `id` is seen in `scope` within `ttlMs`; records it durably either way. */
  firstTime(scope: string, id: string, ttlMs: number, now = Date.now()): boolean {
    if (this.st.mark.run(scope, id, now + ttlMs).changes === 1) return true
    return this.st.refresh.run(now + ttlMs, scope, id, now).changes === 1
  }

  /** Whether `id` was recorded in `scope` and has not expired; records nothing. */
  has(scope: string, id: string, now = Date.now()): boolean {
    return this.st.has.get(scope, id, now) !== undefined
  }

  /**
   * Forget one id: it was marked before the work it guards was done, and that work failed (an HTTP
   * ingest whose outbox write did not happen must be accepted when the device retries it).
   */
  forget(scope: string, id: string): void {
    this.st.forget.run(scope, id)
  }

  /** Forget what has expired; returns how many entries went. */
  sweep(now = Date.now()): number {
    return this.st.expire.run(now).changes
  }
}
