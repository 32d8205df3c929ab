// Is the cloud link up (since when, why not), how much waits and how old, the clock, each adapter,
// active alarms, and the box's CPU, memory and disk: live from the stream, the rest polled.
import { useEffect } from 'preact/hooks'
import { Badge, ErrorLine, Section, TableWrap, useApi, useNow, THead } from '../components.js'
import { ago, bytes, dateTime, duration, num } from '../format.js'
import { t } from '../i18n.js'
import { ensureHealth, health, onLive, onLiveGap } from '../live.js'
import { Link } from '../router.js'
import type { AlarmView, OutboxStats, SystemInfo } from '../types.js'

export function Overview() {
  const now = useNow(2_000)
  useEffect(ensureHealth, [])
  const h = health.value
  const outbox = useApi<OutboxStats>('/api/outbox', 5_000)
  const system = useApi<SystemInfo>('/api/system', 10_000)
  // The outbox depth in the health event is fresher than the poll: reload on each change (in the
  // background, as the poll: not the session's use).
  useEffect(() => {
    if (h) outbox.refresh()
  }, [h?.outbox.messages])

  return (
    <>
      <h1>{t('nav.overview')}</h1>
      {h && (
        <div class="grid">
          <Section title={t('ov.hub')} id="hub">
            {!h.northbound.configured ? (
              <p>
                <Badge tone="muted">{t('ov.hubNone')}</Badge>
              </p>
            ) : (
              <dl>
                <dt>{t('ov.state')}</dt>
                <dd data-testid="hub-state">
                  {h.northbound.connected ? <Badge tone="ok">{t('ov.up')}</Badge> : <Badge tone="bad">{t('ov.down')}</Badge>}
                </dd>
                <dt>{t('ov.since')}</dt>
                <dd>
                  {dateTime(h.northbound.connected ? h.northbound.since : h.northbound.downSince)} ({ago(h.northbound.connected ? h.northbound.since : h.northbound.downSince, now)})
                </dd>
                {h.northbound.links > 1 && (
                  <>
                    <dt>{t('ov.links')}</dt>
                    <dd>
                      {h.northbound.linksConnected} / {h.northbound.links}
                    </dd>
                  </>
                )}
                {h.northbound.lastError && (
                  <>
                    <dt>{t('ov.lastError')}</dt>
                    <dd data-testid="hub-last-error">
                      {h.northbound.lastError.message}{' '}
                      <span class="muted">
                        ({[h.northbound.lastError.reason, h.northbound.lastError.code].filter(Boolean).join(' · ')}, {ago(h.northbound.lastError.at, now)})
                      </span>
                    </dd>
                  </>
                )}
                {!h.northbound.connected && (
                  <>
                    <dt>{t('ov.nextRetry')}</dt>
                    <dd data-testid="hub-next-retry">
                      {h.northbound.nextRetryAt
                        ? `${dateTime(h.northbound.nextRetryAt)} (${t('ov.inTime', { d: duration(h.northbound.nextRetryAt - now) })})`
                        : t('ov.retryingNow')}
                    </dd>
                  </>
                )}
              </dl>
            )}
            {h.reasons.length > 0 && (
              <p>
                {h.reasons.map((r) => (
                  <Badge key={r} tone="warn">
                    {r}
                  </Badge>
                ))}
              </p>
            )}
          </Section>
          <Section title={t('ov.outbox')} id="outbox">
            <dl>
              <dt>{t('ov.waiting')}</dt>
              <dd data-testid="outbox-messages">{h.outbox.messages}</dd>
              <dt>{t('ov.bytes')}</dt>
              <dd>
                {bytes(h.outbox.bytes)} / {bytes(h.outbox.maxBytes)}
              </dd>
              <dt>{t('ov.oldest')}</dt>
              <dd>{h.outbox.messages ? duration(h.outbox.oldestAgeMs) : '—'}</dd>
              <dt>{t('ov.drainRate')}</dt>
              <dd data-testid="outbox-drain-rate">{t('ov.drainRateValue', { a: num(h.outbox.drainRate.last10s, 1), b: num(h.outbox.drainRate.last60s, 1) })}</dd>
              {outbox.data && (
                <>
                  <dt>{t('ov.byPriority')}</dt>
                  <dd>
                    {Object.entries(outbox.data.byPriority)
                      .map(([p, v]) => `P${p}: ${v.messages}`)
                      .join(' · ')}
                  </dd>
                  <dt>{t('ov.dropped')}</dt>
                  <dd>
                    {Object.entries(outbox.data.dropped)
                      .map(([k, v]) => `${k}: ${v}`)
                      .join(' · ')}
                  </dd>
                </>
              )}
            </dl>
          </Section>
          <Section title={t('ov.clock')} id="clock">
            <dl>
              <dt>{t('ov.offset')}</dt>
              <dd>{h.clock.measuredAt ? `${num(h.clock.offsetMs)} ms` : t('ov.notMeasured')}</dd>
              <dt>{t('ov.measured')}</dt>
              <dd>{ago(h.clock.measuredAt, now)}</dd>
            </dl>
          </Section>
          <Section title={t('ov.system')} id="system">
            <ErrorLine error={system.error} />
            {system.data && <SystemFacts s={system.data} />}
          </Section>
        </div>
      )}
      {h && (
        <Section title={t('ov.adapters')} id="adapters">
          <TableWrap label={t('ov.adapters')}>
            <THead cols={[t('col.name'), t('col.kind'), t('col.state'), t('col.error')]} />
            <tbody>
              {h.adapters.map((a) => (
                <tr key={a.name}>
                  <td>{a.name}</td>
                  <td>{a.kind}</td>
                  <td>
                    <Badge tone={a.state === 'running' ? 'ok' : a.state === 'failed' ? 'bad' : 'muted'}>{a.state}</Badge>
                  </td>
                  <td>{a.error ?? ''}</td>
                </tr>
              ))}
            </tbody>
          </TableWrap>
        </Section>
      )}
      <Alarms raisedOnly />
    </>
  )
}

/** The rules' alarms (raised only, or raised and cleared), reloaded when the stream says one changed. */
export function Alarms({ raisedOnly }: { raisedOnly?: boolean }) {
  const alarms = useApi<{ alarms: AlarmView[] }>(raisedOnly ? '/api/alarms?state=raised' : '/api/alarms')
  useEffect(() => {
    // Alarms raised or cleared while no stream was open came with no event: reload when it opens.
    const offs = [onLive('alarm', alarms.refresh), onLiveGap(alarms.refresh)]
    return () => offs.forEach((off) => off())
  }, [alarms.refresh])
  return (
    <Section title={t('ov.alarms')} id="alarms">
      <ErrorLine error={alarms.error} />
      <AlarmList alarms={alarms.data?.alarms} />
    </Section>
  )
}

function SystemFacts({ s }: { s: SystemInfo }) {
  const mem = s.memory.systemTotal ? (1 - s.memory.systemFree / s.memory.systemTotal) * 100 : 0
  // Unknown (null) when the data folder's file system could not be read.
  const disk = s.disk.totalBytes && s.disk.freeBytes !== null ? (1 - s.disk.freeBytes / s.disk.totalBytes) * 100 : null
  return (
    <dl>
      <dt>{t('ov.cpu')}</dt>
      <dd>
        {num(s.cpu.usagePercent)} % ({t('ov.load')} {num(s.cpu.load1, 2)}, {s.cpu.cores} {t('ov.cores')})
      </dd>
      <dt>{t('ov.memory')}</dt>
      <dd>
        {num(mem)} % · {t('ov.gateway')} {bytes(s.memory.rss)}
      </dd>
      <dt>{t('ov.disk')}</dt>
      <dd>
        {num(disk)} % · {bytes(s.disk.freeBytes)} {t('ov.free')}
      </dd>
      <dt>{t('ov.version')}</dt>
      <dd>
        {s.version} · Node.js {s.node} · {t('ov.uptime')} {duration(s.uptimeSeconds * 1000)}
      </dd>
    </dl>
  )
}

function AlarmList({ alarms }: { alarms: AlarmView[] | undefined }) {
  if (!alarms) return null
  if (alarms.length === 0) return <p class="muted">{t('ov.noAlarms')}</p>
  return (
    <TableWrap label={t('ov.alarms')}>
      <THead cols={[t('col.alarm'), t('col.device'), t('col.state'), t('col.value'), t('col.since')]} />
      <tbody>
        {alarms.map((a) => (
          <tr key={`${a.rule}/${a.alarm}/${a.productId}/${a.deviceId}`}>
            <td>
              {a.alarm} <span class="muted">({a.rule})</span>
            </td>
            <td>
              <Link to={`/devices/${encodeURIComponent(a.productId)}/${encodeURIComponent(a.deviceId)}`}>
                {a.productId}/{a.deviceId}
              </Link>
            </td>
            <td>
              <Badge tone={a.state === 'raised' ? 'bad' : 'muted'}>{a.state}</Badge>
            </td>
            <td>{JSON.stringify(a.value)}</td>
            <td>{dateTime(a.since)}</td>
          </tr>
        ))}
      </tbody>
    </TableWrap>
  )
}
