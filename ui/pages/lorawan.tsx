// LoRaWAN children as ChirpStack reports them: radio quality, frame counter, battery, the
// downlink queue (what ChirpStack holds for each device that the gateway still follows), and the
// events that went wrong (ChirpStack's warning and error `log` events, downlinks that failed or
// were not acknowledged, payloads the codec could not decode), newest first.
import type { ComponentChildren } from 'preact'
import { useEffect } from 'preact/hooks'
import { ensureHealth, hasAdapter } from '../live.js'
import { Badge, Empty, ErrorLine, Section, TableWrap, useApi, useNow, THead } from '../components.js'
import { ago, dateTime, num } from '../format.js'
import { t } from '../i18n.js'
import { Link } from '../router.js'
import type { LoraDiagnostics } from '../types.js'

export function Lorawan() {
  const now = useNow()
  useEffect(ensureHealth, [])
  const configured = hasAdapter('lorawan')
  const diag = useApi<LoraDiagnostics>(configured ? '/api/adapters/lorawan/devices' : null, 5_000)
  const off = configured === false
  const list = diag.data?.devices ?? []
  const name = (d: { productId: string; deviceId: string }): string => `${d.productId}/${d.deviceId}`
  const queue = list.flatMap((c) => c.downlinks.map((q) => ({ ...q, device: c.device }))).sort((a, b) => a.queuedAt - b.queuedAt)
  const problems = list.flatMap((c) => c.problems.map((p) => ({ ...p, device: c.device }))).sort((a, b) => b.at - a.at)
  return (
    <>
      <h1>{t('nav.lorawan')}</h1>
      {off ? <Empty>{t('adapterOff', { name: 'lorawan' })}</Empty> : <ErrorLine error={diag.error} />}
      {diag.data && (
        <Section title={t('lo.children')} id="children">
          <p>
            ChirpStack: {diag.data.connected ? <Badge tone="ok">{t('ov.up')}</Badge> : <Badge tone="bad">{t('ov.down')}</Badge>}
          </p>
          {list.length === 0 ? (
            <Empty />
          ) : (
            <TableWrap label={t('lo.children')}>
              <THead cols={[t('col.device'), 'DevEUI', t('col.lastSeen'), t('col.rssi'), t('col.snr'), t('lo.gateways'), 'fCnt', 'DR', t('col.battery'), t('lo.downlinks'), t('lo.failed')]} />
              <tbody>
                {list.map((c) => (
                  <tr key={c.devEui}>
                    <td>
                      <Link to={`/devices/${encodeURIComponent(c.device.productId)}/${encodeURIComponent(c.device.deviceId)}`}>
                        {c.device.productId}/{c.device.deviceId}
                      </Link>{' '}
                      {c.reachable ? <Badge tone="ok">{t('dev.online')}</Badge> : <Badge tone="bad">{t('dev.offline')}</Badge>}
                    </td>
                    <td>{c.devEui}</td>
                    <td>{ago(c.lastSeen, now)}</td>
                    <td>{num(c.radio?.rssi)}</td>
                    <td>{num(c.radio?.snr, 1)}</td>
                    <td>{c.radio?.gateways ?? '—'}</td>
                    <td>{c.lastUplink?.fCnt ?? c.radio?.fCnt ?? '—'}</td>
                    <td>{c.radio?.dr ?? '—'}</td>
                    <td>{c.battery?.externalPower ? t('lo.external') : c.battery?.level !== undefined ? `${c.battery.level} %` : '—'}</td>
                    <td>{c.pendingDownlinks}</td>
                    <td>
                      {Object.entries(c.logs)
                        .map(([k, v]) => `${k} ${v}`)
                        .join(' · ') || '—'}
                    </td>
                  </tr>
                ))}
              </tbody>
            </TableWrap>
          )}
        </Section>
      )}
      {diag.data && (
        <TableSection title={t('lo.queue')} id="downlink-queue" empty={queue.length === 0 ? t('lo.queueEmpty') : undefined} cols={[t('col.device'), t('lo.what'), 'fPort', t('lo.confirmed'), t('col.state'), t('lo.queuedAt'), t('lo.until'), t('lo.queueId')]}>
          {queue.map((q) => (
            <tr key={q.id} data-queue-item={q.id}>
              <td>{name(q.device)}</td>
              <td>{q.what}</td>
              <td>{q.fPort}</td>
              <td>{q.confirmed ? t('lo.yes') : t('lo.no')}</td>
              <td>{q.state === 'sent' ? <Badge tone="ok">{t('lo.sent')}</Badge> : <Badge tone="warn">{t('lo.queued')}</Badge>}</td>
              <td>{ago(q.queuedAt, now)}</td>
              <td>{dateTime(q.followedUntil)}</td>
              <td>
                <code>{q.id}</code>
              </td>
            </tr>
          ))}
        </TableSection>
      )}
      {diag.data && (
        <TableSection title={t('lo.problems')} id="problems" empty={problems.length === 0 ? t('lo.noProblems') : undefined} cols={[t('col.time'), t('col.device'), t('lo.level'), t('lo.code'), t('lo.description'), t('lo.source')]}>
          {problems.map((p, i) => (
            <tr key={`${p.at}-${i}`}>
              <td>{dateTime(p.at)}</td>
              <td>{name(p.device)}</td>
              <td>{p.level === 'ERROR' ? <Badge tone="bad">{p.level}</Badge> : <Badge tone="warn">{p.level}</Badge>}</td>
              <td>
                <code>{p.code}</code>
              </td>
              <td>
                {p.description}
                {p.downlink ? ` (${t('lo.downlink')}: ${p.downlink})` : ''}
              </td>
              <td>{p.source === 'chirpstack' ? 'ChirpStack' : t('lo.gateway')}</td>
            </tr>
          ))}
        </TableSection>
      )}
    </>
  )
}

/** A section holding one table (or, when `empty` is given, that sentence instead). */
function TableSection(props: { title: string; id: string; empty?: string; cols: string[]; children: ComponentChildren }) {
  return (
    <Section title={props.title} id={props.id}>
      {props.empty !== undefined ? (
        <Empty>{props.empty}</Empty>
      ) : (
        <TableWrap label={props.title}>
          <THead cols={props.cols} />
          <tbody>{props.children}</tbody>
        </TableWrap>
      )}
    </Section>
  )
}
