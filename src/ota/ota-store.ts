// The OTA relay's own state, in its own database ({dataDir}/ota/ota.db) beside the gateway's store:
// the images in the cache and each (job, device) target with its token and progress. The commands
// themselves stay in the gateway's command store (state 'held' until released), so a restart finds
// both halves and carries on.
import Database from 'better-sqlite3'
import type { TargetState } from './ota-types.js'

export type { TargetState } from './ota-types.js'

export type ImageState = 'fetching' | 'ready'
/** States in which a target still holds its image in the cache. */
export const ACTIVE_STATES: readonly TargetState[] = ['waiting', 'queued', 'delivered', 'downloading', 'reported']

export interface ImageRow {
  key: string
  md5: string
  size: number
  sha256: string | null
  url: string
  version: string
  type: string
  source: 'hub' | 'upload'
  state: ImageState
  createdAt: number
  lastUsed: number
}

export interface TargetRow {
  commandId: number
  job: string
  device: string
  imageKey: string
  version: string
  type: string
  origin: string
  expiresAt: number
  token: string
  state: TargetState
  progress: number | null
  bytesServed: number
  reason: string | null
  /** The command's payload as the hub sent it (JSON text); the device gets it with `url` rewritten. */
  payload: string
  createdAt: number
  updatedAt: number
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS images (
  key TEXT PRIMARY KEY, md5 TEXT NOT NULL, size INTEGER NOT NULL, sha256 TEXT, url TEXT NOT NULL,
  version TEXT NOT NULL, type TEXT NOT NULL, source TEXT NOT NULL, state TEXT NOT NULL,
  created_at INTEGER NOT NULL, last_used INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS targets (
  command_id INTEGER PRIMARY KEY, job TEXT NOT NULL, device TEXT NOT NULL, image_key TEXT NOT NULL,
  version TEXT NOT NULL, type TEXT NOT NULL, origin TEXT NOT NULL, expires_at INTEGER NOT NULL,
  token TEXT NOT NULL UNIQUE, state TEXT NOT NULL, progress INTEGER, bytes_served INTEGER NOT NULL DEFAULT 0,
  reason TEXT, payload TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS targets_by_image ON targets (image_key, state);
CREATE INDEX IF NOT EXISTS targets_by_device ON targets (device, state);
CREATE TABLE IF NOT EXISTS job_limits (job TEXT PRIMARY KEY, max_concurrent INTEGER NOT NULL);
`

const camel = (r: Record<string, unknown>): Record<string, unknown> => Object.fromEntries(Object.entries(r).map(([k, v]) => [k.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase()), v]))

export class OtaStore {
  private readonly db: Database.Database

  constructor(file: string) {
    this.db = new Database(file)
    this.db.pragma('journal_mode = WAL')
    this.db.pragma('synchronous = FULL')
    this.db.exec(SCHEMA)
  }

  close(): void {
    this.db.close()
  }

  image(key: string): ImageRow | undefined {
    const r = this.db.prepare('SELECT * FROM images WHERE key = ?').get(key) as Record<string, unknown> | undefined
    return r && (camel(r) as unknown as ImageRow)
  }

  images(): ImageRow[] {
    return (this.db.prepare('SELECT * FROM images ORDER BY created_at').all() as Record<string, unknown>[]).map((r) => camel(r) as unknown as ImageRow)
  }

  putImage(i: ImageRow): void {
    this.db
      .prepare(
        `INSERT INTO images (key, md5, size, sha256, url, version, type, source, state, created_at, last_used)
         VALUES (@key, @md5, @size, @sha256, @url, @version, @type, @source, @state, @createdAt, @lastUsed)
         ON CONFLICT(key) DO UPDATE SET sha256 = excluded.sha256, state = excluded.state, last_used = excluded.last_used`,
      )
      .run(i)
  }

  touchImage(key: string): void {
    this.db.prepare('UPDATE images SET last_used = ? WHERE key = ?').run(Date.now(), key)
  }

  removeImage(key: string): void {
    this.db.prepare('DELETE FROM images WHERE key = ?').run(key)
  }

  /** Images no active target uses, least recently used first (eviction order). */
  unreferenced(): ImageRow[] {
    const active = ACTIVE_STATES.map((s) => `'${s}'`).join(',')
    return (
      this.db.prepare(`SELECT * FROM images i WHERE state = 'ready' AND NOT EXISTS (SELECT 1 FROM targets t WHERE t.image_key = i.key AND t.state IN (${active})) ORDER BY last_used`).all() as Record<
        string,
        unknown
      >[]
    ).map((r) => camel(r) as unknown as ImageRow)
  }

  addTarget(t: TargetRow): void {
    this.db
      .prepare(
        `INSERT OR IGNORE INTO targets (command_id, job, device, image_key, version, type, origin, expires_at, token, state, progress, bytes_served, reason, payload, created_at, updated_at)
         VALUES (@commandId, @job, @device, @imageKey, @version, @type, @origin, @expiresAt, @token, @state, @progress, @bytesServed, @reason, @payload, @createdAt, @updatedAt)`,
      )
      .run(t)
  }

  target(commandId: number): TargetRow | undefined {
    const r = this.db.prepare('SELECT * FROM targets WHERE command_id = ?').get(commandId) as Record<string, unknown> | undefined
    return r && (camel(r) as unknown as TargetRow)
  }

  byToken(token: string): TargetRow | undefined {
    const r = this.db.prepare('SELECT * FROM targets WHERE token = ?').get(token) as Record<string, unknown> | undefined
    return r && (camel(r) as unknown as TargetRow)
  }

  targets(where = '1 = 1', ...args: unknown[]): TargetRow[] {
    return (this.db.prepare(`SELECT * FROM targets WHERE ${where} ORDER BY command_id`).all(...args) as Record<string, unknown>[]).map((r) => camel(r) as unknown as TargetRow)
  }

  activeTargets(where = '1 = 1', ...args: unknown[]): TargetRow[] {
    return this.targets(`state IN (${ACTIVE_STATES.map((s) => `'${s}'`).join(',')}) AND ${where}`, ...args)
  }

  setTarget(commandId: number, state: TargetState, reason?: string): void {
    this.db.prepare('UPDATE targets SET state = ?, reason = COALESCE(?, reason), updated_at = ? WHERE command_id = ?').run(state, reason ?? null, Date.now(), commandId)
  }

  setProgress(commandId: number, progress: number): void {
    this.db.prepare('UPDATE targets SET progress = ?, updated_at = ? WHERE command_id = ?').run(progress, Date.now(), commandId)
  }

  /** Targets (of one job, or all) whose device has its image on the way: released, and not yet reported 100 %, done or failed. */
  busyCount(job?: string): number {
    const busy = "(state IN ('queued', 'delivered', 'downloading') OR (state = 'reported' AND (progress IS NULL OR progress BETWEEN 0 AND 99)))"
    const r = (job === undefined ? this.db.prepare(`SELECT COUNT(*) AS n FROM targets WHERE ${busy}`).get() : this.db.prepare(`SELECT COUNT(*) AS n FROM targets WHERE job = ? AND ${busy}`).get(job)) as { n: number }
    return r.n
  }

  /** A job's own staged-rollout limit (POST /api/ota/jobs `maxConcurrent`), if it has one. */
  jobLimit(job: string): number | undefined {
    const r = this.db.prepare('SELECT max_concurrent AS n FROM job_limits WHERE job = ?').get(job) as { n: number } | undefined
    return r?.n
  }

  setJobLimit(job: string, maxConcurrent: number): void {
    this.db.prepare('INSERT OR REPLACE INTO job_limits (job, max_concurrent) VALUES (?, ?)').run(job, maxConcurrent)
  }

  /** Finished targets older than `before` (ms) go: the job view keeps recent history only. */
  trim(before: number): void {
    this.db.prepare("DELETE FROM targets WHERE state IN ('done', 'failed', 'expired') AND updated_at < ?").run(before)
    this.db.prepare('DELETE FROM job_limits WHERE job NOT IN (SELECT job FROM targets)').run()
  }

  setServed(commandId: number, bytes: number): void {
    this.db.prepare('UPDATE targets SET bytes_served = ? WHERE command_id = ?').run(bytes, commandId)
  }
}
