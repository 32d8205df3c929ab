// The web UI's login against the gateway as it is run (`iothub-edge start -c FILE`), over real HTTP
// with cookies, the way a browser holds them: the setup code from the log and its 0600 file, setup
// once, the session cookie's attributes, CSRF and cross-site refusals, the bearer token beside it,
// API tokens (only their hash in gateway.db), logout, `ui reset-password`, the login rate limit,
// the idle timeout, and no secret in the gateway's output. Then https with a self-signed certificate.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createHash, X509Certificate } from 'node:crypto'
import https from 'node:https'
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import Database from 'better-sqlite3'
import YAML from 'yaml'
import { GatewayProcess, runCli } from '../helpers/gateway-process.js'
import { makeCa, type TestPki } from '../helpers/pki.js'
import { request, type Answer, type Endpoint } from '../../src/cli-http.js'

const PASSWORD = 'site-technician-7'
const SECOND_PASSWORD = 'after-the-reset-9'

/** A browser's view: one cookie jar, requests from the page's own origin unless told otherwise. */
class Browser {
  cookie = ''
  csrf = ''
  constructor(private readonly ep: Endpoint) {}

  get origin(): string {
    return this.ep.base
  }

  async call(method: string, p: string, body?: unknown, headers: Record<string, string> = {}): Promise<Answer & { json: () => any }> {
    const h: Record<string, string> = { 'sec-fetch-site': 'same-origin', ...(this.cookie ? { cookie: this.cookie } : {}), ...headers }
    if (method !== 'GET') h.origin ??= this.origin
    if (body !== undefined) h['content-type'] = 'application/json'
    const res = await request(this.ep, method, p, h, body === undefined ? undefined : JSON.stringify(body))
    const set = ([] as string[]).concat(res.headers['set-cookie'] ?? []).find((c) => c.startsWith('iothub_session='))
    if (set) this.cookie = set.split(';')[0] === 'iothub_session=' ? '' : set.split(';')[0]
    return { ...res, json: () => JSON.parse(res.text) }
  }

  /** A state change from the app: with the CSRF token. */
  change(method: string, p: string, body?: unknown, headers: Record<string, string> = {}) {
    return this.call(method, p, body, { 'x-csrf-token': this.csrf, ...headers })
  }

  async signedIn(res: Answer & { json: () => any }): Promise<void> {
    expect(res.status, res.text).toBe(200)
    this.csrf = res.json().csrfToken
  }
}

describe('web UI login on a running gateway (http)', () => {
  let gw: GatewayProcess
  let browser: Browser
  let setupCode: string
  const secrets: string[] = [PASSWORD, SECOND_PASSWORD]

  beforeAll(async () => {
    gw = new GatewayProcess({})
    await gw.start()
    browser = new Browser({ base: `http://127.0.0.1:${gw.httpPort}` })
  })
  afterAll(async () => {
    await gw.close()
  })

  it('prints one line with where to go and the setup code, which is also in a 0600 file', async () => {
    const file = path.join(gw.dataDir, 'ui-setup-code')
    expect(statSync(file).mode & 0o777).toBe(0o600)
    setupCode = readFileSync(file, 'utf8').trim()
    expect(setupCode).toMatch(/^[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}$/)
    const lines = gw.logs().split('\n').filter((l) => l.includes(setupCode))
    expect(lines).toHaveLength(1)
    expect(lines[0]).toContain(`http://127.0.0.1:${gw.httpPort}/`)
    expect(lines[0]).toContain(file)
    expect((await browser.call('GET', '/api/auth/state')).json()).toEqual({ setupRequired: true, user: null, csrfToken: null })
  })

  it('sets up the admin once, with that code only; the cookie is HttpOnly, SameSite=Strict, Path=/', async () => {
    const wrong = await browser.call('POST', '/api/auth/setup', { setupCode: 'ZZZZ-ZZZZ-ZZZZ', username: 'admin', password: PASSWORD })
    expect(wrong.status).toBe(403)
    expect(wrong.json().error).toBe('bad_setup_code')

    const ok = await browser.call('POST', '/api/auth/setup', { setupCode, username: 'admin', password: PASSWORD })
    await browser.signedIn(ok)
    const setCookie = String(ok.headers['set-cookie'])
    expect(setCookie).toMatch(/^iothub_session=[\w-]{40,};/)
    expect(setCookie).toMatch(/HttpOnly/)
    expect(setCookie).toMatch(/SameSite=Strict/)
    expect(setCookie).toMatch(/Path=\//)
    expect(setCookie).not.toMatch(/Secure/)
    expect(existsSync(path.join(gw.dataDir, 'ui-setup-code'))).toBe(false)
    secrets.push(browser.cookie.split('=')[1], browser.csrf)

    const again = await new Browser({ base: browser.origin }).call('POST', '/api/auth/setup', { setupCode, username: 'other', password: PASSWORD })
    expect(again.status).toBe(409)
    expect((await browser.call('GET', '/api/auth/state')).json()).toEqual({ setupRequired: false, user: { username: 'admin' }, csrfToken: browser.csrf })
  })

  it('the session reads and changes with the CSRF token; refused without it, or from another site', async () => {
    expect((await browser.call('GET', '/api/devices')).status).toBe(200)
    const device = { productId: 'thermo', deviceId: 'ui-1' }
    const noCsrf = await browser.call('POST', '/api/devices', device)
    expect(noCsrf.status).toBe(403)
    expect(noCsrf.json().error).toBe('csrf')
    expect((await browser.call('POST', '/api/devices', device, { 'x-csrf-token': 'guessed' })).status).toBe(403)
    expect((await browser.change('POST', '/api/devices', device, { origin: 'http://attacker.example' })).status).toBe(403)
    expect((await browser.change('POST', '/api/devices', device, { 'sec-fetch-site': 'cross-site' })).status).toBe(403)
    expect((await browser.call('GET', '/api/devices', undefined, { accept: 'text/event-stream', 'sec-fetch-site': 'cross-site' })).status).toBe(403)
    expect((await gw.api('GET', '/api/devices/thermo/ui-1')).status, 'nothing was added by the refused requests').toBe(404)

    const added = await browser.change('POST', '/api/devices', device)
    expect(added.status, added.text).toBe(201)
    secrets.push(added.json().secret)
  })

  it('the api-token file keeps working as before, with no CSRF token', async () => {
    const res = await gw.api('PATCH', '/api/devices/thermo/ui-1', { enabled: false })
    expect(res.status).toBe(200)
    expect(res.body.device.enabled).toBe(false)
    secrets.push(gw.apiToken as string)
  })

  it('API tokens: made once, used as bearer, listed, revoked; gateway.db holds their hashes only', async () => {
    const made = await browser.change('POST', '/api/tokens', { name: 'nightly export' })
    expect(made.status).toBe(201)
    const { id, token } = made.json() as { id: string; token: string }
    secrets.push(token)
    const bearer = new Browser({ base: browser.origin })
    expect((await bearer.call('GET', '/api/outbox', undefined, { authorization: `Bearer ${token}` })).status).toBe(200)
    expect((await bearer.call('POST', '/api/devices', { productId: 'thermo', deviceId: 'ui-2' }, { authorization: `Bearer ${token}` })).status).toBe(201)
    const list = (await browser.call('GET', '/api/tokens')).json()
    expect(list.tokens).toEqual([{ id, name: 'nightly export', createdBy: 'admin', createdAt: expect.any(Number), lastUsedAt: expect.any(Number) }])

    const db = new Database(path.join(gw.dataDir, 'gateway.db'), { readonly: true })
    try {
      const rows = db.prepare('SELECT * FROM api_tokens').all() as { token_hash: string }[]
      expect(rows).toHaveLength(1)
      expect(rows[0].token_hash).toBe(createHash('sha256').update(token).digest('base64url'))
      expect(JSON.stringify(rows)).not.toContain(token)
      const sessions = db.prepare('SELECT * FROM ui_sessions').all()
      expect(JSON.stringify(sessions)).not.toContain(browser.cookie.split('=')[1])
      const users = db.prepare('SELECT * FROM ui_users').all() as { password_hash: string }[]
      expect(users.map((u) => u.password_hash)).toEqual([expect.stringMatching(/^scrypt\$/)])
    } finally {
      db.close()
    }

    expect((await browser.change('DELETE', `/api/tokens/${id}`)).status).toBe(204)
    expect((await bearer.call('GET', '/api/outbox', undefined, { authorization: `Bearer ${token}` })).status).toBe(401)
  })

  it('logout ends the session', async () => {
    const kept = browser.cookie
    expect((await browser.change('POST', '/api/auth/logout')).status).toBe(204)
    expect(browser.cookie).toBe('')
    const stale = new Browser({ base: browser.origin })
    stale.cookie = kept
    const res = await stale.call('GET', '/api/devices')
    expect(res.status).toBe(401)
    expect(res.json().error).toBe('unauthorized')
  })

  it('ui reset-password on the running gateway: a new setup code (on the terminal only), the old password gone', async () => {
    await browser.signedIn(await browser.call('POST', '/api/auth/login', { username: 'admin', password: PASSWORD }))
    const reset = await runCli(['ui', 'reset-password', '-c', gw.configFile])
    expect(reset.code, reset.stderr).toBe(0)
    const code = /setup code: (\S+)/.exec(reset.stdout)?.[1] as string
    expect(code).toBe(readFileSync(path.join(gw.dataDir, 'ui-setup-code'), 'utf8').trim())
    secrets.push(code)
    expect((await browser.call('GET', '/api/devices')).status, 'the sessions ended').toBe(401)
    expect((await browser.call('GET', '/api/auth/state')).json().setupRequired).toBe(true)
    expect((await browser.call('POST', '/api/auth/login', { username: 'admin', password: PASSWORD })).status).toBe(401)
    await browser.signedIn(await browser.call('POST', '/api/auth/setup', { setupCode: code, username: 'admin', password: SECOND_PASSWORD }))
    secrets.push(browser.cookie.split('=')[1], browser.csrf)
  })

  it('wrong passwords: 401, then 429 with Retry-After after five within a minute, logged once', async () => {
    // A good login forgets the failures before it (the reset test's).
    await browser.signedIn(await browser.call('POST', '/api/auth/login', { username: 'admin', password: SECOND_PASSWORD }))
    for (let i = 0; i < 5; i++) {
      const res = await browser.call('POST', '/api/auth/login', { username: 'admin', password: `${PASSWORD}-${i}` })
      expect(res.status).toBe(401)
      expect(res.json()).toEqual({ error: 'bad_credentials', message: 'wrong username or password' })
    }
    const limited = await browser.call('POST', '/api/auth/login', { username: 'admin', password: SECOND_PASSWORD })
    expect(limited.status).toBe(429)
    expect(limited.json().error).toBe('rate_limited')
    expect(Number(limited.headers['retry-after'])).toBeGreaterThan(0)
    expect(gw.logs().split('\n').filter((l) => l.includes('IHE_UI_LOGIN_RATE_LIMITED'))).toHaveLength(1)
    const metrics = await (await fetch(`${browser.origin}/metrics`)).text()
    expect(metrics).toMatch(/iothub_edge_ui_login_failures_total\{reason="bad_credentials"\} [1-9]/)
    expect(metrics).toMatch(/iothub_edge_ui_login_failures_total\{reason="rate_limited"\} [1-9]/)
  })

  it('a session ends after http.session.idleTimeoutSeconds without a request', async () => {
    await gw.stop()
    const doc = YAML.parse(readFileSync(gw.configFile, 'utf8'))
    doc.http.session = { idleTimeoutSeconds: 2 }
    writeFileSync(gw.configFile, YAML.stringify(doc))
    await gw.start()
    await browser.signedIn(await browser.call('POST', '/api/auth/login', { username: 'admin', password: SECOND_PASSWORD }))
    expect((await browser.call('GET', '/api/devices')).status).toBe(200)
    await sleep(3_000)
    const expired = await browser.call('GET', '/api/devices')
    expect(expired.status).toBe(401)
    expect(expired.json().message).toMatch(/log in again/)
  })

  it('leaves no password, cookie, CSRF token, API token or later setup code in its output; the first code only in its one line', () => {
    const out = gw.logs()
    for (const s of secrets) expect(out, 'a secret in the gateway output').not.toContain(s)
    expect(out.split(setupCode)).toHaveLength(2)
  })
})

describe('web UI over https with a self-signed certificate (http.tls.selfSigned)', () => {
  let gw: GatewayProcess

  beforeAll(async () => {
    gw = new GatewayProcess({ http: { tls: { selfSigned: true } } })
    await gw.start()
  })
  afterAll(async () => {
    await gw.close()
  })

  const httpsGet = (p: string, ca: string) =>
    new Promise<{ status: number; setCookie: string[] }>((resolve, reject) => {
      const req = https.request({ host: '127.0.0.1', servername: 'localhost', port: gw.httpPort, path: p, ca, agent: false, method: p.includes('login') ? 'POST' : 'GET' }, (res) => {
        res.resume()
        res.on('end', () => resolve({ status: res.statusCode ?? 0, setCookie: ([] as string[]).concat(res.headers['set-cookie'] ?? []) }))
      })
      req.on('error', reject)
      req.end()
    })

  it('serves https with the certificate it made (key 0600), verifiable by its name and the logged fingerprint', async () => {
    const certFile = path.join(gw.dataDir, 'ui-tls-cert.pem')
    const cert = readFileSync(certFile, 'utf8')
    expect(statSync(path.join(gw.dataDir, 'ui-tls-key.pem')).mode & 0o777).toBe(0o600)
    const fingerprint = new X509Certificate(cert).fingerprint256
    expect(gw.logs()).toContain(`SHA-256 fingerprint ${fingerprint}`)
    // Full verification: the certificate as trust anchor, the name checked (localhost is in it).
    expect((await httpsGet('/api/health', cert)).status).toBe(200)
    await expect(fetch(`http://127.0.0.1:${gw.httpPort}/api/health`)).rejects.toThrow()
    const runtime = JSON.parse(readFileSync(path.join(gw.dataDir, 'runtime.json'), 'utf8'))
    expect(runtime).toMatchObject({ scheme: 'https', certSha256: fingerprint, certFile })
  })

  it('the CLI reaches it (pinned to that certificate); the session cookie is Secure', async () => {
    const status = await runCli(['status', '-c', gw.configFile, '--json'])
    expect(status.code, status.stderr).toBe(0)
    expect(JSON.parse(status.stdout).url).toBe(`https://127.0.0.1:${gw.httpPort}`)
    const code = readFileSync(path.join(gw.dataDir, 'ui-setup-code'), 'utf8').trim()
    const browser = new Browser({ base: `https://127.0.0.1:${gw.httpPort}`, pin: { ca: readFileSync(path.join(gw.dataDir, 'ui-tls-cert.pem'), 'utf8'), sha256: new X509Certificate(readFileSync(path.join(gw.dataDir, 'ui-tls-cert.pem'))).fingerprint256 } })
    const res = await browser.call('POST', '/api/auth/setup', { setupCode: code, username: 'admin', password: PASSWORD })
    expect(res.status, res.text).toBe(200)
    expect(String(res.headers['set-cookie'])).toMatch(/; Secure/)
  })

  it('the CLI refuses a server whose certificate is not the pinned one', async () => {
    const cert = readFileSync(path.join(gw.dataDir, 'ui-tls-cert.pem'), 'utf8')
    const other = '00:' + new X509Certificate(cert).fingerprint256.slice(3)
    await expect(request({ base: `https://127.0.0.1:${gw.httpPort}`, pin: { ca: cert, sha256: other } }, 'GET', '/api/health', {})).rejects.toThrow(/is not the one in runtime\.json/)
  })

  it('keeps its certificate across restarts', async () => {
    const before = readFileSync(path.join(gw.dataDir, 'ui-tls-cert.pem'), 'utf8')
    await gw.restart()
    expect(readFileSync(path.join(gw.dataDir, 'ui-tls-cert.pem'), 'utf8')).toBe(before)
    expect((await httpsGet('/api/health', before)).status).toBe(200)
  })
})

describe("web UI over https with the operator's certificate (http.tls.cert/key, issued by a CA)", () => {
  let dir: string
  let pki: TestPki
  let gw: GatewayProcess

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'ui-tls-'))
    pki = makeCa(dir, 'site')
    gw = new GatewayProcess({ http: { tls: { cert: pki.cert, key: pki.key } } })
    await gw.start()
  })
  afterAll(async () => {
    await gw.close()
    rmSync(dir, { recursive: true, force: true })
  })

  it('browsers that trust the CA connect; the CLI, trusting that leaf by its fingerprint, too', async () => {
    // As a browser that trusts the site's CA.
    const ok = await new Promise<number>((resolve, reject) => {
      https
        .get({ host: '127.0.0.1', port: gw.httpPort, path: '/api/health', ca: readFileSync(pki.ca), agent: false }, (r) => {
          r.resume()
          resolve(r.statusCode ?? 0)
        })
        .on('error', reject)
    })
    expect(ok).toBe(200)
    const status = await runCli(['status', '-c', gw.configFile, '--json'])
    expect(status.code, status.stderr).toBe(0)
    expect(JSON.parse(status.stdout).url).toBe(`https://127.0.0.1:${gw.httpPort}`)
  })

  it('a key that is not the certificate\'s stops the start with IHE_HTTP_TLS_FAILED', async () => {
    const wrong = new GatewayProcess({ http: { tls: { cert: pki.cert, key: path.join(dir, 'site-ca.key') } } })
    try {
      await expect(wrong.start()).rejects.toThrow(/exited during start/)
      expect(wrong.exitCode).toBe(1)
      expect(wrong.logs()).toContain('IHE_HTTP_TLS_FAILED')
      expect(wrong.logs()).toMatch(/http\.tls: .* are not a usable PEM certificate and its private key/)
    } finally {
      await wrong.close()
    }
  })
})
