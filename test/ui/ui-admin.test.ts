// The technician's admin work in the web app, in a real browser (Debian's Chromium through
// playwright-core) against a real gateway process, Mosquitto as the hub and real MQTT devices:
// an image uploaded on the OTA page and pushed, with the hub gone, to a device and to a tag, the
// devices (MQTT clients following the OTA protocol) fetching it from the gateway and their progress
// showing on the page; an API token created (shown once), used by a script and revoked; a device
// added, disabled, given a new secret and removed, each seen by a device's MQTT connection; an
// unattended browser sent back to the sign-in page once the idle timeout passes, its live stream
// ended by the gateway. Pages changed for this pass axe; screenshots go to test-artifacts/ui/.
import { createHash, randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import path from 'node:path'
import type { Browser, BrowserContext, Frame, Page, Request } from 'playwright-core'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { CommandDevice } from '../helpers/command-device.js'
import { launchBrowser, openPage, screenshot, seriousA11yViolations, setUpFirstUser, signedInBrowser, signIn } from '../helpers/browser.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HubBroker } from '../helpers/hub-broker.js'
import { reportOtaProgress, reportVersion, takeOtaUpgrade } from '../helpers/ota-device.js'
import { freePort } from '../helpers/ports.js'

const gw = { productId: 'gateways', deviceId: 'gw-admin', secret: 'gw-admin-secret' }
const meter = (deviceId: string, tags: string[] = []): { productId: string; deviceId: string; secret: string; tags: string[] } => ({ productId: 'meter', deviceId, secret: `secret-${deviceId}`, tags })
// ota1 and ota2 carry the tag the campaign goes to, ota4 another one, ota3 is pushed to by name.
const ota1 = meter('ota1', ['floor2'])
const ota2 = meter('ota2', ['floor2'])
const ota3 = meter('ota3')
const ota4 = meter('ota4', ['floor3'])
const devices = [ota1, ota2, ota3, ota4]
const USER = 'tech'
const PASSWORD = 'correct horse battery'
const IDLE_SECONDS = 8

/** Accepts the page's confirm() dialogs (revoke, reset secret, remove). */
function acceptDialogs(page: Page): void {
  page.on('dialog', (d) => void d.accept())
}

async function expectNoSeriousA11y(page: Page): Promise<void> {
  await page.waitForLoadState('networkidle')
  expect(await seriousA11yViolations(page)).toEqual([])
}

/** A connection that must be refused: resolves with the error (a CONNACK refusal). */
async function refused(url: string, login: { productId: string; deviceId: string; secret: string }): Promise<Error> {
  const device = await CommandDevice.connect(url, login).then(
    (d) => d,
    (err: unknown) => err as Error,
  )
  if (device instanceof CommandDevice) {
    await device.close()
    throw new Error(`${login.productId}/${login.deviceId} connected with a secret that should be refused`)
  }
  return device
}

describe('web app: admin pages', () => {
  let hub: HubBroker
  let gateway: GatewayProcess
  let browser: Browser
  let base: string
  let context: BrowserContext
  const clients: CommandDevice[] = []

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: devices } })
    await hub.start()
    gateway = new GatewayProcess({ gateway: gw, northbound: { url: hub.url }, devices, ota: { advertiseHost: '127.0.0.1' }, log: { level: 'info' } })
    await gateway.start()
    await gateway.waitForHealth((h) => h.northbound.connected, 20_000, 'northbound connected')
    base = `http://127.0.0.1:${gateway.httpPort}`
    ;({ browser, context } = await signedInBrowser(base, gateway.dataDir, USER, PASSWORD))
  }, 120_000)

  afterEach(async ({ task }) => {
    await Promise.allSettled(clients.splice(0).map((c) => c.close()))
    if (task.result?.state === 'fail') console.log(gateway.failure(`output after "${task.name}" failed`).message)
  })

  afterAll(async () => {
    await context?.close()
    await browser?.close()
    await gateway?.close()
    await hub?.close()
  })

  it('an API token made on the tokens page is shown once, works from a script, and is refused once revoked', async () => {
    const { page, problems } = await openPage(context)
    acceptDialogs(page)
    await page.goto('/ui/tokens')
    await page.getByRole('heading', { level: 1, name: 'API tokens' }).waitFor()
    await page.getByLabel('Name').fill('grafana')
    await page.getByRole('button', { name: 'Create', exact: true }).click()
    const token = (await page.getByTestId('token').textContent()) ?? ''
    expect(token).toMatch(/^ihe_/)
    await screenshot(page, 'tokens-created')
    await expectNoSeriousA11y(page)

    // A script: a plain request with the bearer token, no cookie.
    const script = (): Promise<Response> => fetch(`${base}/api/devices`, { headers: { authorization: `Bearer ${token}` } })
    const ok = await script()
    expect(ok.status).toBe(200)
    expect(((await ok.json()) as { devices: { deviceId: string }[] }).devices.map((d) => d.deviceId)).toContain('ota1')

    // Shown once: neither the list nor the page opened again has it; the list says it was used.
    const listed = await gateway.api<{ tokens: { name: string }[] }>('GET', '/api/tokens')
    expect(listed.body.tokens.map((x) => x.name)).toEqual(['grafana'])
    expect(JSON.stringify(listed.body)).not.toContain(token)
    await page.reload()
    const row = page.locator('tr', { hasText: 'grafana' })
    await expect.poll(async () => (await row.locator('td').allTextContents())[2]).not.toBe('never')
    expect(await page.getByTestId('token').count()).toBe(0)
    expect(await page.content()).not.toContain(token)

    await row.getByRole('button', { name: 'Revoke' }).click()
    await row.waitFor({ state: 'detached' })
    expect((await script()).status).toBe(401)

    // One made by mistake and revoked at once is no longer offered for copying.
    await page.getByLabel('Name').fill('oops')
    await page.getByRole('button', { name: 'Create', exact: true }).click()
    await page.getByTestId('token').waitFor()
    await page.locator('tr', { hasText: 'oops' }).getByRole('button', { name: 'Revoke' }).click()
    await page.getByTestId('token').waitFor({ state: 'detached' })
    expect((await gateway.api<{ tokens: unknown[] }>('GET', '/api/tokens')).body.tokens).toEqual([])
    expect(problems.errors).toEqual([])
    await page.close()
  })

  it('a device added on the devices page connects with the secret shown once; disabled it is refused; a reset secret replaces the old one; removed it is gone', async () => {
    const { page, problems } = await openPage(context)
    acceptDialogs(page)
    await page.goto('/ui/devices')
    await page.getByRole('heading', { level: 1, name: 'Devices' }).waitFor()
    await page.getByLabel('ProductId').fill('meter')
    await page.getByLabel('DeviceId').fill('new1')
    await page.getByRole('textbox', { name: 'Tags', exact: true }).fill('floor9')
    await page.getByRole('button', { name: 'Add', exact: true }).click()
    const secret = (await page.getByTestId('secret').textContent()) ?? ''
    expect(secret.length).toBeGreaterThanOrEqual(16)
    const row = page.locator('tr[data-device="meter/new1"]')
    await row.waitFor()
    await screenshot(page, 'devices-added')
    await expectNoSeriousA11y(page)

    const login = { productId: 'meter', deviceId: 'new1', secret }
    const device = await CommandDevice.connect(gateway.externalUrl, login)
    clients.push(device)
    await expect.poll(() => row.locator('[data-col="online"]').textContent(), { timeout: 20_000 }).toBe('online')

    // Disable: the connected client is put off, a new connection is refused.
    await row.getByRole('link', { name: 'meter/new1' }).click()
    await page.getByRole('heading', { level: 1, name: 'meter/new1' }).waitFor()
    const closed = new Promise<void>((resolve) => device.client.once('close', () => resolve()))
    await page.getByRole('button', { name: 'Disable' }).click()
    await page.getByRole('button', { name: 'Enable' }).waitFor()
    await closed
    await refused(gateway.externalUrl, login)
    await page.getByRole('button', { name: 'Enable' }).click()
    await page.getByRole('button', { name: 'Disable' }).waitFor()
    clients.push(await CommandDevice.connect(gateway.externalUrl, login))

    // A new secret, shown once: it works, the old one no longer does.
    await page.getByRole('button', { name: 'Reset secret' }).click()
    const next = (await page.getByTestId('secret').textContent()) ?? ''
    expect(next.length).toBeGreaterThanOrEqual(16)
    expect(next).not.toBe(secret)
    await screenshot(page, 'device-secret-reset')
    clients.push(await CommandDevice.connect(gateway.externalUrl, { ...login, secret: next }))
    await refused(gateway.externalUrl, login)

    // Removed: back on the list without it, and its secret opens nothing.
    await page.getByRole('button', { name: 'Remove' }).click()
    await page.getByRole('heading', { level: 1, name: 'Devices' }).waitFor()
    await page.locator('tr[data-device="meter/ota1"]').waitFor()
    expect(await page.locator('tr[data-device="meter/new1"]').count()).toBe(0)
    expect((await gateway.api('GET', '/api/devices/meter/new1')).status).toBe(404)
    await refused(gateway.externalUrl, { ...login, secret: next })
    expect(problems.errors).toEqual([])
    await page.close()
  })

  it('with no hub, an image uploaded on the OTA page goes to a device and to a tag, and each device\'s progress shows', async () => {
    await hub.stop()
    await gateway.waitForHealth((h) => !h.northbound.connected, 20_000, 'hub link down')
    const [d1, d2, d3, d4] = await Promise.all(devices.map((d) => CommandDevice.connect(gateway.externalUrl, d)))
    clients.push(d1, d2, d3, d4)
    const body = randomBytes(64_000)
    const md5 = createHash('md5').update(body).digest('hex')
    const file = path.join(gateway.tmpDir, 'fw-3.1.0.bin')
    await writeFile(file, body)

    const { page, problems } = await openPage(context)
    await page.goto('/ui/ota')
    await page.getByRole('heading', { level: 1, name: 'Firmware (OTA)' }).waitFor()
    await page.getByLabel('Image file').setInputFiles(file)
    await page.getByLabel('Version').fill('3.1.0')
    await page.getByRole('button', { name: 'Upload' }).click()
    await page.getByRole('status').filter({ hasText: `Uploaded: 3.1.0 · ${md5}` }).waitFor()
    const imageRow = page.locator('section[aria-labelledby="images"] tr', { hasText: md5 })
    await expect.poll(async () => (await imageRow.locator('td').allTextContents()).join('|')).toContain('upload|ready')

    const progressOf = (device: string) => page.getByRole('progressbar', { name: `Progress of ${device}` })
    const stateOf = (job: string, device: string) => page.locator('.job', { hasText: job }).locator('li', { hasText: device }).locator('.badge')
    const push = async (fill: () => Promise<void>): Promise<string> => {
      const started = page.getByTestId('ota-started')
      const before = (await started.count()) > 0 ? await started.getAttribute('data-job') : null
      await page.getByRole('combobox', { name: /^Image/ }).selectOption(md5)
      await fill()
      await page.getByRole('button', { name: 'Start the job' }).click()
      await expect.poll(() => started.getAttribute('data-job')).not.toBe(before)
      return (await started.getAttribute('data-job'))!
    }

    // A name the gateway does not know is refused with what to do, and starts nothing.
    await page.getByLabel('Devices (p/d, separated by spaces)').fill('meter/nope')
    await page.getByRole('button', { name: 'Start the job' }).click()
    await page.getByRole('alert').filter({ hasText: 'no such device: meter/nope' }).waitFor()

    // To one device by name: it fetches the image from the gateway and reports, step by step.
    const job = await push(() => page.getByLabel('Devices (p/d, separated by spaces)').fill('meter/ota3'))
    expect(await page.getByTestId('ota-started').textContent()).toContain('for 1 device(s): meter/ota3')
    const got = await takeOtaUpgrade(d3, job)
    expect(got.image.equals(body)).toBe(true)
    expect(got.offer).toMatchObject({ version: '3.1.0', type: 'firmware', md5, size: body.length })
    await expect.poll(() => stateOf(job, 'meter/ota3').textContent(), { timeout: 20_000 }).toBe('downloading')
    await reportOtaProgress(d3, got.offer, 40)
    await expect.poll(() => progressOf('meter/ota3').getAttribute('value'), { timeout: 20_000 }).toBe('40')
    expect(await stateOf(job, 'meter/ota3').textContent()).toBe('reported')
    await reportOtaProgress(d3, got.offer, 100)
    await reportVersion(d3, '3.1.0')
    await expect.poll(() => stateOf(job, 'meter/ota3').textContent(), { timeout: 20_000 }).toBe('done')
    expect(await progressOf('meter/ota3').getAttribute('value')).toBe('100')

    // To a product's tag: both devices carrying it, not the one with another tag.
    await page.getByLabel('Devices (p/d, separated by spaces)').fill('')
    const tagJob = await push(async () => {
      await page.getByLabel('ProductId').fill('meter')
      await page.getByLabel('Tag', { exact: true }).fill('floor2')
    })
    expect(await page.getByTestId('ota-started').textContent()).toContain('for 2 device(s)')
    const [one, two] = await Promise.all([takeOtaUpgrade(d1, tagJob), takeOtaUpgrade(d2, tagJob)])
    expect(one.image.equals(body) && two.image.equals(body)).toBe(true)
    await reportOtaProgress(d1, one.offer, 100)
    await reportVersion(d1, '3.1.0')
    await reportOtaProgress(d2, two.offer, -3, 'flash write failed')
    await expect.poll(() => stateOf(tagJob, 'meter/ota1').textContent(), { timeout: 20_000 }).toBe('done')
    await expect.poll(() => stateOf(tagJob, 'meter/ota2').textContent(), { timeout: 20_000 }).toBe('failed')
    // The device's own failure, in words: -3 is a failed install, not "-3 %".
    expect(await page.locator('.job', { hasText: tagJob }).locator('li', { hasText: 'meter/ota2' }).textContent()).toContain('install failed (-3)')
    expect(await page.locator('.job', { hasText: tagJob }).locator('li').allTextContents()).toHaveLength(2)
    expect(d4.commands('$ota_upgrade')).toEqual([])
    await screenshot(page, 'ota-jobs')
    await expectNoSeriousA11y(page)
    expect(problems.errors).toEqual([])
    await page.close()
  })
})

describe('web app: idle session', () => {
  let gateway: GatewayProcess
  let browser: Browser

  beforeAll(async () => {
    // No hub at all: the idle timeout is the gateway's own business.
    gateway = new GatewayProcess({ gateway: gw, northbound: { url: `mqtt://127.0.0.1:${await freePort()}` }, devices: [], http: { session: { idleTimeoutSeconds: IDLE_SECONDS } }, log: { level: 'info' } })
    await gateway.start()
    browser = await launchBrowser()
  }, 120_000)

  afterAll(async () => {
    await browser?.close()
    await gateway?.close()
  })

  it(`a browser left alone for the idle timeout (${IDLE_SECONDS} s here) is sent back to the sign-in page, its live stream ended by the gateway, also on a page that refreshes itself`, async () => {
    const context = await browser.newContext({ baseURL: `http://127.0.0.1:${gateway.httpPort}` })
    try {
      const { page, problems } = await openPage(context)
      await setUpFirstUser(page, gateway.dataDir, USER, PASSWORD)

      // A page that asks nothing by itself: only the live stream is open. The gateway ends it at
      // the idle timeout (the request finishes, rather than failing as a stream the page closed).
      // The stream is the one this page opened and the gateway answered, chosen among the streams
      // requested once the new page's document is there: the previous page's stream, cut by the
      // navigation, never finishes, and on a loaded box it could be answered again (a retry) just
      // before the navigation and be taken for this page's (failed once in CI). Finished streams
      // are recorded from the start, so one that ends before the wait below is not missed.
      const isStream = (r: Request): boolean => new URL(r.url()).pathname === '/api/events'
      let navigated = false
      const finished = new Set<Request>()
      const onNavigated = (f: Frame): void => {
        if (f === page.mainFrame() && new URL(f.url()).pathname === '/ui/tokens') navigated = true
      }
      const onFinished = (r: Request): void => void (isStream(r) && finished.add(r))
      page.on('framenavigated', onNavigated)
      page.on('requestfinished', onFinished)
      const answered = page.waitForResponse((r) => navigated && isStream(r.request()) && r.status() === 200)
      await page.goto('/ui/tokens')
      await page.getByRole('heading', { level: 1, name: 'API tokens' }).waitFor()
      const stream = (await answered).request()
      await page.getByText('Your session ended: sign in again.').waitFor({ timeout: 60_000 })
      await page.getByRole('heading', { level: 1, name: 'Sign in' }).waitFor()
      await expect.poll(() => finished.has(stream), { timeout: 60_000 }).toBe(true)
      page.off('framenavigated', onNavigated)
      page.off('requestfinished', onFinished)
      expect((await page.request.get('/api/auth/state')).ok()).toBe(true)
      expect(((await (await page.request.get('/api/auth/state')).json()) as { user: unknown }).user).toBeNull()
      await screenshot(page, 'session-expired')

      // The overview refreshes its outbox and system figures every few seconds, more often than
      // the idle timeout: those refreshes are not the technician, and do not keep the session.
      await signIn(page, USER, PASSWORD)
      await page.getByRole('heading', { level: 1, name: 'API tokens' }).waitFor()
      await page.goto('/ui/')
      await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor()
      await page.getByText('Your session ended: sign in again.').waitFor({ timeout: 60_000 })
      expect((await page.request.get('/api/devices')).status()).toBe(401)
      // Signing in again brings the page back.
      await signIn(page, USER, PASSWORD)
      await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor()
      expect(problems.errors).toEqual([])
    } finally {
      await context.close()
    }
  }, 180_000)
})
