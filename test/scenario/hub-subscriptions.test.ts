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

// A site with many children: the gateway holds three command filters per child on its one hub
// connection. In one SUBSCRIBE they pass a hub's packet size limit (EMQX's max_packet_size is 1 MB
// by default; here Mosquitto's at 256 KiB, ~1,500 children with long ids), and the hub closes the
// connection at every attempt: no child would get a command.
describe('hub subscriptions of a gateway with many children', () => {
  const login = { productId: 'gateways', deviceId: 'gw-many', secret: 'gw-secret' }
  const clientId = `${login.productId}/${login.deviceId}/edge`
  const children = Array.from({ length: 1500 }, (_, i) => ({ productId: 'meter', deviceId: `m-${String(i).padStart(5, '0')}-${'x'.repeat(50)}` }))
  const wanted = children.flatMap(({ productId: p, deviceId: d }) => [`cmd/${p}/${d}/+/+/+/#`, `rpc/${p}/${d}/+/+/+/#`, `m2m/${p}/${d}/+/+`])
  let hub: HubBroker
  let gateway: GatewayProcess

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...login, children }, config: ['max_packet_size 262144'] })
    await hub.start()
    // Seeds without secrets: no scrypt for 1,500 devices.
    gateway = new GatewayProcess({ gateway: login, northbound: { url: hub.url }, devices: children, log: { level: 'warn' } })
    await gateway.start(60_000)
  }, 90_000)
  afterAll(async () => {
    await gateway?.close()
    await hub?.close()
  })

  const missing = async (): Promise<number> => {
    const held = await hub.subscriptionsOf(clientId)
    return wanted.filter((f) => !held.has(f)).length
  }
  const connections = async (): Promise<number> =>
    (await hub.log()).split('\n').filter((l) => l.includes('New client connected') && l.includes(` as ${clientId} `)).length

  it('holds every child’s cmd, rpc and m2m filters on one connection, also after a restart', async () => {
    await expect.poll(missing, { timeout: 30_000, interval: 500 }).toBe(0)
    expect(await connections()).toBe(1)

    await gateway.restart()
    await expect.poll(connections, { timeout: 30_000, interval: 500 }).toBe(2)
    await expect.poll(missing, { timeout: 30_000, interval: 500 }).toBe(0)
    expect((await gateway.health()).northbound.connected).toBe(true)
    expect(await connections()).toBe(2)
  }, 120_000)
})
