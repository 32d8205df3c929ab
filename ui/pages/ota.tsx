// Firmware: the images the gateway holds, its jobs with each device's progress, and an upload that
// is pushed to devices or a tag with no hub in reach.
import { useState } from 'preact/hooks'
import { api } from '../api.js'
import { Badge, Empty, ErrorLine, Section, TableWrap, useApi, useField, THead } from '../components.js'
import { bytes, dateTime } from '../format.js'
import { t, type Key } from '../i18n.js'
import type { OtaJobView } from '../types.js'

interface Image {
  key: string
  md5: string
  size: number
  version: string
  type: string
  source: string
  state: string
  createdAt: number
  references: number
  fetchedBytes?: number
}


export function Ota() {
  const images = useApi<{ images: Image[] }>('/api/ota/images', 10_000)
  const jobs = useApi<{ jobs: OtaJobView[] }>('/api/ota/jobs', 5_000)
  const imgs = images.data?.images ?? []
  return (
    <>
      <h1>{t('nav.ota')}</h1>
      <Section title={t('ota.images')} id="images">
        <ErrorLine error={images.error} />
        {images.data && imgs.length === 0 ? (
          <Empty />
        ) : (
          <TableWrap label={t('ota.images')}>
            <THead cols={[t('ota.version'), t('ota.type'), t('ota.size'), 'MD5', t('ota.source'), t('col.state'), t('ota.refs'), t('col.time')]} />
            <tbody>
              {imgs.map((i) => (
                <tr key={i.key}>
                  <td>{i.version}</td>
                  <td>{i.type}</td>
                  <td>{bytes(i.size)}</td>
                  <td>
                    <code>{i.md5}</code>
                  </td>
                  <td>{i.source}</td>
                  <td>{i.state === 'fetching' ? `${i.state} ${bytes(i.fetchedBytes ?? 0)}` : i.state}</td>
                  <td>{i.references}</td>
                  <td>{dateTime(i.createdAt)}</td>
                </tr>
              ))}
            </tbody>
          </TableWrap>
        )}
      </Section>
      <div class="grid wide">
        <Upload onDone={images.reload} />
        <Push images={imgs.filter((i) => i.state === 'ready')} onDone={jobs.reload} />
      </div>
      <Section title={t('ota.jobs')} id="jobs">
        <ErrorLine error={jobs.error} />
        {jobs.data && jobs.data.jobs.length === 0 && <Empty />}
        {(jobs.data?.jobs ?? []).map((j) => (
          <div key={j.job} class="job">
            <h3>
              {j.version} ({j.type}) · {j.origin} · <span class="muted">{j.job}</span>
            </h3>
            <ul class="progress-list">
              {j.devices.map((d) => (
                <li key={d.device}>
                  <span>{d.device}</span>{' '}
                  <Badge tone={d.state === 'done' ? 'ok' : d.state === 'failed' || d.state === 'expired' ? 'bad' : 'muted'}>{d.state}</Badge>
                  <progress max={100} value={Math.max(0, d.progress ?? (d.state === 'done' ? 100 : 0))} aria-label={t('ota.progressOf', { device: d.device })} />
                  <span class="muted">
                    {progressText(d.progress)} · {bytes(d.bytesServed)}
                    {d.reason ? ` · ${d.reason}` : ''}
                  </span>
                </li>
              ))}
            </ul>
          </div>
        ))}
      </Section>
    </>
  )
}

// update_ota_status progress below 0 is a failure code (PROTOCOL.md "OTA"), not a percentage.
const FAILURES: Record<number, Key> = { [-1]: 'ota.failDownload', [-2]: 'ota.failChecksum', [-3]: 'ota.failInstall', [-4]: 'ota.failOther' }

function progressText(progress: number | null): string {
  if (progress === null || progress >= 0) return `${progress ?? 0} %`
  return `${t(FAILURES[progress] ?? 'ota.failOther')} (${progress})`
}

function Upload({ onDone }: { onDone: () => void }) {
  const [error, setError] = useState<unknown>()
  const [done, setDone] = useState<string>()
  const [busy, setBusy] = useState(false)
  const type = useField('firmware')
  const submit = async (e: Event): Promise<void> => {
    e.preventDefault()
    const form = e.currentTarget as HTMLFormElement
    const f = new FormData(form)
    const file = f.get('file') as File
    const q = new URLSearchParams({ version: String(f.get('version')), type: String(f.get('type')) })
    setBusy(true)
    setError(undefined)
    setDone(undefined)
    try {
      const r = await api<{ image: Image }>(`/api/ota/images?${q}`, { method: 'POST', raw: file })
      setDone(`${r.image.version} · ${r.image.md5}`)
      form.reset()
      onDone()
    } catch (err) {
      setError(err)
    } finally {
      setBusy(false)
    }
  }
  return (
    <Section title={t('ota.upload')} id="upload">
      <form onSubmit={(e) => void submit(e)}>
        <label>
          {t('ota.file')}
          <input name="file" type="file" required />
        </label>
        <label>
          {t('ota.version')}
          <input name="version" required />
        </label>
        <label>
          {t('ota.type')}
          <input name="type" required {...type} />
        </label>
        <button type="submit" disabled={busy}>
          {t('ota.uploadSubmit')}
        </button>
      </form>
      <ErrorLine error={error} />
      {done && <p role="status">{t('ota.uploaded', { image: done })}</p>}
    </Section>
  )
}

function Push({ images, onDone }: { images: Image[]; onDone: () => void }) {
  const [error, setError] = useState<unknown>()
  const [done, setDone] = useState<{ job: string; devices: string[] }>()
  const submit = async (e: Event): Promise<void> => {
    e.preventDefault()
    const f = new FormData(e.currentTarget as HTMLFormElement)
    const devices = String(f.get('devices') ?? '')
      .split(/[\s,]+/)
      .filter(Boolean)
    const tag = String(f.get('tag') ?? '').trim()
    const productId = String(f.get('productId') ?? '').trim()
    const body = tag ? { image: f.get('image'), productId, tag } : { image: f.get('image'), devices }
    setError(undefined)
    setDone(undefined)
    try {
      const r = await api<{ job: string; devices: string[] }>('/api/ota/jobs', { method: 'POST', body })
      setDone(r)
      onDone()
    } catch (err) {
      setError(err)
    }
  }
  return (
    <Section title={t('ota.push')} id="push">
      <form onSubmit={(e) => void submit(e)}>
        <label>
          {t('ota.image')}
          <select name="image" required>
            {images.map((i) => (
              <option key={i.key} value={i.md5}>
                {i.version} ({i.type})
              </option>
            ))}
          </select>
        </label>
        <label>
          {t('ota.devices')}
          <input name="devices" placeholder="p1/d1 p1/d2" />
        </label>
        <p class="muted">{t('ota.orTag')}</p>
        <label>
          {t('col.productId')}
          <input name="productId" />
        </label>
        <label>
          {t('ota.tag')}
          <input name="tag" />
        </label>
        <button type="submit" disabled={images.length === 0}>
          {t('ota.pushSubmit')}
        </button>
      </form>
      <ErrorLine error={error} />
      {done && (
        <p role="status" data-testid="ota-started" data-job={done.job}>
          {t('ota.started', { job: done.job, n: done.devices.length, devices: done.devices.join(', ') })}
        </p>
      )}
    </Section>
  )
}
