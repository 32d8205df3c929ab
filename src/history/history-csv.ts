// CSV export of a range of the history, the same from the API and from `iothub-edge history export`.
// One row per raw sample while the range is within the raw retention, otherwise one per 5-minute
// (or hourly) rollup; the columns are the same either way (a raw sample is a rollup of one).
import type { HistoryStore, SeriesInfo } from './history-store.js'

export const CSV_HEADER = 'time,device,series,tier,n,min,max,avg,last'

export interface ExportRange {
  device: string
  /** One series of the device; all of them when absent. */
  name?: string
  from: number
  to: number
}

/** The lines of the export (header first), each without its newline. */
export function* csvLines(store: HistoryStore, r: ExportRange): Generator<string> {
  yield CSV_HEADER
  const series: SeriesInfo[] = r.name === undefined ? store.listSeries(r.device) : [store.seriesByName(r.device, r.name)].filter((s) => s !== undefined)
  const tier = store.tierFor(r.from, 1)
  for (const s of series) {
    for (const row of store.rows(s.id, tier, r.from, r.to)) {
      yield [new Date(row.ts).toISOString(), csvField(s.device), csvField(s.name), tier, row.n, row.min, row.max, row.sum / row.n, row.last].join(',')
    }
  }
}

// RFC 4180: a field with a comma, quote or line break is quoted, quotes doubled.
function csvField(v: string): string {
  return /[",\r\n]/.test(v) ? `"${v.replace(/"/g, '""')}"` : v
}
