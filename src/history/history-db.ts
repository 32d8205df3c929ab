// history.db: a SQLite file of its own, apart from the outbox's gateway.db. History is not the
// durability path, so it runs WAL with synchronous=NORMAL (a power cut may lose its last
// transactions, never corrupt it), and anything wrong with it (corrupt, not a database, an older
// layout it cannot read) is dealt with here alone: the file is moved aside and a new one is made.
// The outbox never notices.
import Database from 'better-sqlite3'
import { mkdirSync } from 'node:fs'
import path from 'node:path'
import { isDamagedDatabase, moveAside } from '../core/damaged-file.js'

export type HistoryDb = Database.Database

export const HISTORY_FILE = 'history.db'

// Raw samples live in one table per UTC day, rollups in one per month (5 min) or year (hourly):
// expiry drops a table whole instead of DELETEing rows (no long write lock, no fragmentation).
const SCHEMA = `
  CREATE TABLE IF NOT EXISTS series (
    id         INTEGER PRIMARY KEY,
    device     TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (device, name)
  );
  CREATE TABLE IF NOT EXISTS events (
    id     INTEGER PRIMARY KEY,
    device TEXT NOT NULL,
    ts     INTEGER NOT NULL,
    type   TEXT NOT NULL,
    detail TEXT
  );
  CREATE INDEX IF NOT EXISTS events_by_device ON events (device, ts);
  CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts);
  -- samples refused because their device reached store.history.maxSeriesPerDevice
  CREATE TABLE IF NOT EXISTS series_rejected (
    device    TEXT PRIMARY KEY,
    count     INTEGER NOT NULL,
    last_name TEXT NOT NULL,
    last_at   INTEGER NOT NULL
  ) WITHOUT ROWID;
`
const LAYOUT_VERSION = 1

export interface OpenedHistory {
  db: HistoryDb
  /** Set when the file found was unusable: where it was moved, and why. */
  quarantined?: { file: string; error: string }
}

/** Open (or make) history.db; an unusable one is moved aside as history.db.corrupt-<time> and made anew. */
export function openHistoryDb(dataDir: string, now = Date.now()): OpenedHistory {
  mkdirSync(dataDir, { recursive: true })
  const file = path.join(dataDir, HISTORY_FILE)
  try {
    return { db: open(file) }
  } catch (err) {
    const moved = quarantine(file, now)
    return { db: open(file), quarantined: { file: moved, error: (err as Error).message } }
  }
}

/** Move history.db (and its WAL and shared-memory files) aside; returns the new name. */
export const quarantine = moveAside

function open(file: string): HistoryDb {
  const db = new Database(file)
  try {
    // Before the first table: a new file gives pages of dropped days back to the filesystem.
    db.pragma('auto_vacuum = INCREMENTAL')
    db.pragma('journal_mode = WAL')
    db.pragma('synchronous = NORMAL')
    db.pragma('busy_timeout = 2000')
    const version = db.pragma('user_version', { simple: true }) as number
    if (version > LAYOUT_VERSION) throw new Error(`history.db has layout ${version}, this version reads up to ${LAYOUT_VERSION}`)
    db.exec(SCHEMA)
    db.pragma(`user_version = ${LAYOUT_VERSION}`)
    // Reads every table's root page: a file that is not a database, or a damaged schema, fails here.
    db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'").all()
    db.prepare('SELECT COUNT(*) FROM series').get()
    return db
  } catch (err) {
    db.close()
    throw err
  }
}

/** For readers beside the running gateway (`iothub-edge history export`). */
export function openHistoryReadOnly(file: string): HistoryDb {
  const db = new Database(file, { readonly: true, fileMustExist: true })
  db.pragma('busy_timeout = 2000')
  return db
}

/** SQLite's answer for a damaged or foreign file: the cue to quarantine it. */
export const isCorrupt = isDamagedDatabase
