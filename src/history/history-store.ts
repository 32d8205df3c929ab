// The history's tables: raw samples in one WITHOUT ROWID table per UTC day keyed (series, ts),
// rollups (n, sum, min, max, last) per 5 minutes in one table per month and per hour in one table
// per year, updated in the same transaction as the raw rows they summarise (so they stay right
// across restarts), events per device, and the series catalogue with its per-device cap. Expiry
// and the byte quota drop whole tables, oldest raw day first.
import type { Statement } from 'better-sqlite3'
import type { HistoryDb } from './history-db.js'
import type { Point } from './history-types.js'

export type { Point } from './history-types.js'

export const MINUTE = 60_000
export const HOUR = 60 * MINUTE
export const DAY = 24 * HOUR
const FIVE_MIN = 5 * MINUTE

export interface Sample {
  device: string
  name: string
  ts: number
  value: number
}

export interface HistoryEvent {
  device: string
  ts: number
  type: string
  detail?: Record<string, unknown>
}

export interface HistoryLimits {
  retentionDays: number
  rollup5mDays: number
  rollup1hDays: number
  eventRetentionDays: number
  maxBytes: number
  maxSeriesPerDevice: number
}

export interface SeriesInfo {
  id: number
  device: string
  name: string
  createdAt: number
}

export type Tier = 'raw' | '5m' | '1h'


export interface SeriesQuery {
  series: SeriesInfo
  tier: Tier
  bucketMs: number
  from: number
  to: number
  points: Point[]
}

export interface WriteResult {
  written: number
  /** Samples refused by the per-device series cap, by device. */
  rejected: Map<string, number>
}

export interface DroppedTables {
  expiry: string[]
  quota: string[]
}

interface Agg {
  series: number
  bucket: number
  n: number
  sum: number
  min: number
  max: number
  last: number
  lastTs: number
}

const pad = (n: number, w = 2): string => String(n).padStart(w, '0')
const rawTable = (ts: number): string => {
  const d = new Date(ts)
  return `raw_${d.getUTCFullYear()}${pad(d.getUTCMonth() + 1)}${pad(d.getUTCDate())}`
}
const r5mTable = (ts: number): string => {
  const d = new Date(ts)
  return `r5m_${d.getUTCFullYear()}${pad(d.getUTCMonth() + 1)}`
}
const r1hTable = (ts: number): string => `r1h_${new Date(ts).getUTCFullYear()}`

/** The time span a table holds: [start, end). */
function tableSpan(name: string): { start: number; end: number } | undefined {
  let m = /^raw_(\d{4})(\d{2})(\d{2})$/.exec(name)
  if (m) {
    const start = Date.UTC(+m[1], +m[2] - 1, +m[3])
    return { start, end: start + DAY }
  }
  m = /^r5m_(\d{4})(\d{2})$/.exec(name)
  if (m) return { start: Date.UTC(+m[1], +m[2] - 1, 1), end: Date.UTC(+m[1], +m[2], 1) }
  m = /^r1h_(\d{4})$/.exec(name)
  if (m) return { start: Date.UTC(+m[1], 0, 1), end: Date.UTC(+m[1] + 1, 0, 1) }
  return undefined
}

const TIER_MS: Record<Tier, number> = { raw: 1, '5m': FIVE_MIN, '1h': HOUR }
const TIER_PREFIX: Record<Tier, string> = { raw: 'raw_', '5m': 'r5m_', '1h': 'r1h_' }

export class HistoryStore {
  // device -> name -> series id
  private readonly catalogue = new Map<string, Map<string, number>>()
  private readonly tables = new Set<string>()
  // The newest raw time written per series (this run): bursts in one millisecond are spread out.
  private readonly lastTs = new Map<number, number>()
  private readonly statements = new Map<string, Statement>()
  private readonly st?: {
    addSeries: Statement
    addEvent: Statement
    reject: Statement
  }
  private readonly reader: boolean

  /** `reader`: a read-only connection beside the writer: what it lists is read fresh each time. */
  constructor(
    private readonly db: HistoryDb,
    private readonly limits: HistoryLimits,
    private readonly now: () => number = Date.now,
    opts: { reader?: boolean } = {},
  ) {
    this.reader = opts.reader ?? false
    if (!this.reader) this.st = {
      addSeries: db.prepare('INSERT INTO series (device, name, created_at) VALUES (?, ?, ?)'),
      addEvent: db.prepare('INSERT INTO events (device, ts, type, detail) VALUES (?, ?, ?, ?)'),
      reject: db.prepare(
        'INSERT INTO series_rejected (device, count, last_name, last_at) VALUES (?, ?, ?, ?) ON CONFLICT(device) DO UPDATE SET count = count + excluded.count, last_name = excluded.last_name, last_at = excluded.last_at',
      ),
    }
    for (const r of db.prepare('SELECT id, device, name FROM series').all() as { id: number; device: string; name: string }[]) {
      this.seriesOf(r.device).set(r.name, r.id)
    }
    for (const r of db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[]) this.tables.add(r.name)
  }

  get seriesCount(): number {
    if (this.reader) return (this.db.prepare('SELECT COUNT(*) AS n FROM series').get() as { n: number }).n
    let n = 0
    for (const m of this.catalogue.values()) n += m.size
    return n
  }

  private seriesOf(device: string): Map<string, number> {
    let m = this.catalogue.get(device)
    if (!m) this.catalogue.set(device, (m = new Map()))
    return m
  }

  /** Samples and events in one transaction; raw rows and their rollups together or not at all. */
  write(samples: readonly Sample[], events: readonly HistoryEvent[] = []): WriteResult {
    const now = this.now()
    const rawFrom = this.cutoff('raw', now)
    const r5mFrom = this.cutoff('5m', now)
    const r1hFrom = this.cutoff('1h', now)
    const rejected = new Map<string, number>()
    const lastRejected = new Map<string, string>()
    let written = 0
    this.db.transaction(() => {
      const r5m = new Map<string, Agg>()
      const r1h = new Map<string, Agg>()
      for (const s of samples) {
        if (!Number.isFinite(s.value) || s.ts < r1hFrom) continue
        const id = this.seriesId(s.device, s.name, now)
        if (id === undefined) {
          rejected.set(s.device, (rejected.get(s.device) ?? 0) + 1)
          lastRejected.set(s.device, s.name)
          continue
        }
        // Samples of one series in the same millisecond (a device sending in bursts) each get their
        // own: moved on by a millisecond from the one before. Only within a second: an older sample
        // keeps its time, and if that slot is taken it is one seen before, counted once.
        let ts = s.ts
        const last = this.lastTs.get(id)
        if (last !== undefined && ts <= last && last - ts < 1000) ts = last + 1
        // A sample already expired in the raw tier still counts in the rollups that keep its time.
        if (ts >= rawFrom) {
          if (this.insertRaw(rawTable(ts)).run(id, ts, s.value).changes === 0) continue
          written++
        }
        if (last === undefined || ts > last) this.lastTs.set(id, ts)
        if (ts >= r5mFrom) fold(r5m, id, ts - (ts % FIVE_MIN), ts, s.value)
        fold(r1h, id, ts - (ts % HOUR), ts, s.value)
      }
      for (const a of r5m.values()) this.upsertRollup(r5mTable(a.bucket)).run(a.series, a.bucket, a.n, a.sum, a.min, a.max, a.last, a.lastTs)
      for (const a of r1h.values()) this.upsertRollup(r1hTable(a.bucket)).run(a.series, a.bucket, a.n, a.sum, a.min, a.max, a.last, a.lastTs)
      for (const e of events) this.st!.addEvent.run(e.device, e.ts, e.type, e.detail ? JSON.stringify(e.detail) : null)
      for (const [device, n] of rejected) this.st!.reject.run(device, n, lastRejected.get(device)!, now)
    })()
    return { written, rejected }
  }

  private seriesId(device: string, name: string, now: number): number | undefined {
    const m = this.seriesOf(device)
    const id = m.get(name)
    if (id !== undefined) return id
    if (m.size >= this.limits.maxSeriesPerDevice) return undefined
    const created = Number(this.st!.addSeries.run(device, name, now).lastInsertRowid)
    m.set(name, created)
    return created
  }

  private insertRaw(table: string): Statement {
    return this.statement(`raw:${table}`, () => {
      this.ensure(table, `CREATE TABLE IF NOT EXISTS ${table} (series INTEGER NOT NULL, ts INTEGER NOT NULL, value REAL NOT NULL, PRIMARY KEY (series, ts)) WITHOUT ROWID`)
      return `INSERT OR IGNORE INTO ${table} (series, ts, value) VALUES (?, ?, ?)`
    })
  }

  private upsertRollup(table: string): Statement {
    return this.statement(`up:${table}`, () => {
      this.ensure(
        table,
        `CREATE TABLE IF NOT EXISTS ${table} (series INTEGER NOT NULL, bucket INTEGER NOT NULL, n INTEGER NOT NULL, sum REAL NOT NULL, vmin REAL NOT NULL, vmax REAL NOT NULL, vlast REAL NOT NULL, last_ts INTEGER NOT NULL, PRIMARY KEY (series, bucket)) WITHOUT ROWID`,
      )
      // Mergeable: a bucket written by several batches (or several runs) ends up as if written once.
      return `INSERT INTO ${table} (series, bucket, n, sum, vmin, vmax, vlast, last_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (series, bucket) DO UPDATE SET n = n + excluded.n, sum = sum + excluded.sum,
          vmin = min(vmin, excluded.vmin), vmax = max(vmax, excluded.vmax),
          vlast = CASE WHEN excluded.last_ts >= last_ts THEN excluded.vlast ELSE vlast END, last_ts = max(last_ts, excluded.last_ts)`
    })
  }

  private ensure(table: string, ddl: string): void {
    if (this.tables.has(table)) return
    this.db.exec(ddl)
    this.tables.add(table)
  }

  private statement(key: string, sql: () => string): Statement {
    let s = this.statements.get(key)
    if (!s) this.statements.set(key, (s = this.db.prepare(sql())))
    return s
  }

  /** The oldest time a tier keeps. */
  cutoff(tier: Tier, now = this.now()): number {
    const days = tier === 'raw' ? this.limits.retentionDays : tier === '5m' ? this.limits.rollup5mDays : this.limits.rollup1hDays
    return now - days * DAY
  }

  /** Bytes history.db holds in use (free pages not counted). */
  bytes(): number {
    const pageSize = this.db.pragma('page_size', { simple: true }) as number
    const pages = this.db.pragma('page_count', { simple: true }) as number
    const free = this.db.pragma('freelist_count', { simple: true }) as number
    return (pages - free) * pageSize
  }

  /** Expiry of every tier and events, then the byte quota: the oldest raw day goes first. */
  maintain(): DroppedTables {
    const now = this.now()
    const dropped: DroppedTables = { expiry: [], quota: [] }
    for (const tier of ['raw', '5m', '1h'] as const) {
      const cutoff = this.cutoff(tier, now)
      for (const t of this.tablesOf(tier)) if (tableSpan(t)!.end <= cutoff) this.drop(t, dropped.expiry)
    }
    const eventsFrom = now - this.limits.eventRetentionDays * DAY
    this.db.prepare('DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts < ? LIMIT 10000)').run(eventsFrom)
    // Over quota: raw days oldest first (the rollups keep their story), then 5-minute months; the
    // table being written now stays.
    for (const tier of ['raw', '5m'] as const) {
      const tables = this.tablesOf(tier)
      while (tables.length > 1 && this.bytes() > this.limits.maxBytes) this.drop(tables.shift()!, dropped.quota)
    }
    if (dropped.expiry.length) this.forgetEmptySeries(now)
    if (dropped.expiry.length || dropped.quota.length) this.db.pragma('incremental_vacuum')
    return dropped
  }

  /**
   * Series none of whose data is left (every tier expired) leave the catalogue, so that keys a
   * device stopped sending stop counting against its cap. One primary-key lookup per series and table.
   */
  private forgetEmptySeries(now: number): void {
    const tables = (['raw', '5m', '1h'] as const).flatMap((t) => this.tablesOf(t))
    const exists = tables.map((t) => `EXISTS (SELECT 1 FROM ${t} WHERE series = s.id)`).join(' OR ') || '0'
    const gone = this.db.prepare(`SELECT id, device, name FROM series s WHERE created_at < ? AND NOT (${exists})`).all(now - DAY) as { id: number; device: string; name: string }[]
    if (gone.length === 0) return
    const del = this.db.prepare('DELETE FROM series WHERE id = ?')
    this.db.transaction(() => {
      for (const g of gone) {
        del.run(g.id)
        this.catalogue.get(g.device)?.delete(g.name)
        this.lastTs.delete(g.id)
      }
    })()
  }

  private tablesOf(tier: Tier): string[] {
    if (this.reader) {
      this.tables.clear()
      for (const r of this.db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all() as { name: string }[]) this.tables.add(r.name)
    }
    return [...this.tables].filter((t) => t.startsWith(TIER_PREFIX[tier]) && tableSpan(t)).sort()
  }

  private drop(table: string, into: string[]): void {
    this.db.exec(`DROP TABLE IF EXISTS ${table}`)
    this.tables.delete(table)
    for (const k of [`raw:${table}`, `up:${table}`]) this.statements.delete(k)
    into.push(table)
  }

  listSeries(device?: string): SeriesInfo[] {
    const rows = (
      device === undefined
        ? this.db.prepare('SELECT id, device, name, created_at FROM series ORDER BY device, name').all()
        : this.db.prepare('SELECT id, device, name, created_at FROM series WHERE device = ? ORDER BY name').all(device)
    ) as { id: number; device: string; name: string; created_at: number }[]
    return rows.map((r) => ({ id: r.id, device: r.device, name: r.name, createdAt: r.created_at }))
  }

  series(id: number): SeriesInfo | undefined {
    const r = this.db.prepare('SELECT id, device, name, created_at FROM series WHERE id = ?').get(id) as
      | { id: number; device: string; name: string; created_at: number }
      | undefined
    return r && { id: r.id, device: r.device, name: r.name, createdAt: r.created_at }
  }

  seriesByName(device: string, name: string): SeriesInfo | undefined {
    const id = this.reader
      ? (this.db.prepare('SELECT id FROM series WHERE device = ? AND name = ?').get(device, name) as { id: number } | undefined)?.id
      : this.catalogue.get(device)?.get(name)
    return id === undefined ? undefined : this.series(id)
  }

  /** Samples refused by the series cap, per device. */
  rejected(device?: string): { device: string; count: number; lastName: string; lastAt: number }[] {
    const rows = (
      device === undefined
        ? this.db.prepare('SELECT * FROM series_rejected ORDER BY device').all()
        : this.db.prepare('SELECT * FROM series_rejected WHERE device = ?').all(device)
    ) as { device: string; count: number; last_name: string; last_at: number }[]
    return rows.map((r) => ({ device: r.device, count: r.count, lastName: r.last_name, lastAt: r.last_at }))
  }

  /** The finest tier that still holds `from` and gives buckets of at least `minBucketMs`. */
  tierFor(from: number, minBucketMs: number, now = this.now()): Tier {
    if (minBucketMs < FIVE_MIN && from >= this.cutoff('raw', now)) return 'raw'
    if (minBucketMs < HOUR && from >= this.cutoff('5m', now)) return '5m'
    return '1h'
  }

  /**
   * At most `points` buckets over [from, to), each with n, avg, min and max (so a spike survives
   * downsampling) and the last value. The tier follows from the range and what each tier keeps.
   */
  query(series: SeriesInfo, from: number, to: number, points: number, tier?: Tier): SeriesQuery {
    const want = Math.max(1, Math.ceil((to - from) / points))
    const t = tier ?? this.tierFor(from, want)
    const width = TIER_MS[t]
    const bucketMs = Math.ceil(want / width) * width
    const buckets = new Map<number, Point & { lastTs: number; sum: number }>()
    for (const r of this.rows(series.id, t, from, to)) {
      const i = Math.max(0, Math.floor((r.ts - from) / bucketMs))
      const b = buckets.get(i)
      if (!b) {
        buckets.set(i, { t: from + i * bucketMs, n: r.n, sum: r.sum, avg: 0, min: r.min, max: r.max, last: r.last, lastTs: r.lastTs })
        continue
      }
      b.n += r.n
      b.sum += r.sum
      if (r.min < b.min) b.min = r.min
      if (r.max > b.max) b.max = r.max
      if (r.lastTs >= b.lastTs) {
        b.last = r.last
        b.lastTs = r.lastTs
      }
    }
    const out = [...buckets.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([, b]) => ({ t: b.t, n: b.n, avg: b.sum / b.n, min: b.min, max: b.max, last: b.last }))
    return { series, tier: t, bucketMs, from, to, points: out }
  }

  /** Rows of one tier over [from, to), oldest first: raw samples as one-sample rollups. */
  *rows(series: number, tier: Tier, from: number, to: number): Generator<{ ts: number; n: number; sum: number; min: number; max: number; last: number; lastTs: number }> {
    const width = TIER_MS[tier]
    const lo = tier === 'raw' ? from : from - (((from % width) + width) % width)
    for (const table of this.tablesOf(tier)) {
      const span = tableSpan(table)!
      if (span.end <= lo || span.start >= to) continue
      if (tier === 'raw') {
        const st = this.statement(`q:${table}`, () => `SELECT ts, value FROM ${table} WHERE series = ? AND ts >= ? AND ts < ? ORDER BY ts`)
        for (const r of st.raw().iterate(series, lo, to) as Iterable<[number, number]>) {
          yield { ts: r[0], n: 1, sum: r[1], min: r[1], max: r[1], last: r[1], lastTs: r[0] }
        }
      } else {
        const st = this.statement(`q:${table}`, () => `SELECT bucket, n, sum, vmin, vmax, vlast, last_ts FROM ${table} WHERE series = ? AND bucket >= ? AND bucket < ? ORDER BY bucket`)
        for (const r of st.raw().iterate(series, lo, to) as Iterable<[number, number, number, number, number, number, number]>) {
          yield { ts: r[0], n: r[1], sum: r[2], min: r[3], max: r[4], last: r[5], lastTs: r[6] }
        }
      }
    }
  }

  events(device: string, from: number, to: number, limit = 1000): HistoryEvent[] {
    const rows = this.db
      .prepare('SELECT ts, type, detail FROM events WHERE device = ? AND ts >= ? AND ts < ? ORDER BY ts, id LIMIT ?')
      .all(device, from, to, limit) as { ts: number; type: string; detail: string | null }[]
    return rows.map((r) => ({ device, ts: r.ts, type: r.type, ...(r.detail ? { detail: JSON.parse(r.detail) as Record<string, unknown> } : {}) }))
  }
}

function fold(into: Map<string, Agg>, series: number, bucket: number, ts: number, value: number): void {
  const key = `${series}:${bucket}`
  const a = into.get(key)
  if (!a) {
    into.set(key, { series, bucket, n: 1, sum: value, min: value, max: value, last: value, lastTs: ts })
    return
  }
  a.n++
  a.sum += value
  if (value < a.min) a.min = value
  if (value > a.max) a.max = value
  if (ts >= a.lastTs) {
    a.last = value
    a.lastTs = ts
  }
}
