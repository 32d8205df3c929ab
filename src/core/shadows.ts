// Shadows (PROTOCOL.md "Shadow"). The gateway keeps a durable copy of every child's shadow, updated
// from each `$update_shadow`/`$shadow_reply` it relays and each `$shadow_updated`/`$shadow_reported`
// it forwards, so it can answer `$shadow` while the hub is unreachable. For mapped devices (no SDK
// of their own) it plays the SDK's part: applies desired state through the owning adapter, answers
// `$shadow_updated` with the version, reports `$shadow_reported` when the device's state changes,
// and adopts versions from `$shadow_reply`.
import { randomBytes } from 'node:crypto'
import type { Logger } from './log.js'
import type { Command, DeliveryResult, DeviceRef, Uplink } from './types.js'
import { deviceKey } from './types.js'
import type { ShadowStore } from '../store/shadows.js'
import { emptyShadow } from '../store/shadows.js'
import { applyDesired, applyReported, isShadowDoc, parseJsonObject, type JsonObject, type ShadowDoc } from './shadow-doc.js'
import { newMessageId } from './message-id.js'
import type { CommandRouter } from './command-router.js'
import type { StoredCommand } from '../store/commands.js'

/** The internal command name a mapped adapter receives to apply desired state: payload `{desired, version}`. */
export const APPLY_DESIRED = '$update_shadow'

export interface ShadowDeps {
  store: ShadowStore
  router: CommandRouter
  isMapped: (d: DeviceRef) => boolean
  uplink: (up: Uplink) => Promise<void>
  /** Hand an answer to the device now, through its adapter (never queued). */
  deliverNow: (cmd: Command) => Promise<DeliveryResult>
  log: Logger
}

export class ShadowService {
  constructor(private readonly d: ShadowDeps) {
    d.router.on('delivered', (sc: StoredCommand) => this.onDelivered(sc))
  }

  get(device: DeviceRef): ShadowDoc {
    return this.d.store.get(deviceKey(device)) ?? emptyShadow()
  }

  private put(device: DeviceRef, doc: ShadowDoc): void {
    this.d.store.put(deviceKey(device), doc)
  }

  /** `$update_shadow` from the hub on its way to a device (the whole document). */
  onUpdateShadow(device: DeviceRef, payload: Buffer): void {
    const doc: unknown = parseJsonObject(payload)
    if (!isShadowDoc(doc)) return
    const held = this.get(device)
    // The SDK ignores a document older than the version it holds.
    if (doc.version < held.version) return
    this.put(device, doc)
    if (!this.d.isMapped(device)) return
    const desired = doc.state.desired
    if (desired && Object.keys(desired).length > 0) {
      // Apply through the owning adapter; `$shadow_updated` follows once it is delivered.
      this.d.router.enqueueCopy(
        {
          type: 'cmd',
          device,
          name: APPLY_DESIRED,
          encoding: 'plain',
          requestId: randomBytes(12).toString('hex'),
          payload: Buffer.from(JSON.stringify({ desired, version: doc.version })),
        },
        'local',
      )
    }
  }

  private onDelivered(sc: StoredCommand): void {
    const cmd: Command = sc.command
    if (cmd.name !== APPLY_DESIRED || sc.origin !== 'local' || !this.d.isMapped(cmd.device)) return
    const version = (parseJsonObject(cmd.payload)?.version as number | undefined) ?? this.get(cmd.device).version
    void this.upload(cmd.device, '$shadow_updated', { state: { desired: null }, version })
  }

  /** `$shadow_reply` from the hub: adopt the version if it is greater than ours. */
  onShadowReply(device: DeviceRef, payload: Buffer): void {
    const version = parseJsonObject(payload)?.version
    if (typeof version !== 'number') return
    const held = this.get(device)
    if (version > held.version) this.put(device, { ...held, version })
  }

  /** A native device's `$shadow_updated`/`$shadow_reported` on its way north: track it as the hub will. */
  onDeviceUpload(device: DeviceRef, dataType: string, payload: Buffer): void {
    const body = parseJsonObject(payload)
    const held = this.get(device)
    if (!body || body.version !== held.version) return // the hub will answer with `$update_shadow`
    const ts = Math.floor(Date.now() / 1000)
    if (dataType === '$shadow_updated') this.put(device, applyDesired(held, ts))
    else {
      const reported = (body.state as { reported?: JsonObject } | undefined)?.reported
      if (reported) this.put(device, applyReported(held, reported, ts))
    }
  }

  /** A mapped device's own state changed: report it as the SDK would. */
  async reportState(device: DeviceRef, reported: JsonObject): Promise<void> {
    await this.upload(device, '$shadow_reported', { state: { reported }, version: this.get(device).version })
  }

  /** Answer a `$shadow` request from the copy (when the hub is unreachable). */
  async answerLocally(device: DeviceRef): Promise<void> {
    await this.d.deliverNow({
      type: 'cmd',
      device,
      name: '$update_shadow',
      encoding: 'plain',
      requestId: randomBytes(12).toString('hex'),
      payload: Buffer.from(JSON.stringify(this.get(device))),
      qos: 0,
    })
  }

  // What the gateway uploads on a mapped device's behalf updates the copy exactly as a native
  // device's upload does on its way north.
  private upload(device: DeviceRef, dataType: '$shadow_updated' | '$shadow_reported', body: unknown): Promise<void> {
    const payload = Buffer.from(JSON.stringify(body))
    this.onDeviceUpload(device, dataType, payload)
    return this.d
      .uplink({
        topic: { kind: 'upload_data', productId: device.productId, deviceId: device.deviceId, name: dataType, messageId: newMessageId() },
        payload,
        transport: 'internal',
        receivedAt: Date.now(),
      })
      .catch((err: Error) => this.d.log.warn({ err: err.message, device: deviceKey(device) }, `could not queue ${dataType}`))
  }
}
