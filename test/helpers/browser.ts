// A real browser for the web app's tests: Debian's Chromium (scripts/test.sh installs it) driven by
// playwright-core, no browser download. One browser per test file (the machine is small); each
// test opens its own context (cookies, viewport). Screenshots go to test-artifacts/ui/ (gitignored).
import { mkdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import AxeBuilder from '@axe-core/playwright'
import { chromium, type Browser, type BrowserContext, type Page } from 'playwright-core'
import { repoRoot } from './gateway-process.js'

export const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium'
export const ARTIFACTS = path.join(repoRoot, 'test-artifacts', 'ui')

export async function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    // As root (CI) Chromium refuses its sandbox; the pages are our own gateway's.
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
    timeout: 60_000,
  })
}

export interface PageProblems {
  /**
   * Console errors (CSP violations included: the app must run under its own policy), uncaught
   * exceptions, and API calls the gateway has no route for or failed on (404, 5xx). Refusals a test
   * provokes (401, 403, 409...) are the API's answers, not problems.
   */
  errors: string[]
}

/** A page that records what went wrong in it (each test asserts there is nothing it did not expect). */
export async function openPage(context: BrowserContext): Promise<{ page: Page; problems: PageProblems }> {
  const page = await context.newPage()
  page.setDefaultTimeout(20_000)
  const problems: PageProblems = { errors: [] }
  page.on('console', (m) => {
    // Chromium logs every non-2xx response as "Failed to load resource"; responses are judged below.
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.errors.push(m.text())
  })
  page.on('pageerror', (e) => problems.errors.push(`page error: ${e.message}`))
  page.on('response', (r) => {
    const url = new URL(r.url())
    if (r.status() >= 500 || (r.status() === 404 && (url.pathname.startsWith('/api/') || url.pathname.startsWith('/assets/')))) {
      problems.errors.push(`${r.request().method()} ${url.pathname}${url.search} answered ${r.status()}`)
    }
  })
  return { page, problems }
}

/** Saves a full-page PNG as test-artifacts/ui/{name}.png and returns its path. */
export async function screenshot(page: Page, name: string): Promise<string> {
  mkdirSync(ARTIFACTS, { recursive: true })
  const file = path.join(ARTIFACTS, `${name}.png`)
  await page.screenshot({ path: file, fullPage: true })
  return file
}

/** axe's serious and critical violations on the page as it is now, as readable lines (empty when none). */
export async function seriousA11yViolations(page: Page): Promise<string[]> {
  const result = await new AxeBuilder({ page }).withTags(['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice']).analyze()
  return result.violations
    .filter((v) => v.impact === 'serious' || v.impact === 'critical')
    .map((v) => `${v.id} (${v.impact}): ${v.help}; at ${v.nodes.map((n) => n.target.join(' ')).slice(0, 5).join(', ')}`)
}

/** How many CSS pixels the document is wider than the viewport (0: no horizontal scrolling). */
export async function horizontalOverflow(page: Page): Promise<number> {
  return page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth)
}

/**
 * The first start of the web app in `page` (its context's baseURL is the gateway): the setup code
 * from the gateway's data folder, the first user and password; resolves on the overview.
 */
export async function setUpFirstUser(page: Page, dataDir: string, username: string, password: string): Promise<void> {
  await page.goto('/')
  await page.getByRole('heading', { level: 1, name: 'First start: set the administrator password' }).waitFor()
  await page.getByLabel('Setup code').fill(readFileSync(path.join(dataDir, 'ui-setup-code'), 'utf8').trim())
  await page.getByLabel('User name').fill(username)
  await page.getByLabel('Password', { exact: true }).fill(password)
  await page.getByLabel('Password again').fill(password)
  await page.getByRole('button', { name: 'Set password and sign in' }).click()
  await page.getByRole('heading', { level: 1, name: 'Overview' }).waitFor()
}

/**
 * A browser with one context on the gateway at `baseURL` whose first user is set up (the setup
 * code from `dataDir`) and signed in: the setup of a test file that is about pages, not first start.
 */
export async function signedInBrowser(baseURL: string, dataDir: string, username: string, password: string): Promise<{ browser: Browser; context: BrowserContext }> {
  const browser = await launchBrowser()
  const context = await browser.newContext({ baseURL })
  const page = await context.newPage()
  await setUpFirstUser(page, dataDir, username, password)
  await page.close()
  return { browser, context }
}

/** Signs in on the sign-in page the app shows (English). */
export async function signIn(page: Page, username: string, password: string): Promise<void> {
  await page.getByLabel('User name').fill(username)
  await page.getByLabel('Password').fill(password)
  await page.getByRole('button', { name: 'Sign in' }).click()
}

/**
 * Sends a command (`rpc`: an RPC, waiting for the reply) with the form on the device page open in
 * `page`; resolves with the request id the page shows once the gateway took it.
 */
export async function sendCommandFromDevicePage(page: Page, name: string, payload: string, opts: { rpc?: boolean } = {}): Promise<string | null> {
  await page.getByLabel('Command name').fill(name)
  await page.getByRole('textbox', { name: 'Payload' }).fill(payload)
  await page.getByLabel('RPC (wait for the reply)').setChecked(opts.rpc ?? false)
  const code = page.getByTestId('command-result').locator('code').first()
  const before = (await code.count()) > 0 ? await code.textContent() : null
  await page.getByRole('button', { name: 'Send', exact: true }).click()
  if (opts.rpc) return null
  // The page shows the new command's request id once the gateway answered the form.
  await page.waitForFunction((prev) => {
    const c = document.querySelector('[data-testid="command-result"] code')
    return c !== null && c.textContent !== prev
  }, before)
  return code.textContent()
}
