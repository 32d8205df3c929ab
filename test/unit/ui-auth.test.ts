// The web UI's login, server side, through buildApp() with inject() and the real store (a SQLite
// file in a temporary folder): first-run setup with the code from its file, logins and their rate
// limit, sessions (idle timeout and lifetime on an injected clock), CSRF and cross-site refusals,
// the bearer token and API tokens. The browser-level run is test/scenario/ui-auth-process.test.ts.
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { FastifyInstance, LightMyRequestResponse } from 'fastify'
import { pino } from 'pino'
import { buildApp } from '../../src/web/app.js'
import type { WebDeps } from '../../src/web/deps.js'
import { openDatabase, type Db } from '../../src/store/db.js'
import { UiAuthStore } from '../../src/store/ui-auth.js'
import { SETUP_CODE_FILE, createSetupCode } from '../../src/web/auth-setup.js'
import { WebServer } from '../../src/web/server.js'
import { SESSION_COOKIE } from '../../src/web/auth-service.js'
import type { Credential } from '../../src/web/auth.js'

const TOKEN = 'tok-0123456789abcdef'
const PASSWORD = 'correct horse battery'
const IDLE_S = 600
const LIFETIME_S = 3600

let dir: string
let db: Db
let app: FastifyInstance
let clock: number
let logs: string[]
let failures: string[]
/** The credential the last request to /api/adapters/probe/whoami was let in with (what an event stream holds on to). */
let held: Credential | null

function deps(): WebDeps {
  const unused = (): never => {
    throw new Error('not used by these tests')
  }
  return {
    log: pino({ level: 'debug' }, { write: (line: string) => void logs.push(line) }),
    apiToken: TOKEN,
    health: unused,
    metrics: unused,
    outboxStats: () => ({ messages: 0, bytes: 0, oldestAgeMs: 0, byPriority: {}, dropped: {}, maxBytes: 1 }) as never,
    devices: {} as WebDeps['devices'],
    commands: {} as WebDeps['commands'],
    adapterRoutes: [
      {
        adapter: 'probe',
        plugin: async (scope) => {
          scope.get('/whoami', async (req) => {
            held = req.credential
            return { kind: req.credential?.kind }
          })
        },
      },
    ],
    ui: {
      store: new UiAuthStore(db),
      dataDir: dir,
      idleTimeoutSeconds: IDLE_S,
      maxLifetimeSeconds: LIFETIME_S,
      secureCookie: false,
      countFailure: (r) => void failures.push(r),
      now: () => clock,
    },
  }
}

beforeEach(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'ui-auth-'))
  db = openDatabase(dir)
  clock = 1_700_000_000_000
  logs = []
  failures = []
  app = buildApp(deps())
  await app.ready()
})
afterEach(async () => {
  await app.close()
  db.close()
  rmSync(dir, { recursive: true, force: true })
})

const ORIGIN = { host: 'gw.local:8090', origin: 'http://gw.local:8090', 'sec-fetch-site': 'same-origin' }
const post = (url: string, payload: object, headers: Record<string, string> = {}, remoteAddress?: string) =>
  app.inject({ method: 'POST', url, payload, headers: { ...ORIGIN, ...headers }, ...(remoteAddress ? { remoteAddress } : {}) })
const get = (url: string, headers: Record<string, string> = {}) => app.inject({ method: 'GET', url, headers: { host: ORIGIN.host, ...headers } })
const cookieOf = (res: LightMyRequestResponse): string => {
  const c = res.cookies.find((x) => x.name === SESSION_COOKIE)
  if (!c) throw new Error(`no ${SESSION_COOKIE} cookie in ${JSON.stringify(res.headers['set-cookie'])}`)
  return `${SESSION_COOKIE}=${c.value}`
}

/** Setup with the code from the file; the session's cookie header and CSRF token. */
async function setUp(): Promise<{ cookie: string; csrf: string }> {
  createSetupCode(dir)
  const code = readFileSync(path.join(dir, SETUP_CODE_FILE), 'utf8').trim()
  const res = await post('/api/auth/setup', { setupCode: code, username: 'admin', password: PASSWORD })
  expect(res.statusCode, res.body).toBe(200)
  return { cookie: cookieOf(res), csrf: res.json().csrfToken }
}

async function login(password = PASSWORD, remoteAddress?: string, username = 'admin'): Promise<LightMyRequestResponse> {
  return post('/api/auth/login', { username, password }, {}, remoteAddress)
}

describe('first-run setup', () => {
  it('needs the code from the 0600 file, sets the admin, deletes the file, and happens once', async () => {
    expect((await get('/api/auth/state')).json()).toEqual({ setupRequired: true, user: null, csrfToken: null })
    const { code, file } = createSetupCode(dir)
    expect(statSync(file).mode & 0o777).toBe(0o600)

    const wrong = await post('/api/auth/setup', { setupCode: 'AAAA-BBBB-CCCC', username: 'admin', password: PASSWORD })
    expect(wrong.statusCode).toBe(403)
    expect(wrong.json().error).toBe('bad_setup_code')
    expect(failures).toEqual(['bad_setup_code'])
    const weak = await post('/api/auth/setup', { setupCode: code, username: 'admin', password: 'short' })
    expect(weak.statusCode).toBe(400)
    expect(weak.json()).toMatchObject({ error: 'weak_password', message: expect.stringMatching(/at least 10 characters/) })
    expect(existsSync(file)).toBe(true)

    // Typed as a technician might: lower case, without the dashes.
    const ok = await post('/api/auth/setup', { setupCode: code.toLowerCase().replace(/-/g, ''), username: 'admin', password: PASSWORD })
    expect(ok.statusCode, ok.body).toBe(200)
    expect(ok.json()).toEqual({ user: { username: 'admin' }, csrfToken: expect.any(String) })
    const setCookie = String(ok.headers['set-cookie'])
    expect(setCookie).toMatch(/HttpOnly/)
    expect(setCookie).toMatch(/SameSite=Strict/)
    expect(setCookie).toMatch(/Path=\//)
    expect(setCookie).not.toMatch(/Secure/)
    expect(existsSync(file)).toBe(false)

    const state = (await get('/api/auth/state', { cookie: cookieOf(ok) })).json()
    expect(state).toEqual({ setupRequired: false, user: { username: 'admin' }, csrfToken: ok.json().csrfToken })
    const again = await post('/api/auth/setup', { setupCode: code, username: 'mallory', password: PASSWORD })
    expect(again.statusCode).toBe(409)
    expect(again.json().error).toBe('already_set_up')
  })

  it('keeps the password as a scrypt hash with its parameters, never the password', async () => {
    await setUp()
    const row = db.prepare('SELECT password_hash FROM ui_users').get() as { password_hash: string }
    expect(row.password_hash).toMatch(/^scrypt\$32768\$8\$1\$[\w-]+\$[\w-]+$/)
    expect(row.password_hash).not.toContain(PASSWORD)
  })
})

describe('the setup code at start (WebServer, listening)', () => {
  it('is made and told once with the URL; a restart before the setup says only where the file is; none once set up', async () => {
    const start = async (): Promise<string> => {
      const before = logs.length
      const server = new WebServer(deps(), { host: '127.0.0.1', port: 0, dataDir: dir })
      await server.start()
      await server.stop()
      return logs.slice(before).join('\n')
    }
    const first = await start()
    const code = readFileSync(path.join(dir, SETUP_CODE_FILE), 'utf8').trim()
    expect(first).toMatch(new RegExp(`open http://127\\.0\\.0\\.1:\\d+/ and enter the setup code ${code} \\(also in ${path.join(dir, SETUP_CODE_FILE)}`))
    const second = await start()
    expect(readFileSync(path.join(dir, SETUP_CODE_FILE), 'utf8').trim(), 'the same code').toBe(code)
    expect(second).toContain(`enter the setup code from ${path.join(dir, SETUP_CODE_FILE)}`)
    expect(second).not.toContain(code)
    expect((await post('/api/auth/setup', { setupCode: code, username: 'admin', password: PASSWORD })).statusCode).toBe(200)
    expect(await start()).not.toMatch(/setup code/)
  })
})

describe('login', () => {
  it('answers the cookie and CSRF token for the right password, 401 bad_credentials otherwise', async () => {
    await setUp()
    const ok = await login()
    expect(ok.statusCode).toBe(200)
    expect(ok.json()).toEqual({ user: { username: 'admin' }, csrfToken: expect.any(String) })
    expect((await get('/api/outbox', { cookie: cookieOf(ok) })).statusCode).toBe(200)

    for (const bad of [await login('wrong password'), await login(PASSWORD, undefined, 'nobody')]) {
      expect(bad.statusCode).toBe(401)
      expect(bad.json()).toEqual({ error: 'bad_credentials', message: 'wrong username or password' })
      expect(bad.headers['set-cookie']).toBeUndefined()
    }
  })

  it('is refused with 429 and Retry-After after 5 failures a minute, per address and per username; logged once; counted', async () => {
    await setUp()
    for (let i = 0; i < 5; i++) expect((await login(`wrong-${i}-password`, '10.0.0.9')).statusCode).toBe(401)
    // The right password too: the address is blocked for the rest of the minute.
    const limited = await login(PASSWORD, '10.0.0.9')
    expect(limited.statusCode).toBe(429)
    expect(limited.json().error).toBe('rate_limited')
    expect(Number(limited.headers['retry-after'])).toBeGreaterThan(0)
    expect(Number(limited.headers['retry-after'])).toBeLessThanOrEqual(60)
    expect((await login(PASSWORD, '10.0.0.9')).statusCode).toBe(429)
    // The username was guessed at 5 times as well: from another address it is blocked too.
    expect((await login(PASSWORD, '10.0.0.10')).statusCode).toBe(429)
    // Another username from another address is not.
    expect((await login('whatever-password', '10.0.0.11', 'someone')).statusCode).toBe(401)

    const lines = logs.filter((l) => l.includes('IHE_UI_LOGIN_RATE_LIMITED'))
    expect(lines).toHaveLength(1)
    expect(lines[0]).toContain('10.0.0.9')
    expect(failures.filter((f) => f === 'rate_limited')).toHaveLength(3)
    expect(failures.filter((f) => f === 'bad_credentials')).toHaveLength(6)

    clock += 61_000
    expect((await login(PASSWORD, '10.0.0.9')).statusCode).toBe(200)
  })

  it('refuses a login posted from another site', async () => {
    await setUp()
    const res = await post('/api/auth/login', { username: 'admin', password: PASSWORD }, { origin: 'http://evil.example', 'sec-fetch-site': 'cross-site' })
    expect(res.statusCode).toBe(403)
    expect(res.json().error).toBe('csrf')
  })
})

describe('sessions', () => {
  it('end after the idle timeout, and after their lifetime however busy', async () => {
    const { cookie } = await setUp()
    clock += (IDLE_S - 1) * 1000
    expect((await get('/api/outbox', { cookie })).statusCode).toBe(200)
    clock += (IDLE_S - 1) * 1000
    expect((await get('/api/outbox', { cookie })).statusCode, 'each request restarts the idle timeout').toBe(200)
    clock += IDLE_S * 1000
    const expired = await get('/api/outbox', { cookie })
    expect(expired.statusCode).toBe(401)
    expect(expired.json().error).toBe('unauthorized')
    expect((await get('/api/auth/state', { cookie })).json().user).toBeNull()

    const busy = cookieOf(await login())
    for (let t = 0; t < LIFETIME_S; t += IDLE_S / 2) {
      clock += (IDLE_S / 2) * 1000
      const res = await get('/api/outbox', { cookie: busy })
      expect(res.statusCode).toBe(t + IDLE_S / 2 < LIFETIME_S ? 200 : 401)
    }
  })

  it("the app's own refreshes (x-background) and opening the live stream are answered but do not restart the idle timeout", async () => {
    const { cookie } = await setUp()
    clock += (IDLE_S - 1) * 1000
    expect((await get('/api/outbox', { cookie, 'x-background': '1' })).statusCode).toBe(200)
    expect((await get('/api/auth/state', { cookie, 'x-background': '1' })).json().user).toEqual({ username: 'admin' })
    expect((await get('/api/events', { cookie })).statusCode).not.toBe(401)
    clock += 2_000
    expect((await get('/api/outbox', { cookie, 'x-background': '1' })).statusCode, 'idle since the login: ended').toBe(401)

    // A request of the user's own does restart it.
    const busy = cookieOf(await login())
    clock += (IDLE_S - 1) * 1000
    expect((await get('/api/outbox', { cookie: busy })).statusCode).toBe(200)
    clock += 2_000
    expect((await get('/api/outbox', { cookie: busy, 'x-background': '1' })).statusCode).toBe(200)
  })

  it('logout ends the session and clears the cookie', async () => {
    const { cookie, csrf } = await setUp()
    const out = await post('/api/auth/logout', {}, { cookie, 'x-csrf-token': csrf })
    expect(out.statusCode).toBe(204)
    expect(String(out.headers['set-cookie'])).toMatch(new RegExp(`${SESSION_COOKIE}=;`))
    expect((await get('/api/outbox', { cookie })).statusCode).toBe(401)
  })

  it('a password change needs the current password and ends the other sessions', async () => {
    const first = await setUp()
    const other = cookieOf(await login())
    const wrong = await post('/api/auth/password', { currentPassword: 'not it at all', newPassword: 'another good one' }, { cookie: first.cookie, 'x-csrf-token': first.csrf })
    expect(wrong.statusCode).toBe(401)
    const ok = await post('/api/auth/password', { currentPassword: PASSWORD, newPassword: 'another good one' }, { cookie: first.cookie, 'x-csrf-token': first.csrf })
    expect(ok.statusCode).toBe(204)
    expect((await get('/api/outbox', { cookie: first.cookie })).statusCode).toBe(200)
    expect((await get('/api/outbox', { cookie: other })).statusCode).toBe(401)
    expect((await login()).statusCode).toBe(401)
    expect((await login('another good one')).statusCode).toBe(200)
  })
})

describe('CSRF and cross-site requests with the cookie', () => {
  it('a state change needs the session\'s x-csrf-token', async () => {
    const { cookie, csrf } = await setUp()
    const missing = await post('/api/tokens', { name: 'x' }, { cookie })
    expect(missing.statusCode).toBe(403)
    expect(missing.json()).toMatchObject({ error: 'csrf', message: expect.stringMatching(/x-csrf-token/) })
    expect((await post('/api/tokens', { name: 'x' }, { cookie, 'x-csrf-token': 'not-the-token' })).statusCode).toBe(403)
    const other = (await login()).json().csrfToken as string
    expect((await post('/api/tokens', { name: 'x' }, { cookie, 'x-csrf-token': other })).statusCode, "another session's token").toBe(403)
    expect(db.prepare('SELECT count(*) AS n FROM api_tokens').get()).toEqual({ n: 0 })
    expect((await post('/api/tokens', { name: 'x' }, { cookie, 'x-csrf-token': csrf })).statusCode).toBe(201)
  })

  it('refuses another origin or a cross-site / same-site fetch, even with the CSRF token, and on the event stream', async () => {
    const { cookie, csrf } = await setUp()
    const headers = { cookie, 'x-csrf-token': csrf }
    const refused: Record<string, string>[] = [
      { origin: 'http://evil.example' },
      { origin: 'null' },
      { origin: 'http://gw.local:8091' },
      { 'sec-fetch-site': 'cross-site' },
      { 'sec-fetch-site': 'same-site' },
    ]
    for (const h of refused) {
      const res = await post('/api/tokens', { name: 'x' }, { ...headers, ...h })
      expect(res.statusCode, JSON.stringify(h)).toBe(403)
      expect(res.json().error).toBe('csrf')
    }
    const stream = await get('/api/outbox', { cookie, accept: 'text/event-stream', 'sec-fetch-site': 'cross-site' })
    expect(stream.statusCode).toBe(403)
    expect((await get('/api/outbox', { cookie, accept: 'text/event-stream', 'sec-fetch-site': 'same-origin' })).statusCode).toBe(200)
    // Typed in the address bar (no Origin, Sec-Fetch-Site: none): a read is fine.
    expect((await get('/api/outbox', { cookie, 'sec-fetch-site': 'none' })).statusCode).toBe(200)
  })
})

describe('bearer tokens', () => {
  it('the api-token file\'s token works as before, without a CSRF token, beside the login', async () => {
    await setUp()
    const res = await app.inject({ method: 'POST', url: '/api/tokens', payload: { name: 'from-script' }, headers: { authorization: `Bearer ${TOKEN}` } })
    expect(res.statusCode).toBe(201)
    expect((await get('/api/outbox', { authorization: 'Bearer wrong' })).statusCode).toBe(401)
    expect((await get('/api/outbox')).json()).toMatchObject({ error: 'unauthorized' })
  })

  it('API tokens: created (shown once), listed, used as bearer, revoked (then refused); only a hash at rest', async () => {
    const { cookie, csrf } = await setUp()
    const made = await post('/api/tokens', { name: 'grafana' }, { cookie, 'x-csrf-token': csrf })
    expect(made.statusCode).toBe(201)
    const { id, token } = made.json() as { id: string; token: string }
    expect(made.json()).toEqual({ id, name: 'grafana', token })
    expect(made.headers['cache-control']).toBe('no-store')

    clock += 5_000
    expect((await get('/api/outbox', { authorization: `Bearer ${token}` })).statusCode).toBe(200)
    const list = (await get('/api/tokens', { cookie })).json()
    expect(list).toEqual({ tokens: [{ id, name: 'grafana', createdBy: 'admin', createdAt: clock - 5_000, lastUsedAt: clock }] })
    expect(JSON.stringify(list)).not.toContain(token)

    const rows = db.prepare('SELECT * FROM api_tokens').all() as Record<string, unknown>[]
    expect(rows).toHaveLength(1)
    const raw = Buffer.from(readFileSync(path.join(dir, 'gateway.db'))).toString('latin1') + (existsSync(path.join(dir, 'gateway.db-wal')) ? readFileSync(path.join(dir, 'gateway.db-wal')).toString('latin1') : '')
    expect(JSON.stringify(rows)).not.toContain(token)
    expect(raw).not.toContain(token)
    expect(raw).not.toContain(token.slice(4))

    const del = await app.inject({ method: 'DELETE', url: `/api/tokens/${id}`, headers: { ...ORIGIN, cookie, 'x-csrf-token': csrf } })
    expect(del.statusCode).toBe(204)
    expect((await get('/api/outbox', { authorization: `Bearer ${token}` })).statusCode).toBe(401)
    expect((await get('/api/tokens', { cookie })).json()).toEqual({ tokens: [] })
    expect((await app.inject({ method: 'DELETE', url: `/api/tokens/${id}`, headers: { authorization: `Bearer ${TOKEN}` } })).statusCode).toBe(404)
  })
})

describe('a long-lived answer (an event stream)', () => {
  it('can tell when its credential ends: logout, idle timeout, a revoked API token; the file token holds', async () => {
    const { cookie } = await setUp()
    expect((await get('/api/adapters/probe/whoami', { cookie })).json()).toEqual({ kind: 'session' })
    const session = held!
    expect(session.stillValid()).toBe(true)
    clock += (IDLE_S - 1) * 1000
    expect(session.stillValid(), 'asking is not a use').toBe(true)
    clock += 2000
    expect(session.stillValid()).toBe(false)

    const again = cookieOf(await login())
    await get('/api/adapters/probe/whoami', { cookie: again })
    const second = held!
    expect(second.stillValid()).toBe(true)
    await post('/api/auth/logout', {}, { cookie: again, 'x-csrf-token': (await get('/api/auth/state', { cookie: again })).json().csrfToken })
    expect(second.stillValid()).toBe(false)

    const made = (await app.inject({ method: 'POST', url: '/api/tokens', payload: { name: 't' }, headers: { authorization: `Bearer ${TOKEN}` } })).json()
    await get('/api/adapters/probe/whoami', { authorization: `Bearer ${made.token}` })
    const byToken = held!
    expect(byToken).toMatchObject({ kind: 'api-token', apiTokenId: made.id })
    expect(byToken.stillValid()).toBe(true)
    await app.inject({ method: 'DELETE', url: `/api/tokens/${made.id}`, headers: { authorization: `Bearer ${TOKEN}` } })
    expect(byToken.stillValid()).toBe(false)

    await get('/api/adapters/probe/whoami', { authorization: `Bearer ${TOKEN}` })
    expect(held).toMatchObject({ kind: 'api-token-file' })
    expect(held!.stillValid()).toBe(true)
  })

  it('GET /api/auth/state tells another site nothing of the session', async () => {
    const { cookie } = await setUp()
    expect((await get('/api/auth/state', { cookie, 'sec-fetch-site': 'same-site' })).json()).toEqual({ setupRequired: false, user: null, csrfToken: null })
    expect((await get('/api/auth/state', { cookie, 'sec-fetch-site': 'same-origin' })).json().user).toEqual({ username: 'admin' })
  })
})

describe('every answer', () => {
  it('carries nosniff, no-referrer and DENY framing, errors and 404s too', async () => {
    for (const res of [await get('/api/auth/state'), await get('/api/outbox'), await get('/nothing-here')]) {
      expect(res.headers['x-content-type-options']).toBe('nosniff')
      expect(res.headers['referrer-policy']).toBe('no-referrer')
      expect(res.headers['x-frame-options']).toBe('DENY')
    }
  })

  it('logs no password, setup code, session id, CSRF token or API token', async () => {
    createSetupCode(dir)
    const code = readFileSync(path.join(dir, SETUP_CODE_FILE), 'utf8').trim()
    const setup = await post('/api/auth/setup', { setupCode: code, username: 'admin', password: PASSWORD })
    const { cookie, csrf } = { cookie: cookieOf(setup), csrf: setup.json().csrfToken as string }
    for (let i = 0; i < 6; i++) await login(`wrong password ${i}`)
    const token = (await post('/api/tokens', { name: 'n' }, { cookie, 'x-csrf-token': csrf })).json().token as string
    await post('/api/auth/password', { currentPassword: PASSWORD, newPassword: 'yet another one' }, { cookie, 'x-csrf-token': csrf })
    const all = logs.join('\n')
    expect(logs.length).toBeGreaterThan(2)
    for (const secret of [PASSWORD, 'yet another one', 'wrong password', code, cookie.split('=')[1], csrf, token]) expect(all).not.toContain(secret)
  })
})
