// What a support engineer asks for first, in one download (redacted config, health, metrics,
// recent logs, outbox and link statistics, versions); the box's resources; the password.
import { useState } from 'preact/hooks'
import { api } from '../api.js'
import { Download, ErrorLine, Section, useApi } from '../components.js'
import { bytes, duration, num } from '../format.js'
import { t } from '../i18n.js'
import type { SystemInfo } from '../types.js'

export function System() {
  const s = useApi<SystemInfo>('/api/system', 10_000)
  return (
    <>
      <h1>{t('nav.system')}</h1>
      <Section title={t('sy.diagnostics')} id="diagnostics">
        <p>{t('sy.diagnosticsHelp')}</p>
        <Download href="/api/diagnostics">{t('sy.download')}</Download>
      </Section>
      <Section title={t('ov.system')} id="resources">
        <ErrorLine error={s.error} />
        {s.data && (
          <dl>
            <dt>{t('ov.version')}</dt>
            <dd>
              {s.data.version} · Node.js {s.data.node}
            </dd>
            <dt>{t('ov.uptime')}</dt>
            <dd>{duration(s.data.uptimeSeconds * 1000)}</dd>
            <dt>{t('ov.cpu')}</dt>
            <dd>
              {num(s.data.cpu.usagePercent)} % · {t('ov.load')} {num(s.data.cpu.load1, 2)} · {s.data.cpu.cores} {t('ov.cores')}
            </dd>
            <dt>{t('ov.memory')}</dt>
            <dd>
              {bytes(s.data.memory.systemTotal - s.data.memory.systemFree)} / {bytes(s.data.memory.systemTotal)} · {t('ov.gateway')} {bytes(s.data.memory.rss)}
            </dd>
            <dt>{t('ov.disk')}</dt>
            <dd>
              {s.data.disk.path}: {bytes(s.data.disk.freeBytes)} {t('ov.free')} / {bytes(s.data.disk.totalBytes)}
            </dd>
          </dl>
        )}
        <p>
          <a href="/metrics">{t('sy.metrics')}</a>
        </p>
      </Section>
      <Password />
    </>
  )
}

function Password() {
  const [error, setError] = useState<unknown>()
  const [done, setDone] = useState(false)
  const submit = async (e: Event): Promise<void> => {
    e.preventDefault()
    const form = e.currentTarget as HTMLFormElement
    const f = new FormData(form)
    setError(undefined)
    setDone(false)
    try {
      if (f.get('newPassword') !== f.get('newPassword2')) throw new Error(t('login.mismatch'))
      await api('/api/auth/password', { method: 'POST', body: { currentPassword: f.get('currentPassword'), newPassword: f.get('newPassword') } })
      form.reset()
      setDone(true)
    } catch (err) {
      setError(err)
    }
  }
  return (
    <Section title={t('sy.password')} id="password">
      <form onSubmit={(e) => void submit(e)}>
        <label>
          {t('sy.current')}
          <input name="currentPassword" type="password" required autocomplete="current-password" />
        </label>
        <label>
          {t('sy.new')}
          <input name="newPassword" type="password" required autocomplete="new-password" />
        </label>
        <label>
          {t('login.password2')}
          <input name="newPassword2" type="password" required autocomplete="new-password" />
        </label>
        <button type="submit">{t('sy.change')}</button>
      </form>
      <ErrorLine error={error} />
      {done && <p role="status">{t('sy.changed')}</p>}
    </Section>
  )
}
