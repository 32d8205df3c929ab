// The southbound adapter contract (STYLE.md: "one small interface per plug point, and a contract
// test suite that every implementation runs"). Each adapter supplies a harness that plays one of
// its devices over the adapter's real transport; the suite checks what the core relies on, with
// the part that differs by kind (docs/contributors/adapters.md, "Two kinds of device"):
// - native: owns a device while the device holds a connection, and reports its session;
// - mapped: owns every device it maps, reachable or not (deliveries to an unreachable one are
//   'offline' and the core keeps them), and reports the device reachable when it comes back.
import { afterEach, beforeEach, describe, expect, it } from 'vitest'
import type { Command, DeviceRef, SouthboundAdapter, Uplink } from '../../src/core/types.js'
import { deviceKey } from '../../src/core/types.js'
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
  /** A device this adapter does not serve (not connected, not in its configuration). */
  stranger: DeviceRef
  /**
   * For transports whose devices carry no MessageId of their own (LoRaWAN: ChirpStack's
   * deduplicationId instead), the MessageId the adapter fixes for the device's message sent with
   * `sendTelemetry(.., id, ..)`: the same whenever that message comes again. Default: `id` itself.
   */
  messageIdFor?(id: string): string
  /** Bring the device online through the adapter (connect, first answer on its bus, an uplink...); close() takes it away. */
  attach(): Promise<SimDevice>
  dispose(): Promise<void>
}

async function waitUntil(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() > until) throw new Error(what)
    await new Promise((r) => setTimeout(r, 10))
  }
}

export function adapterContract(name: string, kind: 'native' | 'mapped', makeHarness: () => Promise<AdapterHarness>): void {
  describe(`southbound adapter contract (${kind}): ${name}`, () => {
    let h: AdapterHarness
    beforeEach(async () => {
      h = await makeHarness()
      await h.adapter.start()
    })
    afterEach(async () => {
      await h.adapter.stop()
      await h.dispose()
    })

    it('has a name, is of its kind, and stops idempotently', async () => {
      expect(h.adapter.name).toMatch(/^[a-z][a-z0-9-]*$/)
      expect(h.adapter.kind).toBe(kind)
      await h.adapter.stop()
      await h.adapter.stop()
    })

    it('does not own a device it does not serve, and reports a delivery to it as offline', async () => {
      expect(h.adapter.owns(h.stranger)).toBe(false)
      const cmd: Command = { type: 'cmd', device: h.stranger, name: 'reboot', encoding: 'plain', requestId: 'r-stranger', payload: Buffer.from('{}') }
      await expect(h.adapter.deliver(cmd)).resolves.toBe('offline')
    })

    if (kind === 'native') {
      it('native: owns a device from its connection until it leaves, and reports the session', async () => {
        expect(h.adapter.owns(h.device)).toBe(false)
        const offline: Command = { type: 'cmd', device: h.device, name: 'reboot', encoding: 'plain', requestId: 'r-offline', payload: Buffer.from('{}') }
        await expect(h.adapter.deliver(offline)).resolves.toBe('offline')
        const sim = await h.attach()
        expect(h.adapter.owns(h.device)).toBe(true)
        await waitUntil(() => h.core.sessions.opened.some((s) => deviceKey(s.device) === deviceKey(h.device)), 5_000, 'no session opened')
        await sim.close()
        await waitUntil(() => !h.adapter.owns(h.device), 5_000, 'still owned after the device left')
        await waitUntil(() => h.core.sessions.closed.some((s) => deviceKey(s.device) === deviceKey(h.device)), 5_000, 'no session closed')
        await expect(h.adapter.deliver({ ...offline, requestId: 'r-gone' })).resolves.toBe('offline')
      })
    } else {
      it('mapped: owns a device it maps while it cannot be reached, answers offline, and reports it reachable when it is back', async () => {
        expect(h.adapter.owns(h.device)).toBe(true)
        const cmd: Command = { type: 'cmd', device: h.device, name: 'set_interval', encoding: 'plain', requestId: 'r-away', payload: Buffer.from('{"s":60}') }
        await expect(h.adapter.deliver(cmd)).resolves.toBe('offline')
        const sim = await h.attach()
        try {
          await waitUntil(() => h.core.reachability.some((r) => r.reachable && deviceKey(r.device) === deviceKey(h.device)), 5_000, 'not reported reachable')
          const got = sim.nextCommand(5_000)
          await expect(h.adapter.deliver(cmd)).resolves.toBe('delivered')
          await expect(got).resolves.toMatchObject({ name: 'set_interval', requestId: 'r-away' })
        } finally {
          await sim.close()
        }
        await waitUntil(() => h.core.reachability.some((r) => !r.reachable && deviceKey(r.device) === deviceKey(h.device)), 5_000, 'not reported away')
        expect(h.adapter.owns(h.device)).toBe(true)
      })
    }

    it('hands an uplink to the core as the gateway type, with the MessageId kept', async () => {
      const sim = await h.attach()
      try {
        const mid = '65a1b2c3d4e5f60718293a4b'
        await expect(sim.sendTelemetry('temperature', mid, Buffer.from('{"t":21.5}'))).resolves.toBe('acked')
        const expected = h.messageIdFor?.(mid) ?? mid
        const up: Uplink | undefined = h.core.uplinks.find((u) => u.topic.messageId === expected)
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
