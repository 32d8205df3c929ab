// API tokens for scripts: create (the token is shown this once; only its hash is kept), list with
// when each was last used, revoke.
import { useState } from 'preact/hooks'
import { api } from '../api.js'
import { Empty, ErrorLine, Section, TableWrap, useApi, THead } from '../components.js'
import { dateTime } from '../format.js'
import { t } from '../i18n.js'

interface Token {
  id: string | number
  name: string
  createdAt: number
  lastUsedAt: number | null
}

export function Tokens() {
  const list = useApi<{ tokens: Token[] }>('/api/tokens')
  const [created, setCreated] = useState<{ id: string; name: string; token: string }>()
  const [error, setError] = useState<unknown>()
  const create = async (e: Event): Promise<void> => {
    e.preventDefault()
    const form = e.currentTarget as HTMLFormElement
    const name = String(new FormData(form).get('name')).trim()
    setError(undefined)
    try {
      const r = await api<{ id: string; name: string; token: string }>('/api/tokens', { method: 'POST', body: { name } })
      setCreated(r)
      form.reset()
      list.reload()
    } catch (err) {
      setError(err)
    }
  }
  const revoke = async (tok: Token): Promise<void> => {
    if (!confirm(t('tk.revokeConfirm', { name: tok.name }))) return
    setError(undefined)
    try {
      await api(`/api/tokens/${encodeURIComponent(String(tok.id))}`, { method: 'DELETE' })
      // A token revoked right after it was made is no longer offered for copying.
      if (created && created.id === String(tok.id)) setCreated(undefined)
      list.reload()
    } catch (err) {
      setError(err)
    }
  }
  const tokens = list.data?.tokens ?? []
  return (
    <>
      <h1>{t('nav.tokens')}</h1>
      <p>{t('tk.help')}</p>
      <Section title={t('tk.create')} id="create">
        <form class="inline" onSubmit={(e) => void create(e)}>
          <label>
            {t('col.name')}
            <input name="name" required maxLength={64} />
          </label>
          <button type="submit">{t('tk.createSubmit')}</button>
        </form>
        {created && (
          <div class="secret" role="status">
            <p>{t('tk.once', { name: created.name })}</p>
            <code data-testid="token">{created.token}</code>
          </div>
        )}
      </Section>
      <ErrorLine error={error ?? list.error} />
      <Section title={t('tk.list')} id="tokens">
        {list.data && tokens.length === 0 ? (
          <Empty />
        ) : (
          <TableWrap label={t('tk.list')}>
            <THead cols={[t('col.name'), t('tk.created'), t('tk.lastUsed'), { hidden: t('tk.revoke') }]} />
            <tbody>
              {tokens.map((tok) => (
                <tr key={tok.id}>
                  <td>{tok.name}</td>
                  <td>{dateTime(tok.createdAt)}</td>
                  <td>{tok.lastUsedAt ? dateTime(tok.lastUsedAt) : t('never')}</td>
                  <td>
                    <button type="button" class="danger" onClick={() => void revoke(tok)}>
                      {t('tk.revoke')}
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </TableWrap>
        )}
      </Section>
    </>
  )
}
