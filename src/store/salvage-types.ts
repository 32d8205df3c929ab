// What a salvage of a damaged gateway.db found, as /api/health and /api/store/salvage answer it.
// Types only, importing nothing: the web app (ui/) names them too.

export interface TableSalvage {
  table: string
  /** Rows copied into the fresh database. */
  rows: number
  /** Reads that failed on a damaged page: rows there (if any were left) are lost. */
  readErrors: number
}

export interface SalvageReport {
  /** When the damage was found (ISO 8601). */
  at: string
  /** What SQLite said: the open error, or the first lines of quick_check. */
  reason: string
  /** Where the damaged file was moved (its -wal beside it, if it had one). */
  movedTo: string
  /** The file header was unreadable and was rebuilt on a working copy to read the pages behind it. */
  headerRebuilt: boolean
  tables: TableSalvage[]
}
