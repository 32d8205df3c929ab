// A hub that stops answering while the TCP connection stays open (a hung broker; a NAT box that
// forgot the connection): nothing fails at the socket, so only the hub link's keepalive notices.
// It must: until the link gives the connection up, nothing new reaches the hub and health says
// "connected". Mosquitto is the hub, frozen with SIGSTOP and resumed with SIGCONT.
import { afterAll, describe, expect, it } from 'vitest'
import { connectDevice, newMessageId, publishQos1 } from '../helpers/device.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HubBroker } from '../helpers/hub-broker.js'

const gw = { productId: 'gateways', deviceId: 'gw-ka', secret: 'gw-ka-secret' }
const dev = { productId: 'thermo', deviceId: 'ka1', secret: 'secret-ka1' }

interface Health {
  northbound: { connected: boolean; lastError: { code: string; reason: string | null; message: string } | null }
}

describe('hub link keepalive', () => {
  const hub = new HubBroker({ devices: [], gateway: { ...gw, children: [dev] } })
  let g: GatewayProcess | undefined

  afterAll(async () => {
    hub.resume()
    await g?.close()
    await hub.close()
  })

  it('gives up a connection to a hub that stopped answering (reason timeout), reconnects once it answers again, and what waited arrives', async () => {
    await hub.start()
    const recorder = await hub.subscribeAll('upload_data/thermo/#')
    g = new GatewayProcess({ gateway: gw, northbound: { url: hub.url, keepalive: 5 }, devices: [dev] })
    await g.start()
    await g.waitForHealth((h) => h.northbound.connected, 30_000, 'link up')
    const gateway = g
    const health = async (): Promise<Health> => (await gateway.api<Health>('GET', '/api/health')).body

    hub.freeze()
    const device = await connectDevice(gateway.externalUrl, dev)
    const topic = `upload_data/thermo/ka1/temperature/${newMessageId()}`
    await publishQos1(device, topic, '21.5')
    await device.endAsync()
    // Two keepalive periods (an unanswered PINGREQ), with room for a busy machine.
    await expect.poll(async () => (await health()).northbound.connected, { timeout: 40_000, interval: 500 }).toBe(false)
    expect((await health()).northbound.lastError).toMatchObject({ code: 'IHE_NORTHBOUND', reason: 'timeout' })

    hub.resume()
    await gateway.waitForHealth((h) => h.northbound.connected, 90_000, 'link up again')
    const m = await recorder.waitFor((x) => x.topic === topic, 30_000, 'the telemetry published while the hub was frozen')
    expect(m.payload.toString()).toBe('21.5')
  })
})
