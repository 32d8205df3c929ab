// A USB-serial adapter pulled while the gateway is writing to it (issue 14, the replug test that
// failed in CI). Real peers: a socat pty pair is the cable and its far end is held open by a
// sensor; the port is the gateway's own PortLink on the real serialport binding. Writes go out one
// after another, so the unplug lands in the middle of one (or between a write and its drain) again and
// again; after each replug a write must get through, and no write may hang. (A write issued while
// serialport was closing the old port used to wait forever for that port to open again, and a
// Modbus master waiting on it never polled again: the replug test's failure in CI.)
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { parseConfig } from '../../src/config.js'
import { createLogger } from '../../src/core/log.js'
import { PortLink } from '../../src/southbound/serial/port-link.js'
import type { PortConfig } from '../../src/southbound/serial/schema.js'
import { PtyPair, Sensor, serialTempDir, until } from '../helpers/serial-peers.js'

// Before the fix, one of 30 cycles was enough to leave a write hanging on every run.
const CYCLES = 30

describe('a serial port unplugged in the middle of writes', () => {
  let tmp: { dir: string; dispose: () => Promise<void> }
  let pair: PtyPair
  let link: PortLink
  let sensor: Sensor | undefined

  beforeAll(async () => {
    tmp = await serialTempDir('serial-replug-')
    pair = new PtyPair(path.join(tmp.dir, 'gw'), path.join(tmp.dir, 'dev'))
    await pair.start()
    sensor = await Sensor.open(pair.device)
    const cfg = parseConfig({
      serial: { ports: [{ name: 'line1', path: pair.gateway, protocol: 'lines', format: 'kv', deviceId: 'k1', productId: 'bench', reopenMinMs: 50, reopenMaxMs: 200 }] },
    }) as unknown as { serial: { ports: PortConfig[] } }
    link = new PortLink(cfg.serial.ports[0]!, createLogger({ level: 'silent' }))
    link.start()
    await until(() => link.isOpen, 10_000, 'the port did not open')
  })

  afterAll(async () => {
    await link?.stop()
    await sensor?.close()
    await pair?.stop().catch(() => undefined)
    await tmp?.dispose()
  })

  it('gets writes through again after every replug, and never leaves a write hanging', async () => {
    let running = true
    let done = 0
    let inFlightSince: number | null = null
    const writer = (async () => {
      while (running) {
        inFlightSince = Date.now()
        try {
          await link.write(Buffer.from('PING\n'))
          done++
          // Irregular gaps, as between a Modbus master's requests: the unplug is then found by the
          // read side first as often as by a failing write.
          await sleep(Math.random() * 5)
        } catch {
          await sleep(2) // not open: try again soon, as the Modbus master's next request would
        } finally {
          inFlightSince = null
        }
      }
    })()
    try {
      for (let cycle = 0; cycle < CYCLES; cycle++) {
        const lost = link.counters.lost
        await sensor!.close()
        await pair.stop()
        await until(() => link.counters.lost > lost, 10_000, `cycle ${cycle}: the unplug was not noticed`)
        await pair.start()
        sensor = await Sensor.open(pair.device)
        const before = done
        // A write stuck on the old, closed port would hold the writer (and a Modbus bus) forever.
        await until(() => done > before, 10_000, () => `cycle ${cycle}: no write got through after the replug (a write pending for ${inFlightSince === null ? '-' : Date.now() - inFlightSince} ms, port ${link.state}, ${link.lastError}, ${JSON.stringify(link.counters)})`)
      }
    } finally {
      running = false
      await Promise.race([writer, sleep(5_000)])
    }
    expect(inFlightSince).toBeNull()
    expect(link.counters.opens).toBe(CYCLES + 1)
  })
})
