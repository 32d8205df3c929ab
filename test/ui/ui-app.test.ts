// The technician web app in a real browser (Debian's Chromium through playwright-core) against a
// real gateway process, Mosquitto as the cloud hub and real MQTT devices: what a technician on site
// relies on. The hub stopped -> the overview says down and the outbox grows; a device gone -> its
// row says offline; a command sent from the device page reaches the device and its reply shows;
// every page passes axe (no serious or critical violation), fits a 375 px phone and is
// screenshotted into test-artifacts/ui/. The serving contract (CSP, caching, pre-compressed
// assets, routes that never shadow the API) is checked over plain HTTP first.
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { gunzipSync } from 'node:zlib'
import type { Browser, BrowserContext } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { CommandDevice } from '../helpers/command-device.js'
import { launchBrowser, horizontalOverflow, openPage, screenshot, sendCommandFromDevicePage, seriousA11yViolations } from '../helpers/browser.js'
import { GatewayProcess, repoRoot } from '../helpers/gateway-process.js'
import { HubBroker } from '../helpers/hub-broker.js'
import { ChirpstackBroker, ChirpstackSim, example } from '../helpers/chirpstack.js'
import { ModbusSlave, PtyPair, serialTempDir } from '../helpers/serial-peers.js'

const gw = { productId: 'gateways', deviceId: 'gw-ui', secret: 'gw-ui-secret' }
const valve = { productId: 'valve', deviceId: 'v1', secret: 'valve-secret-1' }
const meter = { productId: 'meter', deviceId: 'm1', secret: 'meter-secret-1' }
// A power meter on an RS-485 line (a pty pair, pymodbus as the slave), for the serial page.
const powerMeter = { productId: 'meter', deviceId: 'pm1', secret: 'power-meter-secret' }
const devices = [valve, meter, powerMeter]
// A LoRaWAN room sensor behind ChirpStack (its documented `up` example is from this DevEUI).
const roomSensor = { devEui: '0101010101010101', productId: 'room', deviceId: 'r101' }
const uiDir = path.join(repoRoot, 'dist', 'ui')
const FIRST_PAGE_BUDGET = 60 * 1024
const PASSWORD = 'correct horse battery'
// Every page of the app, with its heading (English).
const PAGES = [
  { path: '/ui/', name: 'overview', heading: 'Overview' },
  { path: '/ui/devices', name: 'devices', heading: 'Devices' },
  { path: '/ui/devices/valve/v1', name: 'device', heading: 'valve/v1' },
  { path: '/ui/serial', name: 'serial', heading: 'Serial' },
  { path: '/ui/lorawan', name: 'lorawan', heading: 'LoRaWAN' },
  { path: '/ui/ota', name: 'ota', heading: 'Firmware (OTA)' },
  { path: '/ui/rules', name: 'rules', heading: 'Rules and alarms' },
  { path: '/ui/logs', name: 'logs', heading: 'Logs' },
  { path: '/ui/system', name: 'diagnostics', heading: 'Diagnostics' },
  { path: '/ui/tokens', name: 'tokens', heading: 'API tokens' },
]

interface Manifest {
  entry: string
  css?: string
  firstPage: string[]
}

describe('web app', () => {
  let hub: HubBroker
  let gateway: GatewayProcess
  let browser: Browser
  let base: string
  let serialDir: { dir: string; dispose: () => Promise<void> }
  let pair: PtyPair
  let slave: ModbusSlave
  let csBroker: ChirpstackBroker
  let chirpstack: ChirpstackSim
  const clients: CommandDevice[] = []

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [...devices, { productId: roomSensor.productId, deviceId: roomSensor.deviceId }] } })
    await hub.start()
    csBroker = new ChirpstackBroker()
    await csBroker.start()
    chirpstack = new ChirpstackSim(csBroker.url, 'json')
    await chirpstack.start()
    serialDir = await serialTempDir('ui-serial-')
    pair = new PtyPair(path.join(serialDir.dir, 'gw'), path.join(serialDir.dir, 'dev'))
    await pair.start()
    slave = new ModbusSlave(pair.device, path.join(serialDir.dir, 'slave.json'), { units: { 1: { hr: { 10: 230, 11: 50 } } } })
    await slave.start()
    const serial = {
      ports: [
        {
          name: 'rs485',
          path: pair.gateway,
          protocol: 'modbus-rtu',
          devices: [{ unitId: 1, productId: powerMeter.productId, deviceId: powerMeter.deviceId, pollIntervalMs: 2_000, dataType: 'power', registers: [{ name: 'volts', table: 'holding', address: 10, type: 'uint16' }] }],
        },
      ],
    }
    const lorawan = { chirpstack: { mqtt: { url: csBroker.url, clientId: 'ui-test-lorawan' }, encoding: 'json' }, devices: [{ ...roomSensor, dataTypes: { '1': 'telemetry' } }] }
    // A rule's alarm, for the device page's timeline and the overview's alarms.
    const rules = [
      {
        name: 'valve-pressure',
        from: 'upload_data/valve/+/pressure',
        actions: [{ alarm: { name: 'overpressure', set: 'payload.bar > 6.0', clear: 'payload.bar < 5.0', value: 'payload.bar' } }],
      },
    ]
    gateway = new GatewayProcess({ gateway: gw, northbound: { url: hub.url }, devices, serial, lorawan, rules, log: { level: 'info' } })
    await gateway.start()
    await gateway.waitForHealth((h) => h.northbound.connected, 20_000, 'northbound connected')
    base = `http://127.0.0.1:${gateway.httpPort}`
    browser = await launchBrowser()
  }, 120_000)

  afterAll(async () => {
    await Promise.allSettled(clients.splice(0).map((c) => c.close()))
    await browser?.close()
    await gateway?.close()
    await slave?.stop()
    await pair?.stop()
    await serialDir?.dispose()
    await chirpstack?.stop()
    await csBroker?.close()
    await hub?.close()
  })

  describe('serving', () => {
    it('answers the app at / and under /ui/ with a strict CSP and no caching, and never shadows /api, /devices, /ota, /metrics', async () => {
      for (const p of ['/', '/ui/', '/ui/devices/valve/v1']) {
        const res = await fetch(base + p)
        expect(res.status, p).toBe(200)
        expect(res.headers.get('content-type'), p).toContain('text/html')
        expect(res.headers.get('cache-control'), p).toBe('no-cache')
        const csp = res.headers.get('content-security-policy') ?? ''
        for (const d of ["default-src 'self'", "script-src 'self'", "style-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'"]) {
          expect(csp, `${p}: ${d}`).toContain(d)
        }
        expect(csp).not.toContain('unsafe')
      }
      // The API keeps its own answers: JSON, the token asked for, not the app's page.
      const api = await fetch(`${base}/api/devices`)
      expect(api.status).toBe(401)
      expect(api.headers.get('content-type')).toContain('application/json')
      const unknownApi = await fetch(`${base}/api/ui`)
      expect(unknownApi.headers.get('content-type')).toContain('application/json')
      for (const p of ['/devices/valve/v1/commands', '/ota/not-a-token', '/ui-nope']) {
        const res = await fetch(base + p)
        expect(res.status, p).toBe(404)
        expect(res.headers.get('content-type'), p).not.toContain('text/html')
      }
      const metrics = await fetch(`${base}/metrics`)
      expect(metrics.status).toBe(200)
      expect(await metrics.text()).toContain('iothub_edge_')
    })

    it('serves hashed assets as immutable, pre-compressed by Accept-Encoding, with the app\'s headers, and the first page JS is within 60 KB gzip', async () => {
      const manifest = JSON.parse(readFileSync(path.join(uiDir, 'manifest.json'), 'utf8')) as Manifest
      const index = await (await fetch(`${base}/`)).text()
      expect(index).toContain(`/assets/${manifest.entry}`)
      const entry = `${base}/assets/${manifest.entry}`

      const br = await fetch(entry, { headers: { 'accept-encoding': 'br' } })
      expect(br.status).toBe(200)
      expect(br.headers.get('cache-control')).toBe('public, max-age=31536000, immutable')
      expect(br.headers.get('content-encoding')).toBe('br')
      expect(br.headers.get('vary')?.toLowerCase()).toContain('accept-encoding')
      expect(br.headers.get('content-type')).toContain('javascript')
      // The asset server is made by the first asset request (src/web/routes/ui.ts): the app's own headers still come with it.
      expect(br.headers.get('x-content-type-options')).toBe('nosniff')
      expect(br.headers.get('x-frame-options')).toBe('DENY')
      // fetch() decodes: the bytes are the built file's, sent as the .br the build wrote.
      expect(Buffer.from(await br.arrayBuffer()).equals(readFileSync(path.join(uiDir, 'assets', manifest.entry)))).toBe(true)
      expect(Number(br.headers.get('content-length'))).toBe(readFileSync(path.join(uiDir, 'assets', `${manifest.entry}.br`)).length)

      const gz = await fetch(entry, { headers: { 'accept-encoding': 'gzip' } })
      expect(gz.headers.get('content-encoding')).toBe('gzip')
      const plain = await fetch(entry, { headers: { 'accept-encoding': 'identity' } })
      expect(plain.headers.get('content-encoding')).toBeNull()

      // The budget counts what a browser without brotli downloads for the first page: gzip bytes.
      let firstPageGzip = 0
      for (const f of manifest.firstPage) {
        const file = readFileSync(path.join(uiDir, 'assets', `${f}.gz`))
        expect(gunzipSync(file).equals(readFileSync(path.join(uiDir, 'assets', f)))).toBe(true)
        firstPageGzip += file.length
      }
      expect(firstPageGzip).toBeGreaterThan(0)
      expect(firstPageGzip).toBeLessThanOrEqual(FIRST_PAGE_BUDGET)

      const missing = await fetch(`${base}/assets/nope-123.js`)
      expect(missing.status).toBe(404)
      expect(await missing.json()).toMatchObject({ error: 'not_found' })
      expect((await fetch(`${base}/assets/..%2f..%2fpackage.json`)).status).not.toBe(200)
    })
  })

  describe('in Chromium', () => {
    // Signed in by the first test, through the real first-run setup; the later tests share it.
    let context: BrowserContext

    afterAll(async () => {
      await context?.close()
    })

    it('first start: the setup code sets the password; a wrong code, a wrong password and an ended session are refused', async () => {
      context = await browser.newContext({ baseURL: base })
      const { page, problems } = await openPage(context)
      // Nothing but the sign-in works without a session: the API refuses the browser.
      expect((await page.request.get('/api/devices')).status()).toBe(401)

      await page.goto('/')
      await page.getByRole('heading', { level: 1, name: 'First start: set the administrator password' }).waitFor()
      await screenshot(page, 'setup')
      const code = readFileSync(path.join(gateway.dataDir, 'ui-setup-code'), 'utf8').trim()
      await page.getByLabel('Setup code').fill('not-the-code')
      await page.getByLabel('User name').fill('tech')
      await page.getByLabel('Password', { exact: true }).fill(PASSWORD)
      await page.getByLabel('Password again').fill(PASSWORD)
      await page.getByRole('button', { name: 'Set password and sign in' }).click()
      await page.getByRole('alert').filter({ hasText: 'That setup code is not the one the gateway printed.' }).waitFor()

      await page.getByLabel('Setup code').fill(code)
      await page.getByRole('button', { name: 'Set password and sign in' }).click()
      await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor()
      expect(await page.locator('header .user').textContent()).toBe('tech')

      // Sign out; a wrong password is refused with a message; the right one lets in.
      await page.getByRole('button', { name: 'Sign out' }).click()
      await page.getByRole('heading', { level: 1, name: 'Sign in' }).waitFor()
      await page.getByLabel('User name').fill('tech')
      await page.getByLabel('Password').fill('wrong-password-123')
      await page.getByRole('button', { name: 'Sign in' }).click()
      await page.getByRole('alert').filter({ hasText: 'Wrong user name or password.' }).waitFor()
      await screenshot(page, 'login-wrong-password')
      await page.getByLabel('Password').fill(PASSWORD)
      await page.getByRole('button', { name: 'Sign in' }).click()
      await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor()

      // The same session in a second browser context: once it is signed out there, this page's
      // next API call is refused and it shows the sign-in page again.
      const other = await browser.newContext({ baseURL: base, storageState: await context.storageState() })
      try {
        const second = await openPage(other)
        await second.page.goto('/ui/devices')
        await second.page.getByRole('heading', { level: 1, name: 'Devices' }).waitFor()
        await second.page.getByRole('button', { name: 'Sign out' }).click()
        await second.page.getByRole('heading', { level: 1, name: 'Sign in' }).waitFor()
        expect(second.problems.errors).toEqual([])
      } finally {
        await other.close()
      }
      // The page learns it at its next API call (the click), or by itself first: the gateway ends
      // its live stream with the session and the stream's reconnection is refused. On a loaded
      // machine the latter can come first, the navigation is gone, and the click has nothing to do.
      const ended = page.getByText('Your session ended: sign in again.')
      if (!(await ended.isVisible())) await page.getByRole('navigation').getByRole('link', { name: 'Devices' }).click({ timeout: 5_000 }).catch(() => undefined)
      await ended.waitFor()
      await page.getByLabel('User name').fill('tech')
      await page.getByLabel('Password').fill(PASSWORD)
      await page.getByRole('button', { name: 'Sign in' }).click()
      await page.getByRole('heading', { level: 1, name: 'Devices' }).waitFor()
      expect(problems.errors).toEqual([])
      await page.close()
    })

    it('the overview shows the hub down within seconds of it stopping, and the outbox growing', async ({ onTestFailed }) => {
      onTestFailed(() => console.log(gateway.failure('output when the test failed').message))
      const { page, problems } = await openPage(context)
      await page.goto('/')
      await expect.poll(() => page.getByTestId('hub-state').textContent(), { timeout: 20_000 }).toBe('up')
      await screenshot(page, 'overview')
      const before = Number(await page.getByTestId('outbox-messages').textContent())

      await hub.stop()
      try {
        await expect.poll(() => page.getByTestId('hub-state').textContent(), { timeout: 20_000 }).toBe('down')
        const device = await CommandDevice.connect(gateway.externalUrl, meter)
        clients.push(device)
        for (let i = 0; i < 3; i++) await device.upload('reading', { kwh: 10 + i })
        await expect.poll(async () => Number(await page.getByTestId('outbox-messages').textContent()), { timeout: 20_000 }).toBeGreaterThanOrEqual(before + 3)
        // Why it is down (the hub refuses connections now) and when the gateway tries again.
        await expect.poll(() => page.getByTestId('hub-last-error').textContent(), { timeout: 20_000 }).toContain('ECONNREFUSED')
        expect(await page.getByTestId('hub-last-error').textContent()).toContain('IHE_NORTHBOUND')
        await expect.poll(() => page.getByTestId('hub-next-retry').textContent(), { timeout: 20_000 }).toMatch(/\(in \d+ (s|min)\)/)
        await screenshot(page, 'overview-hub-down')
      } finally {
        await hub.start()
      }
      await expect.poll(() => page.getByTestId('hub-state').textContent(), { timeout: 30_000 }).toBe('up')
      // What waited drains: the hub's acknowledgements per second over the last 10 s are above zero.
      await expect.poll(() => page.getByTestId('outbox-drain-rate').textContent(), { timeout: 20_000 }).toMatch(/^(?!0\.0\/s)\d+\.\d\/s over 10 s/)
      await expect(page.getByTestId('hub-next-retry').count()).resolves.toBe(0)
      expect(problems.errors).toEqual([])
      await page.close()
    })

    it('the devices page says online, then offline when the device goes away', async () => {
      const { page, problems } = await openPage(context)
      const device = await CommandDevice.connect(gateway.externalUrl, valve)
      await page.goto('/ui/devices')
      const row = page.locator('tr[data-device="valve/v1"]')
      await expect.poll(() => row.locator('[data-col="online"]').textContent(), { timeout: 20_000 }).toBe('online')
      await screenshot(page, 'devices')
      await device.close()
      await expect.poll(() => row.locator('[data-col="online"]').textContent(), { timeout: 20_000 }).toBe('offline')
      expect(problems.errors).toEqual([])
      await page.close()
    })

    it('a command sent from the device page reaches the device, and its reply appears', async () => {
      const device = await CommandDevice.connect(gateway.externalUrl, valve, {
        rpcReply: (m) => JSON.stringify({ opened: JSON.parse(m.payload.toString()).percent }),
        cmdReply: () => 'closed',
      })
      clients.push(device)
      // What it said before the page opened: in the history (a chart of `bar`) and the last payloads.
      for (const bar of [2.5, 2.7, 2.6]) await device.upload('pressure', { bar })
      await expect
        .poll(async () => (await gateway.api<{ series: { name: string }[] }>('GET', '/api/history/series?device=valve/v1')).body.series.map((x) => x.name), { timeout: 20_000 })
        .toContain('pressure.bar')
      const { page, problems } = await openPage(context)
      await page.goto('/ui/devices/valve/v1')
      await expect.poll(() => page.locator('.facts .badge').first().textContent(), { timeout: 20_000 }).toBe('online')
      await page.locator('figure.chart', { hasText: 'bar' }).locator('canvas').waitFor({ timeout: 20_000 })
      await page.locator('ol.payloads li', { hasText: '{"bar":2.6}' }).waitFor()
      // And what it says while the page is open, live.
      await device.upload('pressure', { bar: 3.1 })
      await page.locator('ol.payloads li').first().filter({ hasText: '{"bar":3.1}' }).waitFor({ timeout: 20_000 })

      // An RPC: the reply comes back in the answer to the form.
      await sendCommandFromDevicePage(page, 'open', '{"percent":40}', { rpc: true })
      const reply = page.getByTestId('command-reply')
      await reply.waitFor({ timeout: 20_000 })
      expect(await reply.textContent()).toBe('{"opened":40}')
      const rpc = await device.waitFor((m) => m.levels[0] === 'rpc' && m.levels[3] === 'open', 10_000)
      expect(JSON.parse(rpc.payload.toString())).toEqual({ percent: 40 })

      // A plain command: queued, delivered, and the device's cmd_resp shows in the history.
      const requestId = await sendCommandFromDevicePage(page, 'close', 'now')
      await device.waitFor((m) => m.levels[0] === 'cmd' && m.levels[3] === 'close', 10_000)
      const row = page.locator(`tr[data-request="${requestId}"]`)
      await expect.poll(async () => (await row.count()) > 0 ? row.textContent() : '', { timeout: 20_000 }).toContain('closed')
      await screenshot(page, 'device')
      expect(problems.errors).toEqual([])
      await page.close()
    })

    it('the device page\'s timeline shows the alarm a rule raised for the device', async () => {
      const device = await CommandDevice.connect(gateway.externalUrl, valve)
      clients.push(device)
      const { page, problems } = await openPage(context)
      await page.goto('/ui/devices/valve/v1')
      await page.getByRole('heading', { level: 1, name: 'valve/v1' }).waitFor()
      // Raised while the page is open: the timeline reloads on the live alarm event (or, raised before
      // the page's live stream connected, when it connects: test/ui/ui-live-gap.test.ts).
      await device.upload('pressure', { bar: 6.5 })
      const raised = page.locator('ol.timeline li[data-type="alarm_raised"]')
      await raised.first().waitFor({ timeout: 20_000 })
      expect(await raised.first().textContent()).toContain('alarm raised')
      expect(await raised.first().textContent()).toContain('"alarm":"overpressure"')
      expect(await raised.first().textContent()).toContain('"value":6.5')
      await screenshot(page, 'device-alarm')
      expect(problems.errors).toEqual([])
      await page.close()
    })

    it('the logs page tails the log with a level filter, and the diagnostics bundle downloads without a secret', async () => {
      const { page, problems } = await openPage(context)
      await page.goto('/ui/logs')
      const setUp = page.locator('ol.logs li', { hasText: 'web UI set up: user tech created' })
      await setUp.waitFor()
      await page.getByLabel('Level').selectOption('error')
      await setUp.waitFor({ state: 'detached' })
      await page.getByLabel('Level').selectOption('info')
      // Live: a line the gateway logs while the page is open (a device refused for a bad secret).
      const before = await page.locator('ol.logs li').count()
      await expect(CommandDevice.connect(gateway.externalUrl, { ...meter, secret: 'not-the-secret' })).rejects.toThrow()
      await expect.poll(() => page.locator('ol.logs li').count(), { timeout: 20_000 }).toBeGreaterThan(before)

      await page.goto('/ui/system')
      const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('link', { name: 'Download diagnostics (tar.gz)' }).click()])
      const file = await download.path()
      const tar = gunzipSync(readFileSync(file))
      const text = tar.toString('latin1')
      for (const name of ['config.redacted.yaml', 'health.json', 'metrics.txt', 'logs.ndjson', 'outbox.json', 'system.json', 'versions.json']) expect(text).toContain(name)
      for (const secret of [gw.secret, valve.secret, meter.secret, PASSWORD, gateway.apiToken!]) expect(text).not.toContain(secret)
      expect(problems.errors).toEqual([])
      await page.close()
    })

    it('the serial page shows the port open, its counters growing, its bytes live, and reads a Modbus register once', async () => {
      const { page, problems } = await openPage(context)
      await page.goto('/ui/serial')
      const row = page.locator('tr', { hasText: 'rs485' })
      await expect.poll(() => row.locator('.badge').first().textContent(), { timeout: 20_000 }).toBe('open')
      // The port's counters as the gateway keeps them: answers from the meter grow with its polls, none corrupt.
      const counter = async (name: string): Promise<number> => Number(new RegExp(`\\b${name} (\\d+)`).exec((await row.locator('td').nth(4).textContent()) ?? '')?.[1])
      await expect.poll(() => counter('framesIn'), { timeout: 20_000 }).toBeGreaterThan(0)
      const answered = await counter('framesIn')
      await expect.poll(() => counter('framesIn'), { timeout: 20_000 }).toBeGreaterThan(answered)
      expect(await counter('framesOut')).toBeGreaterThanOrEqual(answered)
      expect(await counter('crcErrors')).toBe(0)
      await row.getByRole('button', { name: 'Watch the line' }).click()
      // The gateway polls the meter every 2 s: its requests (tx) and the answers (rx), as they pass.
      await page.locator('ol.monitor li', { hasText: 'tx' }).first().waitFor({ timeout: 20_000 })
      await page.locator('ol.monitor li', { hasText: 'rx' }).first().waitFor({ timeout: 20_000 })
      await page.getByLabel('Table').selectOption('holding')
      await page.getByLabel('Address').fill('10')
      await page.getByLabel('Count').fill('2')
      await page.getByRole('button', { name: 'Read once' }).click()
      await page.getByTestId('modbus-values').waitFor()
      expect(await page.getByTestId('modbus-values').textContent()).toBe('[230,50]')
      await screenshot(page, 'serial-monitor')
      expect(problems.errors).toEqual([])
      await page.close()
    })

    it('the LoRaWAN page shows a sensor\'s radio quality and frame counter from ChirpStack', async () => {
      await chirpstack.publishRaw(roomSensor.devEui, 'up', JSON.stringify(example('up')))
      const { page, problems } = await openPage(context)
      await page.goto('/ui/lorawan')
      const row = page.locator('tr', { hasText: roomSensor.devEui })
      await row.waitFor({ timeout: 20_000 })
      // example('up'): one gateway heard it at -36 dBm, SNR 10.5, frame counter 0, data rate 1.
      await expect.poll(async () => (await row.locator('td').allTextContents()).slice(3, 8), { timeout: 20_000 }).toEqual(['-36', '10.5', '1', '0', '1'])
      await screenshot(page, 'lorawan')
      expect(problems.errors).toEqual([])
      await page.close()
    })

    it('every page passes axe, fits a 375 px phone, switches to Chinese, and is screenshotted', async () => {
      const phone = await browser.newContext({
        baseURL: base,
        viewport: { width: 375, height: 740 },
        deviceScaleFactor: 1,
        isMobile: true,
        hasTouch: true,
        storageState: await context.storageState(),
      })
      try {
        const desktop = await openPage(context)
        const mobile = await openPage(phone)
        const found: string[] = []
        for (const { path: p, name, heading } of PAGES) {
          await desktop.page.goto(p)
          await desktop.page.getByRole('heading', { level: 1, name: heading }).waitFor()
          await desktop.page.waitForLoadState('networkidle')
          await screenshot(desktop.page, name)

          await mobile.page.goto(p)
          await mobile.page.getByRole('heading', { level: 1, name: heading }).waitFor()
          await mobile.page.waitForLoadState('networkidle')
          await screenshot(mobile.page, `${name}-375px`)
          const overflow = await horizontalOverflow(mobile.page)
          if (overflow > 0) found.push(`${p}: ${overflow} px wider than a 375 px screen`)
          for (const v of await seriousA11yViolations(mobile.page)) found.push(`${p}: ${v}`)
        }
        expect(found).toEqual([])

        // The language switch: every string from the catalogue, kept across pages.
        await desktop.page.goto('/ui/devices')
        await desktop.page.getByLabel('Language').selectOption('zh')
        await desktop.page.getByRole('heading', { level: 1, name: '设备' }).waitFor()
        await desktop.page.getByRole('navigation').getByRole('link', { name: '总览' }).waitFor()
        await desktop.page.goto('/ui/')
        await desktop.page.getByRole('heading', { level: 1, name: '总览' }).waitFor()
        expect(await desktop.page.evaluate(() => document.documentElement.lang)).toBe('zh-CN')
        await screenshot(desktop.page, 'overview-zh')
        await desktop.page.getByLabel('语言').selectOption('en')

        expect(desktop.problems.errors).toEqual([])
        expect(mobile.problems.errors).toEqual([])
      } finally {
        await phone.close()
      }
    }, 240_000)
  })
})
