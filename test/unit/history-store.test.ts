// The history's tables in a real history.db: a day that passes its retention is dropped whole
// (fake clock), the rollups agree with the raw samples they summarise, also across a reopen, a
// year-long query stays within N points and keeps a spike, and the byte quota drops the oldest raw
// day first.
import { existsSync, mkdtempSync, rmSync, writeFileSync, readdirSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { HISTORY_FILE, openHistoryDb, type HistoryDb } from '../../src/history/history-db.js'
import { DAY, HOUR, HistoryStore, MINUTE, type HistoryLimits, type Sample } from '../../src/history/history-store.js'

const LIMITS: HistoryLimits = { retentionDays: 7, rollup5mDays: 90, rollup1hDays: 730, eventRetentionDays: 90, maxBytes: 1 << 30, maxSeriesPerDevice: 100 }
const T0 = Date.UTC(2026, 0, 10) // midnight UTC

describe('history store', () => {
  let dir: string | undefined
  let db: HistoryDb | undefined

  afterEach(() => {
    db?.close()
    db = undefined
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  function open(now: () => number, limits: Partial<HistoryLimits> = {}): HistoryStore {
    dir ??= mkdtempSync(path.join(os.tmpdir(), 'history-'))
    db = openHistoryDb(dir).db
    return new HistoryStore(db, { ...LIMITS, ...limits }, now)
  }

  const tables = (prefix: string): string[] =>
    (db!.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ? ORDER BY name").all(`${prefix}%`) as { name: string }[]).map((r) => r.name)

  it('keeps one table per day and drops a day whole once it is older than retentionDays', () => {
    let now = T0 + 12 * HOUR
    const store = open(() => now)
    // A sample every 10 minutes over 8 days.
    for (let day = 0; day < 8; day++) {
      now = T0 + day * DAY + 23 * HOUR
      const samples: Sample[] = []
      for (let t = T0 + day * DAY; t < T0 + (day + 1) * DAY; t += 10 * MINUTE) samples.push({ device: 'p/d', name: 'telemetry.temp', ts: t, value: day })
      store.write(samples)
    }
    expect(tables('raw_')).toEqual(['raw_20260110', 'raw_20260111', 'raw_20260112', 'raw_20260113', 'raw_20260114', 'raw_20260115', 'raw_20260116', 'raw_20260117'])
    const s = store.seriesByName('p/d', 'telemetry.temp')!

    // The clock passes midnight into day 9: day 1 (Jan 10) has now been over for 7 days.
    now = T0 + 8 * DAY + 1 * MINUTE
    const dropped = store.maintain()
    expect(dropped.expiry).toEqual(['raw_20260110'])
    expect(tables('raw_')).not.toContain('raw_20260110')
    expect(tables('raw_')).toHaveLength(7)
    // The rollups still tell that day's story.
    const summary = store.query(s, T0, T0 + DAY, 1, '1h')
    expect(summary.points).toEqual([expect.objectContaining({ n: 144, min: 0, max: 0 })])
    // A second run the same day drops nothing more.
    expect(store.maintain().expiry).toEqual([])
  })

  it('a series whose data has all expired leaves the catalogue and stops counting against the cap', () => {
    let now = T0
    const store = open(() => now, { maxSeriesPerDevice: 1 })
    store.write([{ device: 'p/d', name: 'old.key', ts: now, value: 1 }])
    expect(store.write([{ device: 'p/d', name: 'new.key', ts: now, value: 1 }]).rejected.get('p/d')).toBe(1)
    // Past every tier's retention, and past the end of the hourly tier's year table (2026) by 730 days.
    now = Date.UTC(2029, 0, 2)
    store.maintain()
    expect(store.listSeries('p/d')).toEqual([])
    expect(store.write([{ device: 'p/d', name: 'new.key', ts: now, value: 2 }]).rejected.size).toBe(0)
    expect(store.listSeries('p/d').map((s) => s.name)).toEqual(['new.key'])
  })

  it('rollups match the raw samples, across batches and a reopen, and a sample seen twice counts once', () => {
    const now = T0 + 2 * DAY
    let store = open(() => now)
    const samples: Sample[] = []
    let seed = 7
    const rand = (): number => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 100 - 50
    for (let t = T0; t < T0 + DAY; t += 37_000) samples.push({ device: 'p/d', name: 'x', ts: t, value: Math.round(rand() * 100) / 100 })
    store.write(samples.slice(0, 1000))
    // Reopened between batches, as after a restart.
    db!.close()
    store = open(() => now)
    store.write(samples.slice(1000))
    store.write(samples.slice(500, 600)) // redelivered: already there
    const s = store.seriesByName('p/d', 'x')!

    for (const [tier, width] of [['5m', 5 * MINUTE], ['1h', HOUR]] as const) {
      const expected = new Map<number, { n: number; sum: number; min: number; max: number; last: number }>()
      for (const x of samples) {
        const b = x.ts - (x.ts % width)
        const e = expected.get(b)
        if (!e) expected.set(b, { n: 1, sum: x.value, min: x.value, max: x.value, last: x.value })
        else Object.assign(e, { n: e.n + 1, sum: e.sum + x.value, min: Math.min(e.min, x.value), max: Math.max(e.max, x.value), last: x.value })
      }
      const rows = [...store.rows(s.id, tier, T0, T0 + DAY)]
      expect(rows).toHaveLength(expected.size)
      for (const r of rows) {
        const e = expected.get(r.ts)!
        expect({ n: r.n, min: r.min, max: r.max, last: r.last }).toEqual({ n: e.n, min: e.min, max: e.max, last: e.last })
        expect(r.sum).toBeCloseTo(e.sum, 6)
      }
      // And the raw tier's own answer over the same buckets agrees.
      const fromRaw = store.query(s, T0, T0 + DAY, DAY / width, 'raw')
      const fromRollup = store.query(s, T0, T0 + DAY, DAY / width, tier)
      expect(fromRollup.points.map((p) => [p.t, p.n, p.min, p.max, p.last])).toEqual(fromRaw.points.map((p) => [p.t, p.n, p.min, p.max, p.last]))
    }
  })

  it('a query over a year returns at most N points, from the hourly tier, with the spike kept', () => {
    const now = T0 + 366 * DAY
    const store = open(() => now)
    const from = now - 365 * DAY
    const spikeAt = from + 200 * DAY + 7 * HOUR + 13 * MINUTE
    const samples: Sample[] = []
    for (let t = from; t < now; t += 15 * MINUTE) samples.push({ device: 'p/d', name: 'power', ts: t, value: 10 + Math.sin(t / DAY) })
    samples.push({ device: 'p/d', name: 'power', ts: spikeAt, value: 9_999 })
    store.write(samples)
    const s = store.seriesByName('p/d', 'power')!

    for (const n of [1, 50, 200, 1000]) {
      const q = store.query(s, from, now, n)
      expect(q.tier).toBe('1h')
      expect(q.points.length).toBeLessThanOrEqual(n)
      expect(Math.max(...q.points.map((p) => p.max))).toBe(9_999)
      const holding = q.points.find((p) => p.max === 9_999)!
      expect(spikeAt).toBeGreaterThanOrEqual(holding.t)
      expect(spikeAt).toBeLessThan(holding.t + q.bucketMs)
      expect(q.points.reduce((a, p) => a + p.n, 0)).toBe(samples.length)
    }
    // A recent day in 500 points (buckets under 5 minutes) comes from the raw tier; in 100, from the 5-minute one.
    const day = store.query(s, now - DAY, now, 500)
    expect(day.tier).toBe('raw')
    expect(day.points.length).toBeLessThanOrEqual(500)
    expect(store.query(s, now - DAY, now, 100).tier).toBe('5m')
  })

  it('the byte quota drops the oldest raw day first and keeps the rollups', () => {
    let now = T0
    const store = open(() => now, { maxBytes: 1 << 20 })
    for (let day = 0; day < 5; day++) {
      now = T0 + day * DAY + 12 * HOUR
      const samples: Sample[] = []
      for (let t = T0 + day * DAY; t < T0 + day * DAY + 12 * HOUR; t += 1000) samples.push({ device: 'p/d', name: 'v', ts: t, value: t % 1000 === 0 ? day : 0 })
      store.write(samples)
    }
    expect(store.bytes()).toBeGreaterThan(1 << 20)
    const dropped = store.maintain()
    expect(dropped.quota[0]).toBe('raw_20260110')
    expect(dropped.quota.every((t) => t.startsWith('raw_'))).toBe(true)
    expect(store.bytes()).toBeLessThanOrEqual(1 << 20)
    expect(tables('raw_')).toContain('raw_20260114')
    expect(tables('r5m_')).toEqual(['r5m_202601'])
  })

  it('a file that is not a database is moved aside and a new one made', () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'history-'))
    writeFileSync(path.join(dir, HISTORY_FILE), Buffer.alloc(8192, 0x5a))
    const opened = openHistoryDb(dir)
    db = opened.db
    expect(opened.quarantined?.file).toMatch(/history\.db\.corrupt-/)
    expect(existsSync(opened.quarantined!.file)).toBe(true)
    expect(readdirSync(dir).filter((f) => f.startsWith('history.db.corrupt-'))).toHaveLength(1)
    const store = new HistoryStore(db, LIMITS)
    store.write([{ device: 'p/d', name: 'x', ts: Date.now(), value: 1 }])
    expect(store.listSeries('p/d').map((s) => s.name)).toEqual(['x'])
  })
})
