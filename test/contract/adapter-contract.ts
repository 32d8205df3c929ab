// The southbound adapter contract (STYLE.md: "one small interface per plug point, and a contract
// test suite that every implementation runs"). Each adapter supplies a harness that plays one of
// its devices over the adapter's real transport; the suite checks what the core relies on.
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import type { Command, DeviceRef, SouthboundAdapter, Uplink } from '../../src/core/types.js'
import type { ContractCore } from './contract-core.js'

export interface SimDevice {
  /** Send one up message the device's way; resolves 'acked' when the transport acknowledged it, 'not_acked' otherwise. */
  sendTelemetry(dataType: string, messageId: string, payload: Buffer): Promise<'acked' | 'not_acked'>
  /** The next command the device receives, as (name, requestId, payload). */
  nextCommand(timeoutMs: number): Promise<{ name: string; requestId: string; payload: Buffer }>
  close(): Promise<void>
}

export interface AdapterHarness {
  adapter: SouthboundAdapter
  core: ContractCore
  /** A device this adapter can serve, already known to the registry. */
  device: DeviceRef
  /** Bring the device online through the adapter (connect, join, first poll...). */
  attach(): Promise<SimDevice>
  dispose(): Promise<void>
}

export function adapterContract(name: string, makeHarness: () => Promise<AdapterHarness>): void {
  describe(`southbound adapter contract: ${name}`, () => {
    let h: AdapterHarness
    beforeEach(async () => {
      h = await makeHarness()
      await h.adapter.start()
    })
    afterEach(async () => {
      await h.adapter.stop()
      await h.dispose()
    })

    it('has a name and stops idempotently', async () => {
      expect(h.adapter.name).toMatch(/^[a-z][a-z0-9-]*$/)
      await h.adapter.stop()
      await h.adapter.stop()
    })

    it('does not own a device that never came online, and reports a delivery to it as offline', async () => {
      expect(h.adapter.owns(h.device)).toBe(false)
      const cmd: Command = { type: 'cmd', device: h.device, name: 'reboot', encoding: 'plain', requestId: 'r-offline', payload: Buffer.from('{}') }
      await expect(h.adapter.deliver(cmd)).resolves.toBe('offline')
    })

    it('hands an uplink to the core as the gateway type, with the MessageId kept', async () => {
      const sim = await h.attach()
      try {
        const mid = '65a1b2c3d4e5f60718293a4b'
        await expect(sim.sendTelemetry('temperature', mid, Buffer.from('{"t":21.5}'))).resolves.toBe('acked')
        const up: Uplink | undefined = h.core.uplinks.find((u) => u.topic.messageId === mid)
        expect(up).toBeDefined()
        expect(up!.topic).toMatchObject({ kind: 'upload_data', productId: h.device.productId, deviceId: h.device.deviceId, name: 'temperature' })
        expect(up!.payload.toString()).toBe('{"t":21.5}')
      } finally {
        await sim.close()
      }
    })

    it('acknowledges the device only after the core made the message durable', async () => {
      const sim = await h.attach()
      try {
        h.core.holdUplinks()
        const acked = sim.sendTelemetry('t', '65a1b2c3d4e5f60718293a4c', Buffer.from('1'))
        let settled = false
        void acked.then(() => (settled = true))
        await h.core.waitForHeld(1, 5_000)
        await new Promise((r) => setTimeout(r, 300))
        expect(settled).toBe(false)
        h.core.releaseUplinks()
        await expect(acked).resolves.toBe('acked')
      } finally {
        await sim.close()
      }
    })

    it('does not acknowledge a message the core could not make durable', async () => {
      const sim = await h.attach()
      try {
        h.core.failUplinks(new Error('disk full'))
        await expect(sim.sendTelemetry('t', '65a1b2c3d4e5f60718293a4d', Buffer.from('1'))).resolves.toBe('not_acked')
      } finally {
        h.core.failUplinks(undefined)
        await sim.close()
      }
    })

    it('owns an online device and delivers a command to it', async () => {
      const sim = await h.attach()
      try {
        expect(h.adapter.owns(h.device)).toBe(true)
        const got = sim.nextCommand(5_000)
        const cmd: Command = { type: 'cmd', device: h.device, name: 'set_interval', encoding: 'plain', requestId: 'req-42', payload: Buffer.from('{"s":30}') }
        await expect(h.adapter.deliver(cmd)).resolves.toBe('delivered')
        await expect(got).resolves.toMatchObject({ name: 'set_interval', requestId: 'req-42' })
        expect((await got).payload.toString()).toBe('{"s":30}')
      } finally {
        await sim.close()
      }
    })
  })
}
