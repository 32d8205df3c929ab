// Every device over every transport in one table: search, sort by any column, quick filters for
// what a technician looks for first, CSV export, and adding a device (its secret shown once).
import { useEffect, useMemo, useState } from 'preact/hooks'
import { api } from '../api.js'
import { Badge, ErrorLine, Section, TableWrap, useApi, useNow } from '../components.js'
import { ago, num } from '../format.js'
import { t, type Key } from '../i18n.js'
import { onLive, onLiveGap } from '../live.js'
import { Link } from '../router.js'
import type { DeviceRow } from '../types.js'

const NOT_SEEN_MS = 90 * 60_000
const WEAK_RSSI = -110
const WEAK_SNR = -7
const LOW_BATTERY = 20

type Filter = 'notSeen' | 'weak' | 'lowBattery' | 'errors'
const FILTERS: { id: Filter; label: Key; test: (d: DeviceRow, now: number) => boolean }[] = [
  { id: 'notSeen', label: 'dev.fNotSeen', test: (d, now) => d.lastSeen === null || now - d.lastSeen > NOT_SEEN_MS },
  { id: 'weak', label: 'dev.fWeak', test: (d) => (d.rssi ?? 0) < WEAK_RSSI || (d.snr ?? 0) < WEAK_SNR },
  { id: 'lowBattery', label: 'dev.fLowBattery', test: (d) => d.battery !== null && d.battery !== undefined && d.battery < LOW_BATTERY },
  { id: 'errors', label: 'dev.fErrors', test: (d) => (d.errors ?? 0) > 0 },
]

type Col = 'device' | 'protocol' | 'online' | 'lastSeen' | 'rssi' | 'snr' | 'battery' | 'errors' | 'queuedCommands' | 'firmwareVersion'
const COLS: { id: Col; label: Key; value: (d: DeviceRow) => string | number }[] = [
  { id: 'device', label: 'col.device', value: (d) => `${d.productId}/${d.deviceId}` },
  { id: 'protocol', label: 'col.protocol', value: (d) => d.protocol ?? '' },
  { id: 'online', label: 'col.online', value: (d) => (d.online ? 1 : 0) },
  { id: 'lastSeen', label: 'col.lastSeen', value: (d) => d.lastSeen ?? 0 },
  { id: 'rssi', label: 'col.rssi', value: (d) => d.rssi ?? -Infinity },
  { id: 'snr', label: 'col.snr', value: (d) => d.snr ?? -Infinity },
  { id: 'battery', label: 'col.battery', value: (d) => d.battery ?? -1 },
  { id: 'errors', label: 'col.errors', value: (d) => d.errors ?? 0 },
  { id: 'queuedCommands', label: 'col.queued', value: (d) => d.queuedCommands ?? 0 },
  { id: 'firmwareVersion', label: 'col.firmware', value: (d) => d.firmwareVersion ?? '' },
]

function csv(rows: DeviceRow[]): string {
  const head = ['productId', 'deviceId', 'protocol', 'enabled', 'online', 'lastSeen', 'rssi', 'snr', 'battery', 'errors', 'queuedCommands', 'firmwareVersion', 'tags']
  const cell = (v: unknown): string => {
    const s = v === null || v === undefined ? '' : String(v)
    return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s
  }
  const lines = rows.map((d) =>
    [d.productId, d.deviceId, d.protocol, d.enabled, d.online, d.lastSeen ? new Date(d.lastSeen).toISOString() : '', d.rssi, d.snr, d.battery, d.errors, d.queuedCommands, d.firmwareVersion, d.tags.join(' ')]
      .map(cell)
      .join(','),
  )
  return [head.join(','), ...lines].join('\n') + '\n'
}

function saveFile(name: string, type: string, text: string): void {
  const url = URL.createObjectURL(new Blob([text], { type }))
  const a = document.createElement('a')
  a.href = url
  a.download = name
  a.click()
  setTimeout(() => URL.revokeObjectURL(url), 10_000)
}

export function Devices() {
  const now = useNow(10_000)
  const list = useApi<{ devices: DeviceRow[] }>('/api/devices', 30_000)
  const [rows, setRows] = useState<DeviceRow[]>([])
  const [query, setQuery] = useState('')
  const [filters, setFilters] = useState<Set<Filter>>(new Set())
  const [sort, setSort] = useState<{ col: Col; desc: boolean }>({ col: 'device', desc: false })
  useEffect(() => {
    if (list.data) setRows(list.data.devices)
  }, [list.data])
  // A device going on or off line changes its row at once; anything else waits for the next poll.
  // What went on or off line while the stream was not connected: the list again when it connects.
  useEffect(() => {
    const offs = [
      onLive<{ productId: string; deviceId: string; online: boolean; lastSeen: number | null }>('device', (e) => {
        setRows((rs) => {
          const known = rs.some((d) => d.productId === e.productId && d.deviceId === e.deviceId)
          if (!known) list.refresh()
          return rs.map((d) => (d.productId === e.productId && d.deviceId === e.deviceId ? { ...d, online: e.online, lastSeen: e.lastSeen } : d))
        })
      }),
      onLiveGap(list.refresh),
    ]
    return () => offs.forEach((off) => off())
  }, [list.refresh])
  const shown = useMemo(() => {
    const q = query.trim().toLowerCase()
    const col = COLS.find((c) => c.id === sort.col)!
    return rows
      .filter((d) => !q || `${d.productId}/${d.deviceId} ${d.tags.join(' ')} ${d.protocol ?? ''} ${d.firmwareVersion ?? ''}`.toLowerCase().includes(q))
      .filter((d) => FILTERS.every((f) => !filters.has(f.id) || f.test(d, now)))
      .sort((a, b) => {
        const x = col.value(a)
        const y = col.value(b)
        const c = typeof x === 'number' && typeof y === 'number' ? x - y : String(x).localeCompare(String(y))
        return sort.desc ? -c : c
      })
  }, [rows, query, filters, sort, now])

  const toggle = (f: Filter): void => {
    const next = new Set(filters)
    if (next.has(f)) next.delete(f)
    else next.add(f)
    setFilters(next)
  }

  return (
    <>
      <h1>{t('nav.devices')}</h1>
      <ErrorLine error={list.error} />
      <div class="toolbar">
        <label class="grow">
          <span class="visually-hidden">{t('dev.search')}</span>
          <input type="search" placeholder={t('dev.search')} value={query} onInput={(e) => setQuery(e.currentTarget.value)} />
        </label>
        <fieldset class="chips">
          <legend class="visually-hidden">{t('dev.filters')}</legend>
          {FILTERS.map((f) => (
            <label key={f.id} class="chip">
              <input type="checkbox" checked={filters.has(f.id)} onChange={() => toggle(f.id)} />
              {t(f.label)}
            </label>
          ))}
        </fieldset>
        <button type="button" onClick={() => saveFile('devices.csv', 'text/csv', csv(shown))}>
          {t('dev.csv')}
        </button>
      </div>
      <p class="muted">{t('dev.count', { n: shown.length, total: rows.length })}</p>
      <TableWrap label={t('nav.devices')}>
        <thead>
          <tr>
            {COLS.map((c) => (
              <th key={c.id} scope="col" aria-sort={sort.col === c.id ? (sort.desc ? 'descending' : 'ascending') : undefined}>
                <button type="button" class="sort" onClick={() => setSort({ col: c.id, desc: sort.col === c.id ? !sort.desc : false })}>
                  {t(c.label)}
                  {sort.col === c.id ? (sort.desc ? ' ▼' : ' ▲') : ''}
                </button>
              </th>
            ))}
          </tr>
        </thead>
        <tbody>
          {shown.map((d) => (
            <tr key={`${d.productId}/${d.deviceId}`} data-device={`${d.productId}/${d.deviceId}`}>
              <td>
                <Link to={`/devices/${encodeURIComponent(d.productId)}/${encodeURIComponent(d.deviceId)}`}>
                  {d.productId}/{d.deviceId}
                </Link>
                {!d.enabled && <Badge tone="muted">{t('dev.disabled')}</Badge>}
              </td>
              <td>{d.protocol ?? '—'}</td>
              <td data-col="online">{d.online ? <Badge tone="ok">{t('dev.online')}</Badge> : <Badge tone="bad">{t('dev.offline')}</Badge>}</td>
              <td>{ago(d.lastSeen, now)}</td>
              <td>{num(d.rssi)}</td>
              <td>{num(d.snr, 1)}</td>
              <td>{d.battery === null || d.battery === undefined ? '—' : `${d.battery} %`}</td>
              <td>{d.errors ?? '—'}</td>
              <td>{d.queuedCommands ?? '—'}</td>
              <td>{d.firmwareVersion ?? '—'}</td>
            </tr>
          ))}
        </tbody>
      </TableWrap>
      <AddDevice onAdded={list.reload} />
    </>
  )
}

function AddDevice({ onAdded }: { onAdded: () => void }) {
  const [error, setError] = useState<unknown>()
  const [secret, setSecret] = useState<{ device: string; secret: string }>()
  const submit = async (e: Event): Promise<void> => {
    e.preventDefault()
    const form = e.currentTarget as HTMLFormElement
    const f = new FormData(form)
    const productId = String(f.get('productId')).trim()
    const deviceId = String(f.get('deviceId')).trim()
    const tags = String(f.get('tags') ?? '')
      .split(/[\s,]+/)
      .filter(Boolean)
    setError(undefined)
    try {
      const r = await api<{ secret: string }>('/api/devices', { method: 'POST', body: { productId, deviceId, tags } })
      setSecret({ device: `${productId}/${deviceId}`, secret: r.secret })
      form.reset()
      onAdded()
    } catch (err) {
      setError(err)
    }
  }
  return (
    <Section title={t('dev.add')} id="add-device">
      <form class="inline" onSubmit={(e) => void submit(e)}>
        <label>
          {t('col.productId')}
          <input name="productId" required pattern="[A-Za-z0-9_\-]{1,64}" />
        </label>
        <label>
          {t('col.deviceId')}
          <input name="deviceId" required pattern="[A-Za-z0-9_\-]{1,64}" />
        </label>
        <label>
          {t('col.tags')}
          <input name="tags" />
        </label>
        <button type="submit">{t('dev.addSubmit')}</button>
      </form>
      <ErrorLine error={error} />
      {secret && <SecretOnce device={secret.device} secret={secret.secret} />}
    </Section>
  )
}

export function SecretOnce(props: { device: string; secret: string }) {
  return (
    <div class="secret" role="status">
      <p>{t('dev.secretOnce', { device: props.device })}</p>
      <code data-testid="secret">{props.secret}</code>
    </div>
  )
}
