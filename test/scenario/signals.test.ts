// Signals and exit codes of `iothub-edge start` (issue 17 items 5-6, broker-robust item 5;
// docs/operators/troubleshooting.md "Exit codes"). SIGTERM, SIGINT and SIGHUP that arrive while the
// gateway is starting (the store open, the listeners about to open) end it cleanly once the start is done:
// exit 0, and the next start finds a clean stop.
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import { GatewayProcess } from '../helpers/gateway-process.js'

describe('a signal while the gateway starts', () => {
  let gateway: GatewayProcess

  beforeEach(({ onTestFailed }) => {
    // debug: the marker below is at debug when broker.db kept nothing (a first start).
    gateway = new GatewayProcess({ log: { level: 'debug' } })
    onTestFailed(() => console.log(gateway.failure('output when the test failed').message))
  })

  afterEach(async () => {
    await gateway?.close()
  })

  it.each(['SIGTERM', 'SIGINT', 'SIGHUP'] as const)('%s during the start: a clean stop once the start is done, exit 0', async (signal) => {
    // This line comes with the store open, just before the MQTT listeners and the web server start.
    await gateway.startUntil(/local broker sessions restored/)
    process.kill(gateway.pid!, signal)
    await expect.poll(() => gateway.running, { timeout: 20_000 }).toBe(false)
    expect(gateway.exitCode).toBe(0)
    const logs = gateway.logs()
    expect(logs).toContain('stopping once the start in progress is done')
    expect(logs).toContain(`"signal":"${signal}"`)

    // Nothing was left half-open: the next start is a clean one.
    await gateway.start()
    expect(gateway.logs()).not.toContain('without a clean stop')
    expect(await gateway.stop()).toBe(0)
  }, 60_000)
})
