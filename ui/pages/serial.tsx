// RS-485/RS-232 lines: each port's state and counters, a live monitor of the bytes on the line
// (hex or text), and a one-off Modbus read to find a new meter's registers.
import { useEffect, useState } from 'preact/hooks'
import { api } from '../api.js'
import { ensureHealth, hasAdapter } from '../live.js'
import { Badge, Empty, ErrorLine, Section, TableWrap, useApi, useField, useNow, THead } from '../components.js'
import { ago, dateTime } from '../format.js'
import { t } from '../i18n.js'

interface Port {
  name: string
  path: string
  protocol: string
  baudRate: number
  framing: string
  state: string
  stateSince: number | null
  open: boolean
  lastActivityAt: number | null
  problem: { message: string; at: number; hint: string } | null
  counters: Record<string, number>
}

interface Frame {
  ts: number
  dir: 'rx' | 'tx'
  hex: string
  text: string
}

const BASE = '/api/adapters/serial'

export function Serial() {
  useEffect(ensureHealth, [])
  const configured = hasAdapter('serial')
  const ports = useApi<{ ports: Port[] }>(configured ? `${BASE}/ports` : null, 5_000)
  const [monitor, setMonitor] = useState<string>()
  const notConfigured = configured === false
  const list = ports.data?.ports ?? []
  const now = useNow()
  return (
    <>
      <h1>{t('nav.serial')}</h1>
      {notConfigured ? <Empty>{t('adapterOff', { name: 'serial' })}</Empty> : <ErrorLine error={ports.error} />}
      {ports.data && (
        <Section title={t('se.ports')} id="ports">
          {list.length === 0 ? (
            <Empty />
          ) : (
            <TableWrap label={t('se.ports')}>
              <THead cols={[t('col.name'), t('se.path'), t('col.protocol'), t('col.state'), t('se.counters'), t('se.problem'), { hidden: t('se.monitor') }]} />
              <tbody>
                {list.map((p) => (
                  <tr key={p.name}>
                    <td>{p.name}</td>
                    <td>{p.path}</td>
                    <td>
                      {p.protocol} · {p.baudRate} {p.framing}
                    </td>
                    <td>
                      <Badge tone={p.open ? 'ok' : 'bad'}>{p.state}</Badge> <span class="muted">{ago(p.stateSince, now)}</span>
                    </td>
                    <td>
                      {Object.entries(p.counters)
                        .map(([k, v]) => `${k} ${v}`)
                        .join(' · ')}
                    </td>
                    <td>
                      {p.problem && (
                        <>
                          <span class="muted">{dateTime(p.problem.at)}</span> {p.problem.message}
                          <br />
                          <em>{p.problem.hint}</em>
                        </>
                      )}
                    </td>
                    <td>
                      <button type="button" onClick={() => setMonitor(p.name)}>
                        {t('se.watch')}
                      </button>
                    </td>
                  </tr>
                ))}
              </tbody>
            </TableWrap>
          )}
        </Section>
      )}
      {monitor && <Monitor port={monitor} />}
      {list.some((p) => p.protocol === 'modbus-rtu') && <ModbusRead ports={list.filter((p) => p.protocol === 'modbus-rtu').map((p) => p.name)} />}
    </>
  )
}

function Monitor({ port }: { port: string }) {
  const [frames, setFrames] = useState<Frame[]>([])
  const [hex, setHex] = useState(true)
  const [connected, setConnected] = useState(false)
  useEffect(() => {
    setFrames([])
    const es = new EventSource(`${BASE}/ports/${encodeURIComponent(port)}/monitor`)
    es.onopen = () => setConnected(true)
    es.onerror = () => setConnected(false)
    es.addEventListener('line', (e: MessageEvent<string>) => {
      const f = JSON.parse(e.data) as Frame
      setFrames((fs) => [f, ...fs].slice(0, 200))
    })
    return () => es.close()
  }, [port])
  return (
    <Section
      title={t('se.monitorOf', { port })}
      id="monitor"
      actions={
        <label class="check">
          <input type="checkbox" checked={hex} onChange={(e) => setHex(e.currentTarget.checked)} />
          {t('se.hex')}
        </label>
      }
    >
      <p>{connected ? <Badge tone="ok">{t('live.on')}</Badge> : <Badge tone="muted">{t('live.off')}</Badge>}</p>
      {frames.length === 0 ? (
        <Empty>{t('se.quiet')}</Empty>
      ) : (
        <ol class="monitor" aria-live="off">
          {frames.map((f, i) => (
            <li key={i}>
              <span class="muted">{dateTime(f.ts)}</span> <strong>{f.dir}</strong> <code>{hex ? f.hex.replace(/(..)/g, '$1 ').trim() : f.text}</code>
            </li>
          ))}
        </ol>
      )}
    </Section>
  )
}

function ModbusRead({ ports }: { ports: string[] }) {
  const [result, setResult] = useState<{ values: unknown[] }>()
  const [error, setError] = useState<unknown>()
  const unit = useField('1')
  const address = useField('0')
  const count = useField('1')
  const submit = async (e: Event): Promise<void> => {
    e.preventDefault()
    const f = new FormData(e.currentTarget as HTMLFormElement)
    setError(undefined)
    setResult(undefined)
    try {
      const body = { unit: Number(f.get('unit')), table: String(f.get('table')), address: Number(f.get('address')), count: Number(f.get('count')) }
      setResult(await api<{ values: unknown[] }>(`${BASE}/ports/${encodeURIComponent(String(f.get('port')))}/modbus/read`, { method: 'POST', body }))
    } catch (err) {
      setError(err)
    }
  }
  return (
    <Section title={t('se.modbus')} id="modbus">
      <form class="inline" onSubmit={(e) => void submit(e)}>
        <label>
          {t('se.port')}
          <select name="port">
            {ports.map((p) => (
              <option key={p}>{p}</option>
            ))}
          </select>
        </label>
        <label>
          {t('se.unit')}
          <input name="unit" type="number" min={1} max={247} required {...unit} />
        </label>
        <label>
          {t('se.table')}
          <select name="table">
            <option value="holding">holding</option>
            <option value="input">input</option>
            <option value="coil">coil</option>
            <option value="discrete">discrete</option>
          </select>
        </label>
        <label>
          {t('se.address')}
          <input name="address" type="number" min={0} max={65535} required {...address} />
        </label>
        <label>
          {t('se.count')}
          <input name="count" type="number" min={1} max={125} required {...count} />
        </label>
        <button type="submit">{t('se.read')}</button>
      </form>
      <ErrorLine error={error} />
      {result && (
        <div role="status">
          <p>
            {t('se.values')}: <code data-testid="modbus-values">{JSON.stringify(result.values)}</code>
          </p>
          <pre class="json">{JSON.stringify(result, null, 2)}</pre>
        </div>
      )}
    </Section>
  )
}
