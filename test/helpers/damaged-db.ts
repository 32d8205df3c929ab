// Damage a SQLite file the two ways storage fails (issue 17 item 4): a page in the middle
// overwritten, or the first 100 bytes (the header). For the corruption scenario tests.
import Database from 'better-sqlite3'
import { randomBytes } from 'node:crypto'
import { closeSync, openSync, writeSync } from 'node:fs'

/** Overwrite `length` bytes of `file` at `offset` with random bytes (what a failing disk or a stray write leaves). */
export function overwrite(file: string, offset: number, length: number): void {
  const fd = openSync(file, 'r+')
  try {
    writeSync(fd, randomBytes(length), 0, length, offset)
  } finally {
    closeSync(fd)
  }
}

/** Rows of `table`, read directly from the file. */
export function countRows(file: string, table: string): number {
  const db = new Database(file, { readonly: true })
  try {
    return db.prepare(`SELECT COUNT(*) FROM "${table}"`).pluck().get() as number
  } finally {
    db.close()
  }
}

/** The page number and size of the middle one of a table's leaf pages (SQLite's dbstat table); the table must span more than `minPages`. */
export function middleLeafPage(file: string, table: string, minPages = 10): { pageno: number; pageSize: number } {
  const db = new Database(file, { readonly: true })
  try {
    const pages = db.prepare("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno").pluck().all(table) as number[]
    if (pages.length <= minPages) throw new Error(`${table} spans ${pages.length} leaf page(s), not more than ${minPages}: put more rows in it`)
    return { pageno: pages[Math.floor(pages.length / 2)], pageSize: db.pragma('page_size', { simple: true }) as number }
  } finally {
    db.close()
  }
}

/** Overwrite the middle leaf page of `table`, or the file's header. */
export function damage(file: string, how: 'page' | 'header', table: string): void {
  if (how === 'header') return overwrite(file, 0, 100)
  const { pageno, pageSize } = middleLeafPage(file, table)
  overwrite(file, (pageno - 1) * pageSize, pageSize)
}

/**
 * The first overflow page of each of a table's values that spill over more than one (in file order):
 * damage there breaks the chain's next-page pointer, which SQLite notices when it reads the value (a
 * chain's last page holds nothing but bytes of the value: damage there cannot be noticed by SQLite).
 * Works on the file of a running gateway (a second, read-only connection).
 */
export function overflowChainHeads(file: string, table: string): { pages: number[]; pageSize: number } {
  const db = new Database(file, { readonly: true })
  try {
    const rows = db.prepare("SELECT pageno, path FROM dbstat WHERE name = ? AND pagetype = 'overflow'").all(table) as { pageno: number; path: string }[]
    // A chain's pages are `<cell>+000000`, `<cell>+000001`, ...
    const paths = new Set(rows.map((r) => r.path))
    const pages = rows.filter((r) => r.path.endsWith('+000000') && paths.has(`${r.path.slice(0, -6)}000001`)).map((r) => r.pageno)
    pages.sort((a, b) => a - b)
    return { pages, pageSize: db.pragma('page_size', { simple: true }) as number }
  } finally {
    db.close()
  }
}
