// The serial adapter in the real gateway process (`iothub-edge start`, built): the `serial:` section
// loads the adapter and its native serialport binding, a pymodbus slave on a socat pty is polled,
// the readings reach Mosquitto as the hub, and SIGTERM stops it cleanly with the port open.
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { GatewayProcess } from '../helpers/gateway-process.js'
import { HubBroker, type HubRecorder } from '../helpers/hub-broker.js'
import { ModbusSlave, PtyPair, serialTempDir } from '../helpers/serial-peers.js'

const gw = { productId: 'gateways', deviceId: 'gw-01', secret: 'gw-secret' }
const meter = { productId: 'meters', deviceId: 'proc-m1' }

describe('the serial adapter in the gateway process', () => {
  let hub: HubBroker
  let rec: HubRecorder
  let tmp: { dir: string; dispose: () => Promise<void> }
  let pair: PtyPair
  let slave: ModbusSlave
  let gateway: GatewayProcess

  beforeAll(async () => {
    hub = new HubBroker({ devices: [], gateway: { ...gw, children: [meter] } })
    await hub.start()
    rec = await hub.subscribeAll('upload_data/meters/#', { clientId: 'serial-process-recorder' })
    tmp = await serialTempDir('serial-process-')
    pair = new PtyPair(path.join(tmp.dir, 'gw'), path.join(tmp.dir, 'dev'))
    await pair.start()
    slave = new ModbusSlave(pair.device, path.join(tmp.dir, 'slave.json'), { units: { 3: { ir: { 0: 0x4366, 1: 0x8000 } } } })
    await slave.start()
    gateway = new GatewayProcess({
      gateway: gw,
      northbound: { url: hub.url },
      devices: [{ ...meter, secret: 'unused' }],
      serial: {
        ports: [
          {
            name: 'rs485',
            path: pair.gateway,
            baudRate: 38400,
            protocol: 'modbus-rtu',
            timeoutMs: 1000,
            devices: [{ unitId: 3, ...meter, pollIntervalMs: 500, dataType: 'power', registers: [{ name: 'voltage', table: 'input', address: 0, type: 'float32', unit: 'V' }] }],
          },
        ],
      },
      log: { level: 'info' },
    })
    await gateway.start()
  })

  afterAll(async () => {
    await gateway?.close()
    await slave?.stop()
    await pair?.stop().catch(() => undefined)
    await rec?.close()
    await hub?.close()
    await tmp?.dispose()
  })

  it('runs the adapter, polls the slave and delivers its readings to the hub', async () => {
    const health = (await gateway.api<{ adapters: { name: string; state: string; kind: string }[] }>('GET', '/api/health')).body
    expect(health.adapters).toContainEqual(expect.objectContaining({ name: 'serial', state: 'running', kind: 'mapped' }))
    const up = await rec.waitFor((m) => m.topic.startsWith(`upload_data/${meter.productId}/${meter.deviceId}/power/`), 20_000, 'a reading')
    expect(JSON.parse(up.payload.toString('utf8'))).toEqual({ voltage: 230.5 })
    const ports = await gateway.api<{ ports: { name: string; open: boolean }[] }>('GET', '/api/adapters/serial/ports')
    expect(ports.body.ports).toEqual([expect.objectContaining({ name: 'rs485', open: true })])
  })

  it('stops cleanly on SIGTERM with the port open', async () => {
    expect(await gateway.stop()).toBe(0)
  })
})
