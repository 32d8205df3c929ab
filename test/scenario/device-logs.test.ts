// What the log and the metrics tell an operator about devices: a connect and a disconnect are one
// info line each naming the device; a refused login is one count and one line, with the device and
// IHE_AUTH_FAILED (not also a "malformed packet"); an ACL refusal names the device, not the broker's
// client id; an MQTT 5 client is told, and the log says, that only 3.1.1 is served.
import mqtt, { type MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { connectDevice, newMessageId, refusedWith } from '../helpers/device.js'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { metricValue } from '../helpers/metrics.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const dev = { productId: 'thermo', deviceId: 't1', secret: 'secret-t1' }

interface Line {
  level: number
  msg: string
  device?: string
  code?: string
  clientId?: string
}

describe('device events in the log', () => {
  let gateway: GatewayProcess
  const clients: MqttClient[] = []

  const lines = (): Line[] =>
    gateway
      .logs()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Line)
  const rejected = async (reason: string): Promise<number> => metricValue((await gateway.api<string>('GET', '/metrics')).body, 'iothub_edge_rejected_total', { reason })

  beforeAll(async () => {
    gateway = new GatewayProcess({ gateway: gw, devices: [dev], log: { level: 'info', format: 'json' } })
    await gateway.start()
  })

  afterAll(async () => {
    await Promise.allSettled(clients.map((c) => c.endAsync(true)))
    await gateway?.close()
  })

  it('logs a connect and a disconnect at info, naming the device', async () => {
    const client = await connectDevice(gateway.externalUrl, dev)
    await expect.poll(() => lines().filter((l) => l.msg === 'device connected' && l.device === 'thermo/t1')).toHaveLength(1)
    expect(lines().find((l) => l.msg === 'device connected')!.level).toBe(30)
    await client.endAsync()
    await expect.poll(() => lines().filter((l) => l.msg === 'device disconnected' && l.device === 'thermo/t1')).toHaveLength(1)
  })

  it('a wrong password: one count (auth_failed, not malformed_packet) and one line with the device and IHE_AUTH_FAILED', async () => {
    const before = { auth: await rejected('auth_failed'), malformed: await rejected('malformed_packet') }
    const linesBefore = lines().length
    expect(await refusedWith(gateway.externalUrl, { ...dev, secret: 'wrong' })).toBe(4)
    await expect.poll(() => rejected('auth_failed')).toBe(before.auth + 1)
    expect(await rejected('malformed_packet')).toBe(before.malformed)
    const refusal = lines()
      .slice(linesBefore)
      .filter((l) => l.level >= 40)
    expect(refusal).toHaveLength(1)
    expect(refusal[0]).toMatchObject({ device: 'thermo/t1', code: 'IHE_AUTH_FAILED' })
  })

  it('an ACL refusal names the device', async () => {
    const client = await connectDevice(gateway.externalUrl, { ...dev, clientId: 'thermo/t1/acl' })
    clients.push(client)
    const linesBefore = lines().length
    await client.publishAsync(`upload_data/thermo/someone-else/temperature/${newMessageId()}`, 'x', { qos: 1 })
    await expect.poll(() => lines().slice(linesBefore).filter((l) => l.code === 'IHE_ACL_DENIED')).toHaveLength(1)
    const line = lines().slice(linesBefore).find((l) => l.code === 'IHE_ACL_DENIED')!
    expect(line.device).toBe('thermo/t1')
    expect(line.clientId).not.toMatch(/^aedes_/)
  })

  it('an MQTT 5 client is refused and the log says only 3.1.1 is served', async () => {
    const before = await rejected('malformed_packet')
    const linesBefore = lines().length
    const client = mqtt.connect(gateway.externalUrl, { protocolVersion: 5, username: 'thermo/t1', password: dev.secret, reconnectPeriod: 0, connectTimeout: 5_000 })
    const outcome = await new Promise<string>((resolve) => {
      client.once('connect', () => resolve('connected'))
      client.once('error', (err) => resolve(`error: ${err.message}`))
      client.once('close', () => resolve('closed'))
    })
    client.end(true)
    expect(outcome).not.toBe('connected')
    await expect.poll(() => lines().slice(linesBefore).filter((l) => l.code === 'IHE_UNSUPPORTED_PROTOCOL')).toHaveLength(1)
    expect(lines().slice(linesBefore).find((l) => l.code === 'IHE_UNSUPPORTED_PROTOCOL')!.msg).toMatch(/MQTT 5 .*3\.1\.1/)
    expect(await rejected('unsupported_protocol')).toBe(1)
    expect(await rejected('malformed_packet')).toBe(before)
  })
})
