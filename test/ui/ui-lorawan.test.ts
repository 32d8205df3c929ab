// The LoRaWAN page in a real browser (Debian's Chromium through playwright-core) against a real
// gateway process, Mosquitto as the hub and Mosquitto as ChirpStack's broker, with ChirpStack's
// events in its real JSON form over its MQTT integration (test/helpers/chirpstack.ts): a sensor's
// radio quality and frame counter; commands sent from the device page waiting in the downlink
// queue at ChirpStack, queued then sent; and what went wrong, as a technician must see it:
// ChirpStack's `log` events of level ERROR and WARNING (an invalid MIC, a codec error, a
// frame-counter reset, a downlink too large for the data rate), a confirmed downlink the device did
// not acknowledge, and a payload the gateway's own codec could not decode. axe on the page, and a
// screenshot into test-artifacts/ui/.
import type { Browser, BrowserContext, Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { openPage, screenshot, sendCommandFromDevicePage, seriousA11yViolations, signedInBrowser } from '../helpers/browser.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HubBroker } from '../helpers/hub-broker.js'
import { ChirpstackBroker, ChirpstackSim, example } from '../helpers/chirpstack.js'

const gw = { productId: 'gateways', deviceId: 'gw-lora', secret: 'gw-lora-secret' }
// ChirpStack's documented examples are from this DevEUI. Cayenne LPP as its codec: the example's
// one-byte payload does not decode, which the page must show.
const sensor = { devEui: '0101010101010101', productId: 'room', deviceId: 'r101' }
const dev = { devEui: sensor.devEui }
const PASSWORD = 'correct horse battery'

interface Diagnostics {
  connected: boolean
  devices: { devEui: string; lastSeen?: number; downlinks: { id: string }[] }[]
}

/** The page's rows of a table section (by its heading), as lists of cell texts. */
async function rows(page: Page, section: string): Promise<string[][]> {
  const table = page.locator('section', { has: page.getByRole('heading', { name: section }) }).locator('tbody tr')
  const out: string[][] = []
  for (const r of await table.all()) out.push((await r.locator('td').allTextContents()).map((x) => x.trim()))
  return out
}

describe('web app: LoRaWAN page', () => {
  let hub: HubBroker
  let csBroker: ChirpstackBroker
  let chirpstack: ChirpstackSim
  let gateway: GatewayProcess
  let browser: Browser
  let context: BrowserContext

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [{ productId: sensor.productId, deviceId: sensor.deviceId }] } })
    await hub.start()
    csBroker = new ChirpstackBroker()
    await csBroker.start()
    chirpstack = new ChirpstackSim(csBroker.url, 'json')
    await chirpstack.start()
    const lorawan = {
      chirpstack: { mqtt: { url: csBroker.url, clientId: 'ui-lorawan-test' }, encoding: 'json' },
      devices: [{ ...sensor, codec: 'cayenne', dataTypes: { '1': 'telemetry' }, commands: { setpoint: { fPort: 10, confirmed: true }, beep: { fPort: 11 } } }],
    }
    gateway = new GatewayProcess({ gateway: gw, northbound: { url: hub.url }, lorawan, log: { level: 'info' } })
    await gateway.start()
    await gateway.waitForHealth((h) => h.northbound.connected, 20_000, 'northbound connected')
    ;({ browser, context } = await signedInBrowser(`http://127.0.0.1:${gateway.httpPort}`, gateway.dataDir, 'tech', PASSWORD))
  }, 120_000)

  afterAll(async () => {
    await context?.close()
    await browser?.close()
    await gateway?.close()
    await chirpstack?.stop()
    await csBroker?.close()
    await hub?.close()
  })

  it('shows radio quality, the frame counter, the downlink queue and ChirpStack\'s error events', async ({ onTestFailed }) => {
    onTestFailed(() => console.log(gateway.failure('output when the test failed').message))
    // Connected to ChirpStack's broker (and so subscribed to its events).
    await expect.poll(async () => (await gateway.api<Diagnostics>('GET', '/api/adapters/lorawan/devices')).body.connected, { timeout: 20_000 }).toBe(true)
    // An uplink (ChirpStack's documented `up`, frame counter 41): the sensor is heard, its
    // application known, so downlinks can go.
    await chirpstack.publish('up', dev, { ...example('up'), deduplicationId: chirpstack.nextId(), fCnt: 41 })
    await expect.poll(async () => (await gateway.api<Diagnostics>('GET', '/api/adapters/lorawan/devices')).body.devices[0]?.lastSeen, { timeout: 20_000 }).toBeGreaterThan(0)

    // Two commands from the device page: each becomes a downlink ChirpStack holds.
    const { page, problems } = await openPage(context)
    await page.goto(`/ui/devices/${sensor.productId}/${sensor.deviceId}`)
    await sendCommandFromDevicePage(page, 'setpoint', '21')
    const setpoint = await chirpstack.waitForDownlink((d) => d.fPort === 10, 10_000, 'the setpoint downlink')
    await sendCommandFromDevicePage(page, 'beep', 'on')
    const beep = await chirpstack.waitForDownlink((d) => d.fPort === 11, 10_000, 'the beep downlink')

    await page.goto('/ui/lorawan')
    const sensorRow = page.locator('tr', { hasText: sensor.devEui })
    // example('up'): one gateway heard it at -36 dBm, SNR 10.5, data rate 1; our frame counter 41.
    await expect.poll(async () => (await sensorRow.locator('td').allTextContents()).slice(3, 8), { timeout: 20_000 }).toEqual(['-36', '10.5', '1', '41', '1'])
    // The queue, oldest first: what, fPort, confirmed, state, ..., ChirpStack's queue item id.
    const queue = async (): Promise<string[][]> => (await rows(page, 'Downlink queue')).map((r) => [r[0]!, r[1]!, r[2]!, r[3]!, r[4]!, r[7]!])
    await expect.poll(queue, { timeout: 20_000 }).toEqual([
      ['room/r101', 'setpoint', '10', 'yes', 'queued', setpoint.id],
      ['room/r101', 'beep', '11', 'no', 'queued', beep.id],
    ])

    // A radio gateway takes the setpoint (txack): sent, awaiting the device's ack. ChirpStack drops
    // the beep as too large for the data rate (its log event names the queue item).
    await chirpstack.publish('txack', dev, { ...example('txack'), queueItemId: setpoint.id })
    await chirpstack.publish('log', dev, {
      time: new Date().toISOString(),
      level: 'ERROR',
      code: 'DOWNLINK_PAYLOAD_SIZE',
      description: 'Device queue-item discarded because it exceeds the max. payload size',
      context: { queue_item_id: beep.id },
    })
    // ChirpStack's documented `log` (an invalid MIC), its codec failing, a frame-counter reset.
    await chirpstack.publishRaw(sensor.devEui, 'log', JSON.stringify(example('log')))
    await chirpstack.publish('log', dev, { time: new Date().toISOString(), level: 'ERROR', code: 'UPLINK_CODEC', description: 'Error: decodeUplink is not defined', context: { deduplication_id: chirpstack.nextId() } })
    await chirpstack.publish('log', dev, { time: new Date().toISOString(), level: 'WARNING', code: 'UPLINK_F_CNT_RESET', description: 'Frame-counter reset or rollover detected', context: { deduplication_id: chirpstack.nextId() } })

    await expect.poll(queue, { timeout: 20_000 }).toEqual([['room/r101', 'setpoint', '10', 'yes', 'sent, awaiting ack', setpoint.id]])
    // What went wrong: level, code, description (and the downlink), who saw it; newest first by
    // ChirpStack's time, so the 2022 example comes last.
    const wrong = async (): Promise<string[][]> => (await rows(page, 'What went wrong')).map((r) => [r[1]!, r[2]!, r[3]!, r[4]!, r[5]!])
    await expect.poll(async () => (await wrong()).map((r) => r[2]), { timeout: 20_000 }).toEqual(expect.arrayContaining(['DOWNLINK_PAYLOAD_SIZE', 'UPLINK_CODEC', 'UPLINK_F_CNT_RESET', 'UPLINK_MIC', 'CODEC']))
    const found = await wrong()
    expect(found).toContainEqual(['room/r101', 'ERROR', 'DOWNLINK_PAYLOAD_SIZE', 'Device queue-item discarded because it exceeds the max. payload size (downlink: beep)', 'ChirpStack'])
    expect(found).toContainEqual(['room/r101', 'WARNING', 'UPLINK_F_CNT_RESET', 'Frame-counter reset or rollover detected', 'ChirpStack'])
    expect(found).toContainEqual(['room/r101', 'ERROR', 'UPLINK_CODEC', 'Error: decodeUplink is not defined', 'ChirpStack'])
    expect(found.at(-1)).toEqual(['room/r101', 'ERROR', 'UPLINK_MIC', 'MIC of join-request is invalid, make sure keys are correct', 'ChirpStack'])
    // The gateway's own Cayenne codec could not read the uplink's one byte.
    expect(found.find((r) => r[2] === 'CODEC')?.slice(0, 2)).toEqual(['room/r101', 'ERROR'])
    expect(found.find((r) => r[2] === 'CODEC')?.[4]).toBe('gateway')
    // The counts per code in the devices table agree.
    expect(await sensorRow.locator('td').nth(10).textContent()).toContain('UPLINK_MIC 1')

    await page.waitForLoadState('networkidle')
    expect(await seriousA11yViolations(page)).toEqual([])
    await screenshot(page, 'lorawan-queue-and-problems')

    // The device never acknowledges the confirmed setpoint: the queue empties, and that is listed too.
    await chirpstack.publish('ack', dev, { ...example('ack'), deduplicationId: chirpstack.nextId(), queueItemId: setpoint.id, acknowledged: false })
    await page.getByText('No downlink waiting at ChirpStack.').waitFor({ timeout: 20_000 })
    await expect.poll(async () => (await wrong())[0], { timeout: 20_000 }).toEqual([
      'room/r101', 'WARNING', 'NOT_ACKNOWLEDGED', 'the device did not acknowledge the confirmed downlink (downlink: setpoint)', 'gateway',
    ])
    expect(problems.errors).toEqual([])
    await page.close()
  }, 120_000)
})
