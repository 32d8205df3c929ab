// Durable records an adapter keeps about work in flight at its peer, across restarts, without
// writing SQL: a LoRaWAN downlink queued at ChirpStack and the command whose reply its `txack`/`ack`
// becomes. Each record has its own expiry; the core sweeps what has expired.
import type { Statement } from 'better-sqlite3'
import type { RecordSet } from '../core/adapter-context.js'
import type { Db } from './db.js'

export interface StoredRecord {
  id: string
  /** JSON text, as the adapter put it. */
  value: string
  expiresAt: number
}

export class AdapterRecordStore {
  private readonly st: Record<'put' | 'get' | 'delete' | 'list' | 'expire', Statement>

  constructor(db: Db) {
    this.st = {
      put: db.prepare(
        'INSERT INTO adapter_records (scope, id, value, expires_at) VALUES (?, ?, ?, ?) ON CONFLICT (scope, id) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at',
      ),
      // A record past its expiry that has not been swept yet is gone for its reader.
      get: db.prepare('SELECT id, value, expires_at AS expiresAt FROM adapter_records WHERE scope = ? AND id = ? AND expires_at >= ?'),
      delete: db.prepare('DELETE FROM adapter_records WHERE scope = ? AND id = ?'),
      list: db.prepare('SELECT id, value, expires_at AS expiresAt FROM adapter_records WHERE scope = ? AND expires_at >= ? ORDER BY rowid'),
      expire: db.prepare('DELETE FROM adapter_records WHERE expires_at < ?'),
    }
  }

  /** Write (or replace) one record: a synchronous durable write. */
  put(scope: string, id: string, value: string, expiresAt: number): void {
    this.st.put.run(scope, id, value, expiresAt)
  }

  get(scope: string, id: string, now = Date.now()): StoredRecord | undefined {
    return this.st.get.get(scope, id, now) as StoredRecord | undefined
  }

  delete(scope: string, id: string): boolean {
    return this.st.delete.run(scope, id).changes === 1
  }

  /** The records of one scope that have not expired, oldest first. */
  list(scope: string, now = Date.now()): StoredRecord[] {
    return this.st.list.all(scope, now) as StoredRecord[]
  }

  /** One scope as an adapter sees it: JSON values. */
  scoped<T>(scope: string): RecordSet<T> {
    return {
      put: (id, value, expiresAt) => this.put(scope, id, JSON.stringify(value), expiresAt),
      get: (id) => {
        const r = this.get(scope, id)
        return r && (JSON.parse(r.value) as T)
      },
      delete: (id) => void this.delete(scope, id),
      list: () => this.list(scope).map((r) => ({ id: r.id, value: JSON.parse(r.value) as T, expiresAt: r.expiresAt })),
    }
  }

  /** Forget what has expired; returns how many records went. */
  sweep(now = Date.now()): number {
    return this.st.expire.run(now).changes
  }
}
