// The outbox's statements alone, variants side by side (npx tsx bench/outbox-statements.ts [del|index|read]): deleting a batch of
// acknowledged rows per row, as a JSON set, as a range, with RETURNING or an aggregate; insert and delete with and without
// outbox_by_device; reads as SELECT * mapped, as the columns as they come, raw arrays mapped. synchronous=FULL on a real file.
// N rows (default 100,000), batches of B (1,500: about 50 ms of acknowledgements at 30k msg/s), ROUNDS rounds.
import Database from 'better-sqlite3'
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { performance } from 'node:perf_hooks'

const N = Number(process.env.N ?? 100_000)
const B = Number(process.env.B ?? 1500)
const ROUNDS = Number(process.env.ROUNDS ?? 3)

function open(byDevice: boolean): { db: Database.Database; dir: string } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'stmt-'))
  const db = new Database(path.join(dir, 'g.db'))
  db.pragma('journal_mode = WAL')
  db.pragma('synchronous = FULL')
  db.exec(`CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, prio INTEGER NOT NULL, device TEXT NOT NULL, kind TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL, bytes INTEGER NOT NULL, received_at INTEGER NOT NULL);
  CREATE INDEX outbox_by_prio ON outbox (prio, id);` + (byDevice ? 'CREATE INDEX outbox_by_device ON outbox (device, prio, id);' : ''))
  return { db, dir }
}

function fill(db: Database.Database, n: number): number {
  const ins = db.prepare('INSERT INTO outbox (prio, device, kind, topic, payload, bytes, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)')
  const p = Buffer.alloc(64, 1)
  const t0 = performance.now()
  for (let done = 0; done < n; done += B) {
    db.transaction(() => {
      for (let i = done; i < Math.min(n, done + B); i++) ins.run(2, `bench/d${i % 100}`, 'upload_data', `/bench/d${i % 100}/user/update/m${i}`, p, 150, Date.now())
    })()
  }
  return performance.now() - t0
}

type Del = (db: Database.Database) => (ids: number[]) => number
const variants: Record<string, Del> = {
  perRow: (db) => {
    const st = db.prepare('DELETE FROM outbox WHERE id = ? RETURNING prio, bytes')
    return (ids) => {
      let n = 0
      for (const id of ids) if (st.get(id)) n++
      return n
    }
  },
  jsonEach: (db) => {
    const st = db.prepare('DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?)) RETURNING prio, bytes').raw()
    return (ids) => st.all(JSON.stringify(ids)).length
  },
  jsonEachObj: (db) => {
    const st = db.prepare('DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?)) RETURNING prio, bytes')
    return (ids) => st.all(JSON.stringify(ids)).length
  },
  between: (db) => {
    const st = db.prepare('DELETE FROM outbox WHERE id BETWEEN ? AND ? RETURNING prio, bytes').raw()
    return (ids) => st.all(ids[0], ids[ids.length - 1]).length
  },
  betweenAgg: (db) => {
    const sel = db.prepare('SELECT prio, COUNT(*), SUM(bytes) FROM outbox WHERE id BETWEEN ? AND ? GROUP BY prio').raw()
    const del = db.prepare('DELETE FROM outbox WHERE id BETWEEN ? AND ?')
    return (ids) => {
      const a = ids[0]
      const b = ids[ids.length - 1]
      const r = sel.all(a, b) as number[][]
      del.run(a, b)
      return r.reduce((n, x) => n + x[1], 0)
    }
  },
  jsonAgg: (db) => {
    const sel = db.prepare('SELECT prio, COUNT(*), SUM(bytes) FROM outbox WHERE id IN (SELECT value FROM json_each(?)) GROUP BY prio').raw()
    const del = db.prepare('DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))')
    return (ids) => {
      const j = JSON.stringify(ids)
      const r = sel.all(j) as number[][]
      del.run(j)
      return r.reduce((n, x) => n + x[1], 0)
    }
  },
}

function delBench(name: string, byDevice: boolean): { del: number; ins: number } {
  const { db, dir } = open(byDevice)
  const ins = fill(db, N)
  const f = variants[name](db)
  const t0 = performance.now()
  let n = 0
  for (let lo = 1; lo <= N; lo += B) {
    const ids = Array.from({ length: Math.min(B, N - lo + 1) }, (_, i) => lo + i)
    db.transaction(() => (n += f(ids)))()
  }
  const ms = performance.now() - t0
  if (n !== N) throw new Error(`${name}: ${n}`)
  db.close()
  rmSync(dir, { recursive: true, force: true })
  return { del: ms, ins }
}

function readBench(): Record<string, number> {
  const { db, dir } = open(true)
  fill(db, N)
  const out: Record<string, number> = {}
  const star = db.prepare('SELECT * FROM outbox WHERE prio = ? AND id > ? ORDER BY id LIMIT ?')
  const cols = db.prepare('SELECT id, prio, device, kind, topic, payload, received_at AS receivedAt FROM outbox WHERE prio = ? AND id > ? ORDER BY id LIMIT ?')
  const raw = db.prepare('SELECT id, prio, device, kind, topic, payload, received_at FROM outbox WHERE prio = ? AND id > ? ORDER BY id LIMIT ?').raw()
  const noDev = db.prepare('SELECT id, prio, kind, topic, payload, received_at AS receivedAt FROM outbox WHERE prio = ? AND id > ? ORDER BY id LIMIT ?')
  type R = { id: number; prio: number; device: string; kind: string; topic: string; payload: Buffer; received_at: number }
  const ways: Record<string, () => number> = {
    starRemap: () => {
      let after = 0
      let n = 0
      for (;;) {
        const rows = star.all(2, after, 512) as R[]
        if (!rows.length) return n
        const out = rows.map((r) => ({ id: r.id, prio: r.prio, device: r.device, kind: r.kind, topic: r.topic, payload: r.payload, receivedAt: r.received_at }))
        n += out.length
        after = rows[rows.length - 1].id
      }
    },
    colsAsIs: () => {
      let after = 0
      let n = 0
      for (;;) {
        const rows = cols.all(2, after, 512) as { id: number }[]
        if (!rows.length) return n
        n += rows.length
        after = rows[rows.length - 1].id
      }
    },
    rawRemap: () => {
      let after = 0
      let n = 0
      for (;;) {
        const rows = raw.all(2, after, 512) as unknown[][]
        if (!rows.length) return n
        const out = rows.map((r) => ({ id: r[0] as number, prio: r[1], device: r[2], kind: r[3], topic: r[4], payload: r[5], receivedAt: r[6] }))
        n += out.length
        after = out[out.length - 1].id
      }
    },
    noDevice: () => {
      let after = 0
      let n = 0
      for (;;) {
        const rows = noDev.all(2, after, 512) as { id: number }[]
        if (!rows.length) return n
        n += rows.length
        after = rows[rows.length - 1].id
      }
    },
  }
  for (let r = 0; r < ROUNDS; r++) {
    for (const [k, f] of Object.entries(ways)) {
      const t0 = performance.now()
      if (f() !== N) throw new Error(k)
      out[k] = Math.min(out[k] ?? Infinity, performance.now() - t0)
    }
  }
  db.close()
  rmSync(dir, { recursive: true, force: true })
  return out
}

const what = process.argv[2] ?? 'all'
console.log(`N=${N} B=${B} load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`)
if (what === 'all' || what === 'del') {
  const res: Record<string, number[]> = {}
  for (let r = 0; r < ROUNDS; r++) {
    for (const name of Object.keys(variants)) (res[name] ??= []).push(delBench(name, true).del)
  }
  const med = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]
  const base = med(res.perRow)
  for (const [k, v] of Object.entries(res)) console.log(`delete ${k}: ${((med(v) / N) * 1000).toFixed(2)} µs/row, ${(base / med(v)).toFixed(2)}x perRow`)
}
if (what === 'all' || what === 'index') {
  const res: Record<string, { del: number[]; ins: number[] }> = { with: { del: [], ins: [] }, without: { del: [], ins: [] } }
  for (let r = 0; r < ROUNDS; r++) {
    for (const k of ['with', 'without'] as const) {
      const x = delBench('between', k === 'with')
      res[k].del.push(x.del)
      res[k].ins.push(x.ins)
    }
  }
  const med = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)]
  for (const k of ['with', 'without'] as const) console.log(`outbox_by_device ${k}: insert ${((med(res[k].ins) / N) * 1000).toFixed(2)} µs/row, delete ${((med(res[k].del) / N) * 1000).toFixed(2)} µs/row`)
}
if (what === 'all' || what === 'read') {
  for (const [k, v] of Object.entries(readBench())) console.log(`read ${k}: ${((v / N) * 1000).toFixed(3)} µs/row`)
}
