// The gateway's session at the hub is persistent, so the hub keeps its subscriptions across the
// gateway's restarts. A child removed while the gateway was stopped must not stay subscribed at
// the hub for ever: the next run unsubscribes what it no longer wants (seen from Mosquitto's side).
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { HubBroker } from '../helpers/hub-broker.js'
import { GatewayProcess, runCli } from '../helpers/gateway-process.js'

const gwLogin = { productId: 'gateways', deviceId: 'gw-subs', secret: 'gw-secret' }
const GW_CLIENT_ID = `${gwLogin.productId}/${gwLogin.deviceId}/edge`
const keep = { productId: 'meter', deviceId: 'm-keep', secret: 'k' }
const gone = { productId: 'meter', deviceId: 'm-gone', secret: 'g' }
const cmdFilter = (d: { productId: string; deviceId: string }): string => `cmd/${d.productId}/${d.deviceId}/+/+/+/#`

describe('hub subscriptions across gateway restarts', () => {
  let hub: HubBroker
  let gateway: GatewayProcess

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gwLogin, children: [keep, gone] } })
    await hub.start()
    // Seeds only create what is absent: `gone` is removed below through the CLI, and stays removed.
    gateway = new GatewayProcess({ gateway: gwLogin, northbound: { url: hub.url }, devices: [keep, gone], log: { level: 'warn' } })
    await gateway.start()
  })
  afterAll(async () => {
    await gateway?.close()
    await hub?.close()
  })

  async function held(): Promise<Set<string>> {
    return hub.subscriptionsOf(GW_CLIENT_ID)
  }

  it('drops the subscriptions of a child removed while the gateway was stopped', async () => {
    await expect.poll(async () => (await held()).has(cmdFilter(gone)), { timeout: 10_000 }).toBe(true)
    expect((await held()).has(cmdFilter(keep))).toBe(true)

    expect(await gateway.stop()).toBe(0)
    const removed = await runCli(['devices', 'remove', gone.productId, gone.deviceId, '-c', gateway.configFile], { cwd: gateway.tmpDir })
    expect(removed.code, removed.stderr).toBe(0)
    await gateway.restart()

    await expect.poll(async () => (await held()).has(cmdFilter(gone)), { timeout: 10_000 }).toBe(false)
    const now = await held()
    expect(now.has(`rpc/${gone.productId}/${gone.deviceId}/+/+/+/#`)).toBe(false)
    expect(now.has(`m2m/${gone.productId}/${gone.deviceId}/+/+`)).toBe(false)
    expect(now.has(cmdFilter(keep))).toBe(true)
  })
})
