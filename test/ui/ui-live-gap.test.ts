// What happens while a device page's live stream is not connected, in a real browser (Debian's
// Chromium through playwright-core) against a real gateway process, Mosquitto as the hub and a real
// MQTT device: an alarm a rule raises between the page's first load and the stream's connection, and
// one raised after a gateway restart before the stream reconnected, both show on the timeline once
// the stream (re)connects, loaded in the background (not the session's use: an unattended page still
// reaches the idle timeout). Playwright's routing holds the stream's request back to open that window
// at will, and an init script keeps the timeline's own 30 s poll from ever firing and lets the test
// wait until the page's delayed reloads (2 s and 6 s after its stream opened) have run before the
// restart, so only the reload on the stream's (re)connection can bring an alarm the page missed.
// And a page too slow for its stream (its main thread held still): the uplinks the gateway dropped
// for it show once the stream tells it so, newest first although the stream then sends it older
// ones it had queued.
import type { Browser, BrowserContext, Page, Route } from 'playwright-core'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { CommandDevice } from '../helpers/command-device.js'
import { openPage, screenshot, signedInBrowser } from '../helpers/browser.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HubBroker } from '../helpers/hub-broker.js'
import { metricValue } from '../helpers/metrics.js'

const gw = { productId: 'gateways', deviceId: 'gw-gap', secret: 'gw-gap-secret' }
const valve = { productId: 'valve', deviceId: 'v1', secret: 'valve-secret-1' }
const EVENTS = '/api/devices/valve/v1/events'
const MESSAGES = '/api/devices/valve/v1/messages'
const rules = [
  {
    name: 'valve-pressure',
    from: 'upload_data/valve/+/pressure',
    actions: [{ alarm: { name: 'overpressure', set: 'payload.bar > 6.0', clear: 'payload.bar < 5.0', value: 'payload.bar' } }],
  },
]

interface HistoryEvent {
  type: string
  detail?: { value?: number }
}

/** Holds every request of the live stream (`GET /api/events`) from now until release(). */
async function holdLiveStream(page: Page): Promise<{ held: Promise<void>; release: () => Promise<void> }> {
  const routes: Route[] = []
  let released = false
  let heldOne: () => void = () => undefined
  const held = new Promise<void>((resolve) => (heldOne = resolve))
  await page.route(
    (url) => url.pathname === '/api/events',
    async (route) => {
      if (released) return route.continue()
      routes.push(route)
      heldOne()
    },
  )
  return {
    held,
    release: async () => {
      released = true
      await Promise.all(routes.splice(0).map((r) => r.continue()))
    },
  }
}

/**
 * The page's own timers under watch: its 30 s polls (the timeline's) never fire, so what it shows
 * comes from its own loads alone; and settled() can tell when the page has no delayed work left.
 */
async function watchPageTimers(page: Page): Promise<void> {
  await page.addInitScript(`{
    const every = window.setInterval, later = window.setTimeout, cancel = window.clearTimeout, load = window.fetch
    const delayed = new Set()
    let inFlight = 0
    let quietSince = Date.now()
    const busy = () => (quietSince = Date.now())
    window.setInterval = (fn, ms, ...args) => (ms >= 30000 ? 0 : every(fn, ms, ...args))
    window.setTimeout = (fn, ms, ...args) => {
      if (!(ms >= 1000)) return later(fn, ms, ...args)
      const id = later((...a) => (delayed.delete(id), busy(), typeof fn === 'function' && fn(...a)), ms, ...args)
      delayed.add(id)
      return id
    }
    window.clearTimeout = (id) => (delayed.delete(id), cancel(id))
    window.fetch = (...args) => (inFlight++, busy(), load(...args).finally(() => (inFlight--, busy())))
    window.pageSettled = () => delayed.size === 0 && inFlight === 0 && Date.now() - quietSince >= 1000
  }`)
}

/**
 * Until the page has nothing pending that could load anything: no timeout of a second or more (the
 * timeline's reloads 2 s and 6 s after a live event or the stream's opening), no request in flight,
 * and neither for a second (a timeout's load starts at the page's next frame).
 */
async function settled(page: Page): Promise<void> {
  await page.waitForFunction(() => (window as unknown as { pageSettled: () => boolean }).pageSettled(), undefined, { polling: 100, timeout: 30_000 })
}

/** The next load of `path` (the timeline's events by default), and whether it went as a background request. */
function nextLoad(page: Page, path = EVENTS): Promise<{ background: boolean }> {
  return page.waitForRequest((r) => new URL(r.url()).pathname === path).then((r) => ({ background: r.headers()['x-background'] === '1' }))
}

describe('web app: the device page after its live stream missed events', () => {
  let hub: HubBroker
  let gateway: GatewayProcess
  let browser: Browser
  let context: BrowserContext
  const clients: CommandDevice[] = []

  /** The alarm with that value is in the gateway's history (what the page loads). */
  async function alarmRecorded(type: 'alarm_raised' | 'alarm_cleared', value: number): Promise<void> {
    await expect
      .poll(async () => (await gateway.api<{ events: HistoryEvent[] }>('GET', `${EVENTS}?limit=1000`)).body.events.some((e) => e.type === type && e.detail?.value === value), { timeout: 20_000 })
      .toBe(true)
  }

  /** Live stream events the gateway did not send to a client too slow for them (since it started). */
  async function liveDropped(): Promise<number> {
    return metricValue((await gateway.api<string>('GET', '/metrics')).body, 'iothub_edge_live_stream_dropped_total')
  }

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [valve] } })
    await hub.start()
    gateway = new GatewayProcess({ gateway: gw, northbound: { url: hub.url }, devices: [valve], rules, log: { level: 'info' } })
    await gateway.start()
    ;({ browser, context } = await signedInBrowser(`http://127.0.0.1:${gateway.httpPort}`, gateway.dataDir, 'tech', 'correct horse battery'))
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

  it('an alarm raised after the page loaded its timeline but before its live stream connected shows once the stream connects', async () => {
    const device = await CommandDevice.connect(gateway.externalUrl, valve)
    clients.push(device)
    const { page, problems } = await openPage(context)
    await watchPageTimers(page)
    const stream = await holdLiveStream(page)
    const firstLoad = page.waitForResponse((r) => new URL(r.url()).pathname === EVENTS && r.status() === 200)
    await page.goto('/ui/devices/valve/v1')
    await firstLoad
    await stream.held
    await device.upload('pressure', { bar: 6.5 })
    await alarmRecorded('alarm_raised', 6.5)
    const raised = page.locator('ol.timeline li[data-type="alarm_raised"]')
    // The page loaded before the alarm and has heard nothing since.
    expect(await raised.count()).toBe(0)
    const reload = nextLoad(page)
    await stream.release()
    await raised.first().waitFor()
    expect(await raised.first().textContent()).toContain('"value":6.5')
    expect(await reload).toEqual({ background: true })
    expect(problems.errors).toEqual([])
    await page.close()
  })

  it('after a gateway restart, what happened before the stream reconnected shows once it has', async () => {
    const { page, problems } = await openPage(context)
    await watchPageTimers(page)
    const connected = page.waitForResponse((r) => new URL(r.url()).pathname === '/api/events' && r.status() === 200)
    await page.goto('/ui/devices/valve/v1')
    await connected
    await page.getByRole('status').filter({ hasText: /^live$/ }).waitFor()
    // A page open for a while: the timeline's reloads after the stream opened (2 s and 6 s later)
    // have run, none is due while the gateway is away (one then would get a 503 or no answer).
    await settled(page)
    // The browser's reconnection after the restart is held until the alarm cleared and raised again.
    const stream = await holdLiveStream(page)
    await gateway.restart()
    await stream.held
    // Nothing the page heard before its stream closed is still to be loaded: from now on only the
    // stream's reconnection loads the timeline.
    await settled(page)
    const device = await CommandDevice.connect(gateway.externalUrl, valve)
    clients.push(device)
    await device.upload('pressure', { bar: 4.0 })
    await alarmRecorded('alarm_cleared', 4.0)
    await device.upload('pressure', { bar: 7.5 })
    await alarmRecorded('alarm_raised', 7.5)
    const raisedAgain = page.locator('ol.timeline li[data-type="alarm_raised"]', { hasText: '"value":7.5' })
    const cleared = page.locator('ol.timeline li[data-type="alarm_cleared"]', { hasText: '"value":4' })
    expect(await raisedAgain.count()).toBe(0)
    expect(await cleared.count()).toBe(0)
    const reload = nextLoad(page)
    await stream.release()
    await raisedAgain.waitFor()
    await cleared.waitFor()
    expect(await reload).toEqual({ background: true })
    await page.getByRole('status').filter({ hasText: /^live$/ }).waitFor()
    await screenshot(page, 'device-after-restart')
    expect(problems.errors).toEqual([])
    await page.close()
  })

  it('a page too slow for its live stream shows the uplinks the gateway dropped for it once told so, newest first', async () => {
    const device = await CommandDevice.connect(gateway.externalUrl, valve)
    clients.push(device)
    const { page, problems } = await openPage(context)
    await watchPageTimers(page)
    await page.goto('/ui/devices/valve/v1')
    await page.getByRole('status').filter({ hasText: /^live$/ }).waitFor()
    await settled(page)
    // The page's main thread held still (in the debugger, as a long task holds it): the browser stops
    // reading the stream, the gateway queues what the socket does not take, then drops and counts.
    const cdp = await context.newCDPSession(page)
    await cdp.send('Debugger.enable')
    await cdp.send('Debugger.pause')
    const droppedBefore = await liveDropped()
    const pad = 'x'.repeat(15_000)
    let seq = 0
    // Loopback socket buffers take a few MB before the gateway's queue fills and it drops.
    while ((await liveDropped()) === droppedBefore) {
      if (seq >= 5000) throw new Error(`the gateway dropped nothing for a stalled page after ${seq} uplinks of 15 kB`)
      for (let i = 0; i < 50; i++) await device.upload('blob', { seq: ++seq, pad })
    }
    // Its queue is full and nothing drains: these never reach the page live, and outnumber its list.
    for (let i = 0; i < 25; i++) await device.upload('blob', { seq: ++seq, pad })
    const reload = nextLoad(page, MESSAGES)
    await cdp.send('Debugger.resume')
    const payloads = page.locator('ol.payloads li')
    await payloads.filter({ hasText: `"seq":${seq},` }).waitFor()
    expect(await payloads.first().textContent()).toContain(`"seq":${seq},`)
    expect(await reload).toEqual({ background: true })
    expect(problems.errors).toEqual([])
    await cdp.detach()
    await page.close()
  }, 180_000)
})
