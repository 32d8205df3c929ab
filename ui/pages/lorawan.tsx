// LoRaWAN children as ChirpStack reports them: radio quality, frame counter, battery, the
// downlinks still followed, and the ChirpStack log events that went wrong.
import { useEffect } from 'preact/hooks'
import { ensureHealth, hasAdapter } from '../live.js'
import { Badge, Empty, ErrorLine, Section, TableWrap, useApi, useNow, THead } from '../components.js'
import { ago, num } from '../format.js'
import { t } from '../i18n.js'
import { Link } from '../router.js'

interface Child {
  device: { productId: string; deviceId: string }
  devEui: string
  deviceClass?: string
  reachable: boolean
  lastSeen?: number
  lastUplink?: { at: number; fPort: number; fCnt: number }
  radio?: { rssi?: number; snr?: number; gateways: number; fCnt: number; dr: number }
  battery?: { level?: number; externalPower: boolean }
  logs: Record<string, number>
  pendingDownlinks: number
  usualIntervalSeconds?: number
}

export function Lorawan() {
  const now = useNow()
  useEffect(ensureHealth, [])
  const configured = hasAdapter('lorawan')
  const diag = useApi<{ connected: boolean; devices: Child[] }>(configured ? '/api/adapters/lorawan/devices' : null, 10_000)
  const off = configured === false
  const list = diag.data?.devices ?? []
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
    </>
  )
}
