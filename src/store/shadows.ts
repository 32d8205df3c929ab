// The gateway's durable copy of each child's shadow document (PROTOCOL.md "Shadow").
import type { Statement } from 'better-sqlite3'
import type { Db } from './db.js'

export type JsonObject = Record<string, unknown>

export interface ShadowDoc {
  state: { reported?: JsonObject; desired?: JsonObject }
  metadata: { reported?: Record<string, { timestamp: number }>; desired?: Record<string, { timestamp: number }> }
  version: number
  timestamp?: number
}

export const emptyShadow = (): ShadowDoc => ({ state: {}, metadata: {}, version: 0 })

export class ShadowStore {
  private readonly st: Record<'get' | 'put', Statement>

  constructor(db: Db) {
    this.st = {
      get: db.prepare('SELECT doc FROM shadows WHERE device = ?'),
      put: db.prepare(
        'INSERT INTO shadows (device, doc, updated_at) VALUES (?, ?, ?) ON CONFLICT(device) DO UPDATE SET doc = excluded.doc, updated_at = excluded.updated_at',
      ),
    }
  }

  get(device: string): ShadowDoc | undefined {
    const r = this.st.get.get(device) as { doc: string } | undefined
    return r ? (JSON.parse(r.doc) as ShadowDoc) : undefined
  }

  put(device: string, doc: ShadowDoc): void {
    this.st.put.run(device, JSON.stringify(doc), Date.now())
  }
}
