// Which child a LoRaWAN device becomes (issue 8, "Device mapping"): the explicit table first, then
// the auto-registration rule (DeviceId = devEui, ProductId fixed or from a ChirpStack name reduced to
// [A-Za-z0-9_-]), else refused. Also which codec, data types and commands apply to it: its own
// settings over its device profile's.
import type { DeviceRef } from '../../core/types.js'
import { deviceKey } from '../../core/types.js'
import type { LoraDevice } from './chirpstack-events.js'
import type { DeviceSettings, LorawanConfig, LorawanDeviceConfig } from './schema.js'

const DEV_EUI_ID = /^[0-9a-f]{16}$/

export interface Mapping {
  device: DeviceRef
  /** Tags the child is created with when it does not exist yet. */
  tags: string[]
}

/** A name reduced to what a ProductId may hold. */
export const reduceName = (s: string): string => s.replace(/[^A-Za-z0-9_-]/g, '').slice(0, 64)

/** `key_value` tags from ChirpStack's device tags, reduced to what a tag may hold. */
export const tagsFromChirpstack = (tags: Record<string, string>): string[] =>
  Object.entries(tags)
    .map(([k, v]) => `${k}_${v}`.replace(/[^A-Za-z0-9_.:-]/g, '_').slice(0, 64))
    .filter((t) => t.length > 0)

export class DeviceMap {
  private readonly byEui = new Map<string, LorawanDeviceConfig>()
  private readonly byKey = new Map<string, LorawanDeviceConfig>()

  constructor(private readonly cfg: LorawanConfig) {
    for (const d of cfg.devices) {
      this.byEui.set(d.devEui.toLowerCase(), d)
      this.byKey.set(deviceKey(d), d)
    }
  }

  get configured(): readonly LorawanDeviceConfig[] {
    return this.cfg.devices
  }

  /** The child for an event's device, or undefined when the device is refused. */
  map(d: LoraDevice): Mapping | undefined {
    const listed = this.byEui.get(d.devEui)
    if (listed) return { device: { productId: listed.productId, deviceId: listed.deviceId }, tags: listed.tags }
    const rule = this.cfg.autoRegister
    if (!rule) return undefined
    const productId =
      rule.productIdFrom === 'applicationName' ? reduceName(d.applicationName) : rule.productIdFrom === 'deviceProfileName' ? reduceName(d.deviceProfileName) : rule.productId
    if (!productId) return undefined
    return { device: { productId, deviceId: d.devEui }, tags: rule.tagsFromChirpstack ? tagsFromChirpstack(d.tags) : [] }
  }

  /**
   * Whether a child is one of this adapter's before it is heard from in this run: listed, or shaped
   * as the `fixed` rule makes them (its ProductId, DeviceId a lower-case devEui). With a ProductId
   * taken from ChirpStack's names any hex DeviceId of any product would match, including devices
   * of other adapters, so those children are claimed only once heard from (the adapter keeps them).
   */
  isOurs(device: DeviceRef): boolean {
    if (this.byKey.has(deviceKey(device))) return true
    const rule = this.cfg.autoRegister
    if (!rule || !DEV_EUI_ID.test(device.deviceId) || this.byEui.has(device.deviceId)) return false
    return rule.productIdFrom === 'fixed' && device.productId === rule.productId
  }

  /** Codec, data types, commands and shadow for a device: its own over its device profile's. */
  settings(device: DeviceRef, deviceProfileName: string | undefined): DeviceSettings {
    const profile = (deviceProfileName && this.cfg.deviceProfiles[deviceProfileName]) || {}
    const own = this.byKey.get(deviceKey(device)) ?? {}
    const pick = <K extends keyof DeviceSettings>(k: K): DeviceSettings[K] => (own as DeviceSettings)[k] ?? (profile as DeviceSettings)[k]
    return { codec: pick('codec'), dataTypes: pick('dataTypes'), commands: pick('commands'), shadow: pick('shadow') }
  }
}
