// Sign in, or on first start set the administrator's password with the one-time setup code the
// gateway printed in its log (there is no default password).
import { useState } from 'preact/hooks'
import { ApiError, login, setup } from '../api.js'
import { useField } from '../components.js'
import { t } from '../i18n.js'

export function Login(props: { setup: boolean; expired: boolean }) {
  const [error, setError] = useState<string>()
  const [busy, setBusy] = useState(false)
  const username = useField(props.setup ? 'admin' : '')
  const submit = async (e: Event): Promise<void> => {
    e.preventDefault()
    const f = new FormData(e.currentTarget as HTMLFormElement)
    const get = (k: string): string => String(f.get(k) ?? '')
    setBusy(true)
    setError(undefined)
    try {
      if (props.setup) {
        if (get('password') !== get('password2')) throw new Error(t('login.mismatch'))
        await setup(get('setupCode').trim(), get('username'), get('password'))
      } else await login(get('username'), get('password'))
    } catch (err) {
      const code = err instanceof ApiError ? err.code : ''
      setError(
        code === 'bad_credentials'
          ? t('login.bad')
          : code === 'rate_limited'
            ? t('login.rateLimited')
            : code === 'bad_setup_code'
              ? t('login.badCode')
              : (err as Error).message,
      )
    } finally {
      setBusy(false)
    }
  }
  return (
    <main id="main" class="login">
      <h1>{props.setup ? t('login.setupTitle') : t('login.title')}</h1>
      {props.setup && <p>{t('login.setupHelp')}</p>}
      {props.expired && !props.setup && <p class="warn-text">{t('login.expired')}</p>}
      <form onSubmit={(e) => void submit(e)}>
        {props.setup && (
          <label>
            {t('login.setupCode')}
            <input name="setupCode" required autocomplete="one-time-code" spellcheck={false} />
          </label>
        )}
        <label>
          {t('login.username')}
          <input name="username" required autocomplete="username" {...username} />
        </label>
        <label>
          {t('login.password')}
          <input name="password" type="password" required autocomplete={props.setup ? 'new-password' : 'current-password'} />
        </label>
        {props.setup && (
          <label>
            {t('login.password2')}
            <input name="password2" type="password" required autocomplete="new-password" />
          </label>
        )}
        {error && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" disabled={busy}>
          {props.setup ? t('login.setupSubmit') : t('login.submit')}
        </button>
      </form>
    </main>
  )
}
