// A database file SQLite calls damaged is moved aside, never deleted: the store (gateway.db, with
// salvage), the local history (history.db, made anew) and the OTA relay (ota.db, made anew) all
// keep the evidence under one naming scheme, `<file>.corrupt-<UTC time>`, with its WAL beside it.
import { existsSync, renameSync } from 'node:fs'

/** SQLite's answer for a damaged or foreign file (SQLITE_CORRUPT*, SQLITE_NOTADB). */
export function isDamagedDatabase(err: unknown): boolean {
  const code = (err as { code?: string } | null)?.code ?? ''
  return code === 'SQLITE_NOTADB' || code.startsWith('SQLITE_CORRUPT')
}

/** Move `file` and its -wal and -shm files aside as `<file>.corrupt-<time>`; returns the new name. */
export function moveAside(file: string, now = Date.now()): string {
  const moved = `${file}.corrupt-${new Date(now).toISOString().replace(/[:.]/g, '-')}`
  for (const suffix of ['', '-wal', '-shm']) if (existsSync(file + suffix)) renameSync(file + suffix, moved + suffix)
  return moved
}
