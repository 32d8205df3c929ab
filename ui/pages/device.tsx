// One device: its state and tags, what it said last (live), charts of its numeric fields from the
// local history, its event timeline, shadow and command history, and a form to send a command or
// an RPC and see the reply. Disable, reset the secret (shown once) or remove it here too.
import { useEffect, useState } from 'preact/hooks'
import { api, devicePath } from '../api.js'
import { Chart } from '../chart.js'
import { Badge, Empty, ErrorLine, Section, TableWrap, useApi, useField, useNow, THead } from '../components.js'
import { ago, dateTime, payloadText } from '../format.js'
import { t } from '../i18n.js'
import { onLive, onLiveGap } from '../live.js'
import { navigate } from '../router.js'
import type { Command, DeviceRow, HistoryPoint, Uplink } from '../types.js'
import { SecretOnce } from './devices.js'

interface DeviceDetail {
  device: DeviceRow
  online: boolean
  lastSeen: number | null
}

export function DevicePage({ productId, deviceId }: { productId: string; deviceId: string }) {
  const base = `/api/devices/${devicePath(productId, deviceId)}`
  const detail = useApi<DeviceDetail>(base)
  const now = useNow()
  useEffect(() => {
    const offs = [
      onLive<{ productId: string; deviceId: string }>('device', (e) => {
        if (e.productId === productId && e.deviceId === deviceId) detail.refresh()
      }),
      onLiveGap(detail.refresh),
    ]
    return () => offs.forEach((off) => off())
  }, [productId, deviceId, detail.refresh])
  const d = detail.data
  return (
    <>
      <h1>
        {productId}/{deviceId}
      </h1>
      <ErrorLine error={detail.error} />
      {d && (
        <p class="facts">
          {d.online ? <Badge tone="ok">{t('dev.online')}</Badge> : <Badge tone="bad">{t('dev.offline')}</Badge>}
          {!d.device.enabled && <Badge tone="muted">{t('dev.disabled')}</Badge>}
          <span>
            {t('col.lastSeen')}: {ago(d.lastSeen, now)}
          </span>
          <span>
            {t('col.tags')}: {d.device.tags.join(', ') || '—'} (v{d.device.tagsVersion})
          </span>
        </p>
      )}
      {d && <Admin base={base} detail={d} onChange={detail.reload} />}
      <div class="grid wide">
        <Payloads base={base} productId={productId} deviceId={deviceId} />
        <SendCommand base={base} />
      </div>
      <Commands base={base} productId={productId} deviceId={deviceId} />
      <Charts device={`${productId}/${deviceId}`} />
      <div class="grid wide">
        <Timeline base={base} productId={productId} deviceId={deviceId} />
        <Shadow base={base} />
      </div>
    </>
  )
}

function Admin({ base, detail, onChange }: { base: string; detail: DeviceDetail; onChange: () => void }) {
  const [error, setError] = useState<unknown>()
  const [secret, setSecret] = useState<string>()
  const ref = `${detail.device.productId}/${detail.device.deviceId}`
  const tagsField = useField(detail.device.tags.join(' '))
  const run = async (f: () => Promise<void>): Promise<void> => {
    setError(undefined)
    try {
      await f()
    } catch (e) {
      setError(e)
    }
  }
  const tags = async (e: Event): Promise<void> => {
    e.preventDefault()
    const v = String(new FormData(e.currentTarget as HTMLFormElement).get('tags') ?? '')
    await run(async () => {
      await api(base, { method: 'PATCH', body: { tags: v.split(/[\s,]+/).filter(Boolean) } })
      onChange()
    })
  }
  return (
    <Section title={t('dv.admin')} id="admin">
      <div class="toolbar">
        <button type="button" onClick={() => void run(async () => (await api(base, { method: 'PATCH', body: { enabled: !detail.device.enabled } }), onChange()))}>
          {detail.device.enabled ? t('dv.disable') : t('dv.enable')}
        </button>
        <button
          type="button"
          onClick={() =>
            void run(async () => {
              if (!confirm(t('dv.resetConfirm', { device: ref }))) return
              const bytes = crypto.getRandomValues(new Uint8Array(18))
              const s = btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_')
              await api(base, { method: 'PATCH', body: { secret: s } })
              setSecret(s)
            })
          }
        >
          {t('dv.resetSecret')}
        </button>
        <button
          type="button"
          class="danger"
          onClick={() =>
            void run(async () => {
              if (!confirm(t('dv.removeConfirm', { device: ref }))) return
              await api(base, { method: 'DELETE' })
              navigate('/devices')
            })
          }
        >
          {t('dv.remove')}
        </button>
      </div>
      <form class="inline" onSubmit={(e) => void tags(e)}>
        <label>
          {t('col.tags')}
          <input name="tags" {...tagsField} />
        </label>
        <button type="submit">{t('dv.saveTags')}</button>
      </form>
      <ErrorLine error={error} />
      {secret && <SecretOnce device={ref} secret={secret} />}
    </Section>
  )
}

function Payloads({ base, productId, deviceId }: { base: string; productId: string; deviceId: string }) {
  const loaded = useApi<{ messages: Uplink[] }>(`${base}/messages`)
  const [live, setLive] = useState<Uplink[]>([])
  useEffect(() => setLive([]), [base])
  useEffect(() => {
    const offs = [
      onLive<Uplink>('uplink', (u) => {
        if (u.productId === productId && u.deviceId === deviceId) setLive((l) => [u, ...l].slice(0, 20))
      }),
      // Uplinks while no stream was open are in the gateway's list only.
      onLiveGap(loaded.refresh),
    ]
    return () => offs.forEach((off) => off())
  }, [productId, deviceId, loaded.refresh])
  const seen = new Set(live.map((m) => m.messageId))
  // Newest first by the gateway's time, not by arrival: a stream that dropped events for this slow
  // reader says so before it sends what it had queued, so older uplinks arrive after the reload that
  // brought the newer ones.
  const all = [...live, ...(loaded.data?.messages ?? []).filter((m) => !seen.has(m.messageId))].sort((a, b) => b.ts - a.ts).slice(0, 20)
  return (
    <Section title={t('dv.payloads')} id="payloads">
      <ErrorLine error={loaded.error} />
      {all.length === 0 ? (
        <Empty />
      ) : (
        <ol class="payloads" aria-live="polite">
          {all.map((m) => (
            <li key={m.messageId}>
              <span class="muted">
                {dateTime(m.ts)} · {m.dataType ?? m.kind}
              </span>
              <code>{payloadText(m.payload)}</code>
            </li>
          ))}
        </ol>
      )}
    </Section>
  )
}

function SendCommand({ base }: { base: string }) {
  const [result, setResult] = useState<{ requestId: string; state: string; reply?: string }>()
  const [error, setError] = useState<unknown>()
  const [busy, setBusy] = useState(false)
  const submit = async (e: Event): Promise<void> => {
    e.preventDefault()
    const f = new FormData(e.currentTarget as HTMLFormElement)
    const payload = String(f.get('payload') ?? '')
    const ttl = Number(f.get('ttl'))
    setBusy(true)
    setError(undefined)
    setResult(undefined)
    try {
      const body = { name: String(f.get('name')).trim(), payload, rpc: f.get('rpc') === 'on', ...(ttl > 0 ? { ttl } : {}) }
      setResult(await api(`${base}/commands`, { method: 'POST', body }))
    } catch (err) {
      setError(err)
    } finally {
      setBusy(false)
    }
  }
  return (
    <Section title={t('dv.send')} id="send">
      <form onSubmit={(e) => void submit(e)}>
        <label>
          {t('dv.cmdName')}
          <input name="name" required pattern="[A-Za-z0-9_.:\-]{1,64}" />
        </label>
        <label>
          {t('dv.payload')}
          <textarea name="payload" rows={3} spellcheck={false} />
        </label>
        <div class="inline">
          <label class="check">
            <input type="checkbox" name="rpc" />
            {t('dv.rpc')}
          </label>
          <label>
            {t('dv.ttl')}
            <input name="ttl" type="number" min={0} inputMode="numeric" />
          </label>
        </div>
        <button type="submit" disabled={busy}>
          {t('dv.sendSubmit')}
        </button>
      </form>
      <ErrorLine error={error} />
      {result && (
        <div class="result" role="status" data-testid="command-result">
          <p>
            {t('dv.requestId')}: <code>{result.requestId}</code> · <Badge tone={result.state === 'replied' ? 'ok' : 'muted'}>{result.state}</Badge>
          </p>
          {result.reply !== undefined && (
            <p>
              {t('dv.reply')}: <code data-testid="command-reply">{result.reply}</code>
            </p>
          )}
        </div>
      )}
    </Section>
  )
}

function Commands({ base, productId, deviceId }: { base: string; productId: string; deviceId: string }) {
  const list = useApi<{ commands: Command[] }>(`${base}/commands`)
  useEffect(() => {
    const offs = [
      onLive<{ productId: string; deviceId: string }>('command', (c) => {
        if (c.productId === productId && c.deviceId === deviceId) list.refresh()
      }),
      onLiveGap(list.refresh),
    ]
    return () => offs.forEach((off) => off())
  }, [productId, deviceId, list.refresh])
  const cmds = list.data?.commands ?? []
  return (
    <Section title={t('dv.commands')} id="commands" actions={<button type="button" onClick={list.reload}>{t('refresh')}</button>}>
      <ErrorLine error={list.error} />
      {cmds.length === 0 ? (
        <Empty />
      ) : (
        <TableWrap label={t('dv.commands')}>
          <THead cols={[t('col.time'), t('col.name'), t('col.kind'), t('col.origin'), t('col.state'), t('dv.payload'), t('dv.reply')]} />
          <tbody>
            {cmds.map((c) => (
              <tr key={c.id} data-request={c.requestId}>
                <td>{dateTime(c.createdAt)}</td>
                <td>{c.name}</td>
                <td>{c.type}</td>
                <td>{c.origin}</td>
                <td>
                  <Badge tone={c.state === 'replied' || c.state === 'delivered' ? 'ok' : c.state === 'queued' || c.state === 'held' ? 'muted' : 'warn'}>{c.state}</Badge>
                  {c.reason && <span class="muted"> {c.reason}</span>}
                </td>
                <td>
                  <code>{c.payload}</code>
                </td>
                <td>{c.reply !== null && <code>{c.reply}</code>}</td>
              </tr>
            ))}
          </tbody>
        </TableWrap>
      )}
    </Section>
  )
}

const RANGES = [
  { id: '1h', ms: 3_600_000 },
  { id: '24h', ms: 86_400_000 },
  { id: '7d', ms: 7 * 86_400_000 },
  { id: '30d', ms: 30 * 86_400_000 },
] as const

interface SeriesInfo {
  id: number
  device: string
  name: string
}

function Charts({ device }: { device: string }) {
  const series = useApi<{ series: SeriesInfo[] }>(`/api/history/series?device=${encodeURIComponent(device)}`)
  const [range, setRange] = useState<(typeof RANGES)[number]['id']>('24h')
  const list = series.data?.series ?? []
  return (
    <Section
      title={t('dv.charts')}
      id="charts"
      actions={
        <label>
          {t('dv.range')}{' '}
          <select value={range} onChange={(e) => setRange(e.currentTarget.value as typeof range)}>
            {RANGES.map((r) => (
              <option key={r.id} value={r.id}>
                {t(`range.${r.id}`)}
              </option>
            ))}
          </select>
        </label>
      }
    >
      <ErrorLine error={series.error} />
      {series.data && list.length === 0 && <Empty>{t('dv.noSeries')}</Empty>}
      <div class="charts">
        {list.map((s) => (
          <SeriesChart key={s.id} series={s} rangeMs={RANGES.find((r) => r.id === range)!.ms} />
        ))}
      </div>
    </Section>
  )
}

function SeriesChart({ series, rangeMs }: { series: SeriesInfo; rangeMs: number }) {
  const [to] = useState(Date.now())
  const data = useApi<{ points: HistoryPoint[] }>(`/api/history?series=${series.id}&from=${to - rangeMs}&to=${to}&points=300`)
  return (
    <>
      <ErrorLine error={data.error} />
      {data.data && <Chart title={series.name} points={data.data.points} from={to - rangeMs} to={to} />}
    </>
  )
}

interface HistoryEvent {
  ts: number
  type: string
  detail?: unknown
}

// What GET .../events records (the local history): sessions, OTA, commands, errors, alarms.
const EVENT_TYPES = ['connected', 'disconnected', 'ota_status', 'command_delivered', 'command_replied', 'error', 'alarm_raised', 'alarm_cleared'] as const
type EventType = (typeof EVENT_TYPES)[number]
const isEventType = (s: string): s is EventType => (EVENT_TYPES as readonly string[]).includes(s)
const EVENT_TONE: Partial<Record<EventType, 'ok' | 'bad' | 'warn' | 'muted'>> = { error: 'warn', alarm_raised: 'bad', alarm_cleared: 'ok', connected: 'ok', disconnected: 'muted' }
// The history writes what happened about a second later (later on a busy box): a live event reloads
// the timeline after each of these. So does the stream's (re)connection, at once too: what happened
// while no stream was open (between the page's first load and the stream's connection, while the
// gateway restarted) came with no live event; without it only the 30 s poll would show it.
const TIMELINE_RELOAD_MS = [2_000, 6_000]

function Timeline({ base, productId, deviceId }: { base: string; productId: string; deviceId: string }) {
  const events = useApi<{ events: HistoryEvent[] }>(`${base}/events?limit=1000`, 30_000)
  useEffect(() => {
    let timers: ReturnType<typeof setTimeout>[] = []
    const reloadSoon = (): void => {
      timers.forEach(clearTimeout)
      timers = TIMELINE_RELOAD_MS.map((ms) => setTimeout(events.refresh, ms))
    }
    const mine = (e: { productId: string; deviceId: string }): void => {
      if (e.productId === productId && e.deviceId === deviceId) reloadSoon()
    }
    const offs = (['device', 'alarm', 'command'] as const).map((n) => onLive<{ productId: string; deviceId: string }>(n, mine))
    offs.push(
      onLiveGap(() => {
        events.refresh()
        reloadSoon()
      }),
    )
    // A warning or error naming this device (the history records it as an `error` event).
    const key = `${productId}/${deviceId}`
    offs.push(onLive<{ device?: unknown; level: number }>('log', (l) => l.level >= 40 && l.device === key && mine({ productId, deviceId })))
    return () => {
      offs.forEach((off) => off())
      timers.forEach(clearTimeout)
    }
  }, [productId, deviceId, events.refresh])
  const list = [...(events.data?.events ?? [])].reverse().slice(0, 50)
  return (
    <Section title={t('dv.timeline')} id="timeline">
      <ErrorLine error={events.error} />
      {events.data && list.length === 0 ? (
        <Empty />
      ) : (
        <ol class="timeline">
          {list.map((e, i) => (
            <li key={`${e.ts}-${i}`} data-type={e.type}>
              <span class="muted">{dateTime(e.ts)}</span>{' '}
              {isEventType(e.type) ? <Badge tone={EVENT_TONE[e.type] ?? 'muted'}>{t(`tl.${e.type}`)}</Badge> : <strong>{e.type}</strong>}{' '}
              {e.detail !== undefined && e.detail !== null && <code>{payloadText(e.detail)}</code>}
            </li>
          ))}
        </ol>
      )}
    </Section>
  )
}

function Shadow({ base }: { base: string }) {
  const shadow = useApi<{ shadow: unknown }>(`${base}/shadow`)
  return (
    <Section title={t('dv.shadow')} id="shadow">
      <ErrorLine error={shadow.error} />
      {shadow.data && <pre class="json">{JSON.stringify(shadow.data.shadow, null, 2)}</pre>}
    </Section>
  )
}
