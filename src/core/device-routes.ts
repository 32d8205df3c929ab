// Which adapter is the route to a device, and the one way down: everything the core sends to a
// device (queued commands through the router, and the answers it gives at once: `$set_ntp`,
// `$set_tags`/`$update_shadow` from its copies, QoS 0 internals from the hub) goes through the
// owning adapter's `deliver()`. No part of the core publishes on a transport itself.
import type { Logger } from './log.js'
import type { Command, DeliveryResult, DeviceRef, SouthboundAdapter } from './types.js'
import { deviceKey } from './types.js'

export class DeviceRoutes {
  private adapters: SouthboundAdapter[] = []

  constructor(private readonly log: Logger) {}

  /** An adapter that started: from now on it may own devices. */
  add(adapter: SouthboundAdapter): void {
    this.adapters.push(adapter)
  }

  remove(adapter: SouthboundAdapter): void {
    this.adapters = this.adapters.filter((a) => a !== adapter)
  }

  list(): readonly SouthboundAdapter[] {
    return this.adapters
  }

  owner(device: DeviceRef): SouthboundAdapter | undefined {
    for (const a of this.adapters) if (a.owns(device)) return a
    return undefined
  }

  /** The gateway plays the SDK's part for this device (an adapter of kind 'mapped' owns it). */
  isMapped(device: DeviceRef): boolean {
    return this.adapters.some((a) => a.kind === 'mapped' && a.owns(device))
  }

  /** A native device with a live connection (it speaks the protocol itself). */
  isNativeOnline(device: DeviceRef): boolean {
    return this.owner(device)?.kind === 'native'
  }

  /**
   * Hand a command to the device's adapter now, outside the durable queue (answers and QoS 0
   * internals: worthless late, so never queued). 'offline' when no adapter can take it.
   */
  async deliverNow(cmd: Command): Promise<DeliveryResult> {
    const adapter = this.owner(cmd.device)
    if (!adapter) return 'offline'
    try {
      return await adapter.deliver(cmd)
    } catch (err) {
      this.log.warn({ err: (err as Error).message, adapter: adapter.name, device: deviceKey(cmd.device), command: cmd.name }, 'adapter failed to deliver')
      return 'offline'
    }
  }
}
