// A damaged gateway.db (docs/operators/outbox.md, "Storage failures"), or broker.db (the local
// broker's sessions, docs/operators/broker-sessions.md). At start the database is
// checked; one SQLite cannot open, or that fails the check, is moved aside (kept, never deleted),
// and every row that can still be read is copied into a fresh database: the outbox first (each row
// with its id, so MessageId, priority and order are kept), then the device registry (a device lost
// is a device locked out), then the rest. What was salvaged is written to store-salvage.json in the
// data folder; while that file exists the gateway reports itself degraded, until an operator
// acknowledges it (`iothub-edge store ack`, or POST /api/store/salvage/ack).
import Database from 'better-sqlite3'
import { closeSync, copyFileSync, existsSync, fsyncSync, openSync, readFileSync, readSync, renameSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs'
import path from 'node:path'
import { isDamagedDatabase, moveAside } from '../core/damaged-file.js'
import { DB_FILE, openDatabase, type Db } from './db.js'
import type { SalvageReport, TableSalvage } from './salvage-types.js'

export type { SalvageReport, TableSalvage } from './salvage-types.js'
import { BROKER_DB_FILE, openBrokerDatabase } from './broker-sessions.js'

/** The salvage report in the data folder: present means "salvaged, not yet acknowledged". */
export const SALVAGE_FILE = 'store-salvage.json'
/** The same for broker.db (the local broker's sessions). */
export const BROKER_SALVAGE_FILE = 'broker-salvage.json'

/** A database this salvage serves: gateway.db (the store) or broker.db (the broker's sessions). */
export interface SalvageTarget {
  file: string
  /** Its report's name in the data folder. */
  reportFile: string
  /** The database with its current schema (made fresh after the damaged file was moved aside). */
  open(dataDir: string): Db
  /** A table every readable copy has (a header rebuilt with a wrong page size shows none). */
  requiredTable: string
  /** The cheap check: read what the running gateway relies on. Throws SQLite's error on a damaged page. */
  cheapCheck(db: Db): void
}

export const GATEWAY_DB: SalvageTarget = {
  file: DB_FILE,
  reportFile: SALVAGE_FILE,
  open: openDatabase,
  requiredTable: 'outbox',
  cheapCheck(db) {
    // Every page of the b-trees acknowledged messages and device logins live in (the outbox table,
    // its index by priority, the registry) is read and parsed. `bytes` comes after the payload in a
    // row: reading it follows a large payload's chain of overflow pages, which the outbox's totals at
    // start read anyway (a broken chain found there instead stopped every start).
    db.prepare('SELECT COUNT(*), SUM(bytes) FROM outbox NOT INDEXED').get()
    db.prepare('SELECT prio, COUNT(*) FROM outbox INDEXED BY outbox_by_prio GROUP BY prio').all()
    db.prepare('SELECT COUNT(*) FROM devices').get()
  },
}

export const BROKER_DB: SalvageTarget = {
  file: BROKER_DB_FILE,
  reportFile: BROKER_SALVAGE_FILE,
  open: (dataDir) => openBrokerDatabase(path.join(dataDir, BROKER_DB_FILE)),
  requiredTable: 'outgoing',
  cheapCheck(db) {
    // The broker reads all of it into memory at start anyway: every row, payloads included.
    for (const table of ['subscriptions', 'outgoing', 'incoming', 'retained', 'wills', 'sessions']) for (const _row of db.prepare(`SELECT * FROM ${table}`).iterate()) void _row
    db.prepare('SELECT client_id, seq FROM outgoing INDEXED BY outgoing_by_client').all()
  },
}

export type CheckKind = 'quick_check' | 'cheap'

export interface CheckedDatabase {
  db: Db
  check: CheckKind
  checkMs: number
  /** Set when the database was damaged and salvaged at this start. */
  salvage?: SalvageReport
}

/**
 * Opens gateway.db with a check first: `quick_check` (thorough: every page of every table and
 * index) or a cheap one (the outbox's and the registry's rows and the outbox's index read in full).
 * A database that fails either is salvaged.
 */
export function openCheckedDatabase(dataDir: string, check: CheckKind, now = Date.now(), target = GATEWAY_DB): CheckedDatabase {
  const started = performance.now()
  let db: Db | undefined
  let problem: string | undefined
  try {
    db = target.open(dataDir)
    problem = checkDatabase(db, check, target)
  } catch (err) {
    if (!isDamagedDatabase(err)) {
      db?.close()
      throw err
    }
    problem = (err as Error).message
  }
  const checkMs = Math.round(performance.now() - started)
  if (problem === undefined && db) return { db, check, checkMs }
  try {
    db?.close()
  } catch {
    // a damaged file may fail its closing checkpoint; it is moved aside next either way
  }
  const salvaged = salvageDatabase(dataDir, problem ?? 'damaged', now, target)
  return { db: salvaged.db, check, checkMs, salvage: salvaged.report }
}

/** undefined when the database passes; else what is wrong. Throws SQLite's error for an unreadable page. */
export function checkDatabase(db: Db, kind: CheckKind, target = GATEWAY_DB): string | undefined {
  if (kind === 'quick_check') {
    const rows = db.pragma('quick_check(5)') as { quick_check: string }[]
    return rows.length === 1 && rows[0].quick_check === 'ok' ? undefined : rows.map((r) => r.quick_check).join('; ')
  }
  target.cheapCheck(db)
  return undefined
}

/** The report of a salvage no operator has acknowledged yet, if any. */
export function pendingSalvage(dataDir: string, target = GATEWAY_DB): SalvageReport | undefined {
  try {
    return JSON.parse(readFileSync(path.join(dataDir, target.reportFile), 'utf8')) as SalvageReport
  } catch {
    return undefined
  }
}

/**
 * The operator has seen the salvage (of gateway.db, broker.db or both): each report is kept as
 * <report>-<time>.acknowledged.json (the damaged file stays where it was moved). false when there
 * was nothing to acknowledge.
 */
export function acknowledgeSalvage(dataDir: string, now = Date.now()): boolean {
  let had = false
  for (const reportFile of [SALVAGE_FILE, BROKER_SALVAGE_FILE]) {
    const file = path.join(dataDir, reportFile)
    if (!existsSync(file)) continue
    renameSync(file, path.join(dataDir, `${reportFile.replace(/\.json$/, '')}-${new Date(now).toISOString().replace(/[:.]/g, '-')}.acknowledged.json`))
    had = true
  }
  return had
}

/** Move the database aside, make a fresh one, copy into it what can be read from the old one. */
export function salvageDatabase(dataDir: string, reason: string, now = Date.now(), target = GATEWAY_DB): { db: Db; report: SalvageReport } {
  const movedTo = moveAside(path.join(dataDir, target.file), now)
  const db = target.open(dataDir)
  const report: SalvageReport = { at: new Date(now).toISOString(), reason, movedTo, headerRebuilt: false, tables: [] }
  // Read from a working copy: the kept file stays exactly as it was found (opening it would
  // checkpoint its WAL into it).
  const work = `${movedTo}.salvage-tmp`
  let src: Database.Database | undefined
  try {
    src = openWorkingCopy(movedTo, work, report, target.requiredTable)
    if (src) copyReadable(src, db, report)
  } finally {
    src?.close()
    for (const suffix of ['', '-wal', '-shm']) rmSync(work + suffix, { force: true })
  }
  writeReport(dataDir, report, target.reportFile)
  return { db, report }
}

function writeReport(dataDir: string, report: SalvageReport, reportFile: string): void {
  const file = path.join(dataDir, reportFile)
  const tmp = `${file}.tmp`
  const fd = openSync(tmp, 'w', 0o600)
  try {
    writeSync(fd, JSON.stringify(report, null, 2))
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
  renameSync(tmp, file)
}

/** A copy of the damaged file SQLite can read, its header rebuilt if it has to be; undefined if none. */
function openWorkingCopy(moved: string, work: string, report: SalvageReport, requiredTable: string): Database.Database | undefined {
  try {
    copyFileSync(moved, work)
    if (existsSync(`${moved}-wal`)) copyFileSync(`${moved}-wal`, `${work}-wal`)
  } catch {
    // No room for a copy: read the kept file itself, read-only (no header repair then).
    return tryOpen(moved, true, requiredTable)
  }
  const direct = tryOpen(work, false, requiredTable)
  if (direct) return direct
  // The first 100 bytes (the file header) are unreadable: rebuild them. Page 1's b-tree (the
  // schema) starts after them, so the tables stay reachable once SQLite knows the page size.
  const size = statSync(work).size
  const walPageSize = existsSync(`${work}-wal`) ? readWalPageSize(`${work}-wal`) : undefined
  for (const pageSize of [walPageSize, 4096, 1024, 2048, 8192, 16384, 32768, 65536]) {
    if (!pageSize || size % pageSize !== 0) continue
    writeHeader(work, pageSize, walPageSize === pageSize)
    const db = tryOpen(work, false, requiredTable)
    if (db) {
      report.headerRebuilt = true
      return db
    }
  }
  return undefined
}

function tryOpen(file: string, readonly: boolean, requiredTable: string): Database.Database | undefined {
  let db: Database.Database | undefined
  try {
    db = new Database(file, { readonly, fileMustExist: true })
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").pluck().all() as string[]
    if (!tables.includes(requiredTable)) throw new Error(`no ${requiredTable} table`)
    return db
  } catch {
    db?.close()
    return undefined
  }
}

function readWalPageSize(file: string): number | undefined {
  const fd = openSync(file, 'r')
  try {
    const b = Buffer.alloc(12)
    if (readSync(fd, b, 0, 12, 0) < 12) return undefined
    const magic = b.readUInt32BE(0)
    return magic === 0x377f0682 || magic === 0x377f0683 ? b.readUInt32BE(8) : undefined
  } finally {
    closeSync(fd)
  }
}

/** A valid SQLite file header (https://www.sqlite.org/fileformat.html#the_database_header). */
function writeHeader(file: string, pageSize: number, wal: boolean): void {
  const h = Buffer.alloc(100)
  h.write('SQLite format 3\0', 0, 'latin1')
  h.writeUInt16BE(pageSize === 65536 ? 1 : pageSize, 16)
  h[18] = h[19] = wal ? 2 : 1 // write and read versions: 2 keeps the WAL's frames in view
  h[20] = 0 // reserved bytes per page
  h[21] = 64
  h[22] = 32
  h[23] = 32
  h.writeUInt32BE(1, 24) // change counter; differs from 92 below, so the page count comes from the file size
  h.writeUInt32BE(0, 28) // size in pages: unknown
  h.writeUInt32BE(0, 32) // freelist: dropped (only read from here on)
  h.writeUInt32BE(0, 36)
  h.writeUInt32BE(1, 40) // schema cookie
  h.writeUInt32BE(4, 44) // schema format
  h.writeUInt32BE(1, 56) // UTF-8
  h.writeUInt32BE(0, 92)
  h.writeUInt32BE(3_045_000, 96)
  const fd = openSync(file, 'r+')
  try {
    writeSync(fd, h, 0, 100, 0)
  } finally {
    closeSync(fd)
  }
}

/** Outbox first, then the device registry, then every other table the fresh schema has (broker.db: every table). */
function copyReadable(src: Database.Database, dst: Db, report: SalvageReport): void {
  const fresh = dst.prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'").all() as { name: string; sql: string }[]
  const old = new Set(src.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").pluck().all() as string[])
  const order = [...fresh].sort((a, b) => rank(a.name) - rank(b.name))
  for (const t of order) {
    if (!old.has(t.name)) continue
    report.tables.push(copyTable(src, dst, t.name, /WITHOUT\s+ROWID/i.test(t.sql)))
  }
  // Devices the rest of the data names (messages, commands, connections) but the registry scan
  // could not reach: looked up one by one, each a seek that may pass the damaged page.
  const devices = report.tables.find((t) => t.table === 'devices')
  if (devices) {
    const known = dst
      .prepare(
        `SELECT device FROM outbox UNION SELECT device FROM commands UNION SELECT device FROM shadows
         UNION SELECT product_id || '/' || device_id FROM connections WHERE product_id IS NOT NULL`,
      )
      .pluck()
      .all() as string[]
    const have = dst.prepare('SELECT 1 FROM devices WHERE product_id = ? AND device_id = ?')
    const seek = src.prepare('SELECT * FROM devices WHERE product_id = ? AND device_id = ?')
    const insert = inserter(src, dst, 'devices', false)
    for (const key of known) {
      const slash = key.indexOf('/')
      if (slash < 0) continue
      const ref = [key.slice(0, slash), key.slice(slash + 1)]
      if (have.get(...ref)) continue
      try {
        const row = seek.get(...ref) as Record<string, unknown> | undefined
        if (row && insert(row)) devices.rows++
      } catch {
        devices.readErrors++
      }
    }
  }
  // AUTOINCREMENT: ids never go back (the hub link's cursors, decision 0001).
  try {
    for (const r of src.prepare('SELECT name, seq FROM sqlite_sequence').all() as { name: string; seq: number }[]) {
      dst.prepare('UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = ?').run(r.seq, r.name)
      dst.prepare('INSERT INTO sqlite_sequence (name, seq) SELECT ?, ? WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?)').run(r.name, r.seq, r.name)
    }
  } catch {
    // unreadable: the fresh sequence starts after the highest id salvaged
  }
}

function rank(table: string): number {
  return table === 'outbox' ? 0 : table === 'devices' ? 1 : 2
}

/** An INSERT OR IGNORE of the columns both schemas have; returns whether a row went in. */
function inserter(src: Database.Database, dst: Db, table: string, withRowid: boolean): (row: Record<string, unknown>) => boolean {
  const srcCols = new Set((src.pragma(`table_info("${table}")`) as { name: string }[]).map((c) => c.name))
  const cols = (dst.pragma(`table_info("${table}")`) as { name: string }[]).map((c) => c.name).filter((c) => srcCols.has(c))
  const names = [...(withRowid ? ['rowid'] : []), ...cols]
  const st = dst.prepare(`INSERT OR IGNORE INTO "${table}" (${names.map((n) => `"${n}"`).join(', ')}) VALUES (${names.map(() => '?').join(', ')})`)
  return (row) => {
    try {
      return st.run(...names.map((n) => (n === 'rowid' ? row.__rowid : row[n]))).changes > 0
    } catch {
      // a value that breaks the fresh schema's constraints: garbage read from a damaged page
      return false
    }
  }
}

/** Consecutive ids probed one by one before the probe starts to leap (a lost interior page). */
const PROBE_BEFORE_LEAPING = 64

function copyTable(src: Database.Database, dst: Db, table: string, withoutRowid: boolean): TableSalvage {
  const result: TableSalvage = { table, rows: 0, readErrors: 0 }
  const insert = inserter(src, dst, table, !withoutRowid)
  dst.transaction(() => {
    if (withoutRowid) copyByKey(src, table, insert, result)
    else copyByRowid(src, table, insert, result)
  })()
  return result
}

/**
 * A rowid table, in rowid order. A damaged page makes a range read fail: from there, ids are read
 * one by one (each a seek from the root, which passes around a damaged leaf) until one answers,
 * leaping further apart when many in a row fail (a damaged interior page hides a long range), and
 * reading backwards from the first that answers so nothing a leap passed over is left behind.
 */
function copyByRowid(src: Database.Database, table: string, insert: (row: Record<string, unknown>) => boolean, result: TableSalvage): void {
  const q = `"${table}"`
  const forward = src.prepare(`SELECT rowid AS __rowid, * FROM ${q} WHERE rowid > ? ORDER BY rowid`)
  const backward = src.prepare(`SELECT rowid AS __rowid, * FROM ${q} WHERE rowid < ? AND rowid > ? ORDER BY rowid DESC`)
  const one = src.prepare(`SELECT rowid AS __rowid, * FROM ${q} WHERE rowid = ?`)
  const take = (row: Record<string, unknown>): void => {
    if (insert(row)) result.rows++
  }
  const maxId = highestRowid(src, table)
  let cursor = 0
  for (;;) {
    try {
      for (const row of forward.iterate(cursor) as Iterable<Record<string, unknown>>) {
        take(row)
        cursor = Number(row.__rowid)
      }
      return
    } catch {
      result.readErrors++
      // No path tells how far the ids go: nothing to probe towards. Else each round passes at least one id.
      if (maxId === 0 || cursor >= maxId) return
      cursor = probeFrom(cursor, maxId, one, backward, take, result)
    }
  }
}

/** Takes the first row after `cursor` that answers (and what a leap passed over); returns its id, or maxId. */
function probeFrom(
  cursor: number,
  maxId: number,
  one: Database.Statement,
  backward: Database.Statement,
  take: (row: Record<string, unknown>) => void,
  result: TableSalvage,
): number {
  let id = cursor + 1
  let step = 1
  let misses = 0
  while (id <= maxId) {
    let row: Record<string, unknown> | undefined
    try {
      row = one.get(id) as Record<string, unknown> | undefined
    } catch {
      result.readErrors++
    }
    if (row) {
      if (step > 1) {
        try {
          for (const r of backward.iterate(id, cursor) as Iterable<Record<string, unknown>>) take(r)
        } catch {
          result.readErrors++
        }
      }
      take(row)
      return id
    }
    if (++misses > PROBE_BEFORE_LEAPING) step = Math.min(step * 2, 4096)
    id += step
  }
  return maxId
}

/** The highest rowid any path can tell: the table's own, or its AUTOINCREMENT sequence. */
function highestRowid(src: Database.Database, table: string): number {
  let max = 0
  const tries = [`SELECT MAX(rowid) FROM "${table}"`, `SELECT rowid FROM "${table}" ORDER BY rowid DESC LIMIT 1`, `SELECT seq FROM sqlite_sequence WHERE name = '${table}'`]
  for (const sql of tries) {
    try {
      max = Math.max(max, Number(src.prepare(sql).pluck().get() ?? 0))
    } catch {
      // that path crosses the damage
    }
  }
  return max
}

/** A WITHOUT ROWID table, by its key: forward until a damaged page, then backward from the end. */
function copyByKey(src: Database.Database, table: string, insert: (row: Record<string, unknown>) => boolean, result: TableSalvage): void {
  const keyCols = (src.pragma(`table_info("${table}")`) as { name: string; pk: number }[])
    .filter((c) => c.pk > 0)
    .sort((a, b) => a.pk - b.pk)
    .map((c) => `"${c.name}"`)
  const order = keyCols.join(', ') || 'rowid'
  for (const dir of ['ASC', 'DESC']) {
    try {
      for (const row of src.prepare(`SELECT * FROM "${table}" ORDER BY ${order.split(', ').map((c) => `${c} ${dir}`).join(', ')}`).iterate() as Iterable<Record<string, unknown>>) {
        if (insert(row)) result.rows++
      }
      return // read to the end without an error: nothing behind a damaged page to read backwards
    } catch {
      result.readErrors++
    }
  }
}
