// What a native device may publish, and the topic a command reaches it on: the device half of
// PROTOCOL.md's "Broker-side rules", shared by every native transport (MQTT, CoAP, HTTP) so that a
// device gets the same answer whichever way it comes in. Pure: no transport, no state.
import { formatDownTopic, type UpTopic } from './hub-topics.js'
import type { Command, DeviceRef } from './types.js'

// Internal names a device may use (PROTOCOL.md "Internal data requests", "Shadow"); `$connection`
// is the gateway's own extension and never comes from a device.
const DEVICE_INTERNAL_DATA = new Set(['$shadow_updated', '$shadow_reported'])
const DEVICE_INTERNAL_GET = new Set(['$ntp', '$tags', '$shadow'])

/** May device `d` publish this (well-formed) up topic? PROTOCOL.md ACL, exactly. */
export function mayPublish(d: DeviceRef, t: UpTopic): boolean {
  // For m2m the parsed deviceId is the sender: `m2m/{p}/+/{d}/+`.
  if (t.productId !== d.productId || t.deviceId !== d.deviceId) return false
  if (t.kind === 'upload_data' && t.name!.startsWith('$')) return DEVICE_INTERNAL_DATA.has(t.name!)
  if (t.kind === 'get' && t.name!.startsWith('$')) return DEVICE_INTERNAL_GET.has(t.name!)
  return true
}

/** The topic a command travels on to a native device (PROTOCOL.md "Down"); a tag command on its tag's topic. */
export function commandTopic(cmd: Command): string {
  const d = cmd.device
  if (cmd.type === 'm2m') return formatDownTopic({ kind: 'm2m', productId: d.productId, deviceId: d.deviceId, senderDeviceId: cmd.senderDeviceId, messageId: cmd.requestId })
  const common = { productId: d.productId, name: cmd.name, encoding: cmd.encoding, requestId: cmd.requestId, expiresAt: cmd.expiresAt }
  if (cmd.via) return formatDownTopic({ kind: 'tags', tag: cmd.via.tag, ...common })
  return formatDownTopic({ kind: cmd.type, deviceId: d.deviceId, ...common })
}
