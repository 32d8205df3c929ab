// The local history's health and points as the API answers them (/api/health, /api/history).
// Types only, importing nothing: the web app (ui/) names them too.

export interface HistoryHealth {
  enabled: boolean
  state: 'ok' | 'recreated' | 'failed'
  /** Where an unusable history.db was moved, and why. */
  quarantined?: { file: string; error: string }
  bytes: number
  series: number
  shed: number
  seriesRejected: number
}

export interface Point {
  /** Start of the bucket, ms since the epoch. */
  t: number
  n: number
  avg: number
  min: number
  max: number
  last: number
}
