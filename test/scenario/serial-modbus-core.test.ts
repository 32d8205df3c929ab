// What the serial adapter hands the core for Modbus readings, seen from the core's side of the
// seam (the contract test's recording core) with a real pymodbus slave on a socat pty: the gateway
// types with the port and unit as transport metadata, and a reading the core cannot store is
// counted and dropped while polling carries on.
import { symlink } from 'node:fs/promises'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseConfig } from '../../src/config.js'
import { SerialAdapter } from '../../src/southbound/serial/serial-adapter.js'
import type { SerialConfig } from '../../src/southbound/serial/schema.js'
import { ContractCore } from '../contract/contract-core.js'
import { ModbusSlave, PtyPair, serialTempDir } from '../helpers/serial-peers.js'

async function until(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what} (waited ${timeoutMs} ms)`)
    await sleep(20)
  }
}

describe('Modbus readings at the core seam', () => {
  const device = { productId: 'meters', deviceId: 'seam-1' }
  let core: ContractCore
  let tmp: { dir: string; dispose: () => Promise<void> }
  let pair: PtyPair
  let slave: ModbusSlave
  let adapter: SerialAdapter

  beforeAll(async () => {
    core = new ContractCore()
    tmp = await serialTempDir('serial-seam-')
    pair = new PtyPair(path.join(tmp.dir, 'gw'), path.join(tmp.dir, 'dev'))
    await pair.start()
    slave = new ModbusSlave(pair.device, path.join(tmp.dir, 'slave.json'), { units: { 9: { hr: { 5: 1234 } } } })
    await slave.start()
    const cfg = (
      parseConfig({
        serial: {
          ports: [
            {
              name: 'seam',
              path: pair.gateway,
              baudRate: 19200,
              protocol: 'modbus-rtu',
              timeoutMs: 1000,
              devices: [{ unitId: 9, ...device, pollIntervalMs: 200, dataType: 'counter', registers: [{ name: 'count', table: 'holding', address: 5 }] }],
            },
          ],
        },
      }) as unknown as { serial: SerialConfig }
    ).serial
    adapter = new SerialAdapter(core, cfg)
    await adapter.start()
  })

  afterAll(async () => {
    await adapter?.stop()
    await slave?.stop()
    await pair?.stop().catch(() => undefined)
    await tmp?.dispose()
    core?.dispose()
  })

  it('hands each poll over as upload_data with the port and the unit as transport metadata', async () => {
    await until(() => core.uplinks.length > 0, 10_000, 'no reading')
    const up = core.uplinks[0]!
    expect(up.topic).toMatchObject({ kind: 'upload_data', ...device, name: 'counter' })
    expect(up.topic.messageId).toMatch(/^[0-9a-f]{24}$/)
    expect(up.transport).toBe('serial')
    expect(up.meta).toEqual({ port: pair.gateway, unitId: 9 })
    expect(JSON.parse(up.payload.toString('utf8'))).toEqual({ count: 1234 })
    expect(core.reachability).toContainEqual({ device, reachable: true })
  })

  it('counts a reading the core could not store, and keeps polling', async () => {
    core.failUplinks(new Error('disk full'))
    const before = core.uplinks.length
    await until(() => (adapter.ports[0]!.modbus[0]!.counters.polls ?? 0) > 0, 5_000, 'no polls')
    const polls = adapter.ports[0]!.modbus[0]!.counters.polls
    await until(() => adapter.ports[0]!.modbus[0]!.counters.polls >= polls + 2, 5_000, 'polling stopped')
    const metrics = await core.allMetrics.registry.metrics()
    expect(metrics).toMatch(/iothub_edge_contract_readings_refused_total\{port="seam",device="meters\/seam-1"\} [1-9]/)
    core.failUplinks(undefined)
    await until(() => core.uplinks.length > before, 5_000, 'no reading after the store recovered')
    // The device stayed reachable throughout: a full disk is not the device's fault.
    expect(core.reachability.filter((r) => !r.reachable)).toEqual([])
  })

  it('refuses to start with two paths to one device node (a by-id link and its ttyUSB name)', async () => {
    const alias = path.join(tmp.dir, 'by-id-alias')
    await symlink(pair.gateway, alias)
    const port = { protocol: 'modbus-rtu', devices: [{ unitId: 1, productId: 'meters', deviceId: 'twice', registers: [{ name: 'x', table: 'holding', address: 0 }] }] }
    const cfg = (
      parseConfig({
        serial: { ports: [{ ...port, name: 'a', path: pair.gateway }, { ...port, name: 'b', path: alias, devices: [{ ...port.devices[0]!, deviceId: 'twice-b' }] }] },
      }) as unknown as { serial: SerialConfig }
    ).serial
    const other = new ContractCore()
    try {
      await expect(new SerialAdapter(other, cfg).start()).rejects.toThrow(`serial.ports[1].path: ${alias} is the same device as serial.ports[0].path`)
    } finally {
      other.dispose()
    }
  })
})
