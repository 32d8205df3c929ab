// The gateway's recent log (an in-memory ring), live as it is written, filtered by level; the
// whole ring downloads as NDJSON.
import { useEffect, useState } from 'preact/hooks'
import { Download, ErrorLine, useApi } from '../components.js'
import { dateTime } from '../format.js'
import { t } from '../i18n.js'
import { onLive } from '../live.js'
import type { LogLine } from '../types.js'

// pino's levels.
const LEVELS = [
  { name: 'trace', n: 10 },
  { name: 'debug', n: 20 },
  { name: 'info', n: 30 },
  { name: 'warn', n: 40 },
  { name: 'error', n: 50 },
  { name: 'fatal', n: 60 },
] as const
const KEPT = 1_000
const levelName = (n: number): string => [...LEVELS].reverse().find((l) => n >= l.n)?.name ?? String(n)

export function Logs() {
  const [level, setLevel] = useState<string>('info')
  const [paused, setPaused] = useState(false)
  const loaded = useApi<{ logs: LogLine[] }>(`/api/logs?level=${level}&limit=500`)
  const [lines, setLines] = useState<LogLine[]>([])
  useEffect(() => {
    if (loaded.data) setLines([...loaded.data.logs].sort((a, b) => b.time - a.time))
  }, [loaded.data])
  const min = LEVELS.find((l) => l.name === level)?.n ?? 30
  useEffect(() => {
    if (paused) return
    return onLive<LogLine>('log', (l) => {
      if (l.level >= min) setLines((ls) => [l, ...ls].slice(0, KEPT))
    })
  }, [min, paused])
  return (
    <>
      <h1>{t('nav.logs')}</h1>
      <div class="toolbar">
        <label>
          {t('lg.level')}{' '}
          <select value={level} onChange={(e) => setLevel(e.currentTarget.value)}>
            {LEVELS.map((l) => (
              <option key={l.name} value={l.name}>
                {l.name}
              </option>
            ))}
          </select>
        </label>
        <button type="button" aria-pressed={paused} onClick={() => setPaused(!paused)}>
          {paused ? t('lg.resume') : t('lg.pause')}
        </button>
        <Download href="/api/logs/download">{t('lg.download')}</Download>
      </div>
      <ErrorLine error={loaded.error} />
      <ol class="logs" aria-label={t('nav.logs')}>
        {lines.map((l, i) => {
          const { time, level: n, msg, levelName: name, ...rest } = l
          const extra = Object.entries(rest).filter(([k]) => !['pid', 'hostname', 'v'].includes(k))
          const lname = name ?? levelName(n)
          return (
            <li key={`${time}-${i}`} class={`lvl-${lname}`}>
              <span class="muted">{dateTime(time)}</span> <strong>{lname}</strong> {msg}
              {extra.length > 0 && <code> {JSON.stringify(Object.fromEntries(extra))}</code>}
            </li>
          )
        })}
      </ol>
    </>
  )
}
