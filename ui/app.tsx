// The shell: sign-in until there is a session, then a header (live state, language, sign out), the
// page list and the page the route names.
import { useEffect } from 'preact/hooks'
import { auth, loadAuthState, logout } from './api.js'
import { LANGS, lang, setLang, t, type Key } from './i18n.js'
import { health, liveConnected, startLive, stopLive } from './live.js'
import { Link, route } from './router.js'
import { Login } from './pages/login.js'
import { Overview } from './pages/overview.js'
import { Devices } from './pages/devices.js'
import { DevicePage } from './pages/device.js'
import { Serial } from './pages/serial.js'
import { Lorawan } from './pages/lorawan.js'
import { Ota } from './pages/ota.js'
import { Rules } from './pages/rules.js'
import { Logs } from './pages/logs.js'
import { System } from './pages/system.js'
import { Tokens } from './pages/tokens.js'

const PAGES: { to: string; label: Key }[] = [
  { to: '/', label: 'nav.overview' },
  { to: '/devices', label: 'nav.devices' },
  { to: '/serial', label: 'nav.serial' },
  { to: '/lorawan', label: 'nav.lorawan' },
  { to: '/ota', label: 'nav.ota' },
  { to: '/rules', label: 'nav.rules' },
  { to: '/logs', label: 'nav.logs' },
  { to: '/system', label: 'nav.system' },
  { to: '/tokens', label: 'nav.tokens' },
]

function Page() {
  const r = route.value
  const device = /^\/devices\/([^/]+)\/([^/]+)$/.exec(r)
  if (device) return <DevicePage productId={decodeURIComponent(device[1])} deviceId={decodeURIComponent(device[2])} />
  switch (r) {
    case '/devices':
      return <Devices />
    case '/serial':
      return <Serial />
    case '/lorawan':
      return <Lorawan />
    case '/ota':
      return <Ota />
    case '/rules':
      return <Rules />
    case '/logs':
      return <Logs />
    case '/system':
      return <System />
    case '/tokens':
      return <Tokens />
    default:
      return <Overview />
  }
}

function LangSwitch() {
  return (
    <label class="lang">
      <span class="visually-hidden">{t('language')}</span>
      <select value={lang.value} onChange={(e) => setLang(e.currentTarget.value as (typeof LANGS)[number])}>
        <option value="en">English</option>
        <option value="zh">简体中文</option>
      </select>
    </label>
  )
}

export function App() {
  const a = auth.value
  useEffect(() => {
    void loadAuthState()
  }, [])
  useEffect(() => {
    if (a.kind === 'in') startLive()
    else stopLive()
  }, [a.kind])
  useEffect(() => {
    document.documentElement.lang = lang.value === 'zh' ? 'zh-CN' : 'en'
  }, [lang.value])

  if (a.kind === 'loading') return <main class="center" aria-busy="true">{t('loading')}</main>
  if (a.kind !== 'in') {
    return (
      <>
        <header class="top">
          <span class="brand">iothub-edge</span>
          <LangSwitch />
        </header>
        <Login setup={a.kind === 'setup'} expired={a.kind === 'login' && a.expired === true} />
      </>
    )
  }
  const h = health.value
  const current = route.value.startsWith('/devices/') ? '/devices' : route.value
  return (
    <>
      <a class="skip" href="#main">
        {t('skip')}
      </a>
      <header class="top">
        <span class="brand">iothub-edge</span>
        <span class={`live ${liveConnected.value ? 'on' : 'off'}`} role="status">
          {liveConnected.value ? t('live.on') : t('live.off')}
        </span>
        {h && h.status !== 'ok' && <span class="badge bad">{t('degraded')}</span>}
        <span class="spacer" />
        <LangSwitch />
        {a.username && <span class="user">{a.username}</span>}
        <button type="button" class="link" onClick={() => void logout()}>
          {t('logout')}
        </button>
      </header>
      <nav class="pages" aria-label={t('nav.label')}>
        <ul>
          {PAGES.map((p) => (
            <li key={p.to}>
              <Link to={p.to} aria-current={current === p.to ? 'page' : undefined}>
                {t(p.label)}
              </Link>
            </li>
          ))}
        </ul>
      </nav>
      <main id="main" tabIndex={-1}>
        <Page />
      </main>
    </>
  )
}
