// Committed uplinks cross to the history's writer thread packed into one buffer per batch, which is
// moved (transferred), not copied. Packing on the main thread is a handful of byte writes per
// uplink, in the commit's turn: no object per uplink is kept until the next hand-over (a second of
// uplinks kept alive outlives the young generation, and promoting it costs the event loop more
// than the packing), and no structured clone of an object per uplink on either side. The writer
// thread unpacks into CompactUplinks (uplink-samples.ts) and does the rest.
//
// One uplink: flags (u8: 1 internal, 2 text follows, 4 meta follows), ts (f64 LE), the device key
// `{ProductId}/{DeviceId}` (u16 length + UTF-8), `what` (u16 length + UTF-8; 0xFFFF: none), then the
// payload bytes (u32 length) when flag 2, then the metadata as JSON (u32 length) when flag 4.
import type { Uplink, UplinkMeta } from '../core/types.js'
import type { CompactUplink } from './uplink-samples.js'

// Larger payloads are not read for leaves (a history is for values, not documents).
export const MAX_TEXT = 64 * 1024

const INTERNAL = 1
const TEXT = 2
const META = 4
const NONE = 0xffff
const FIRST_SIZE = 16 * 1024

/** What of an uplink the history reads: its series prefix (DataType, `status`) or a `$` event name; undefined when only metadata counts. */
export function whatOf(up: Uplink): string | undefined {
  const t = up.topic
  if (t.kind === 'upload_data') return t.name === '$connection' || !t.name?.startsWith('$') ? t.name : undefined
  if (t.kind === 'update_status') return 'status'
  if (t.kind === 'update_ota_status') return '$ota'
  return undefined
}

/** Uplinks packed one after the other into a buffer of its own (moved to the writer thread whole). */
export class UplinkPack {
  private buf = Buffer.allocUnsafeSlow(FIRST_SIZE)
  private at = 0
  /** Uplinks in the pack. */
  count = 0

  add(up: Uplink): void {
    const t = up.topic
    const what = whatOf(up)
    const text = what !== undefined && up.payload.length <= MAX_TEXT ? up.payload : undefined
    const meta = up.meta ? JSON.stringify(up.meta) : undefined
    // UTF-8 needs at most 3 bytes per UTF-16 unit.
    const most = 1 + 8 + 2 + 3 * (t.productId.length + 1 + t.deviceId.length) + 2 + 3 * (what?.length ?? 0) + 4 + (text?.length ?? 0) + 4 + 3 * (meta?.length ?? 0)
    this.room(most)
    const b = this.buf
    let at = this.at
    b[at++] = (up.transport === 'internal' ? INTERNAL : 0) | (text ? TEXT : 0) | (meta !== undefined ? META : 0)
    at = b.writeDoubleLE(up.receivedAt, at)
    // The device key, `{ProductId}/{DeviceId}`, written in place (no string made for it).
    const lenAt = at
    at += 2
    at += b.write(t.productId, at)
    b[at++] = 0x2f
    at += b.write(t.deviceId, at)
    b.writeUInt16LE(at - lenAt - 2, lenAt)
    if (what === undefined) at = b.writeUInt16LE(NONE, at)
    else {
      const n = b.write(what, at + 2)
      b.writeUInt16LE(n, at)
      at += 2 + n
    }
    if (text) {
      at = b.writeUInt32LE(text.length, at)
      at += text.copy(b, at)
    }
    if (meta !== undefined) {
      const n = b.write(meta, at + 4)
      b.writeUInt32LE(n, at)
      at += 4 + n
    }
    this.at = at
    this.count++
  }

  /** The packed bytes, in a buffer of their own (its ArrayBuffer may be transferred). */
  bytes(): Uint8Array {
    return new Uint8Array(this.buf.buffer, this.buf.byteOffset, this.at)
  }

  private room(n: number): void {
    if (this.at + n <= this.buf.length) return
    const bigger = Buffer.allocUnsafeSlow(Math.max(this.buf.length * 2, this.at + n))
    this.buf.copy(bigger, 0, 0, this.at)
    this.buf = bigger
  }
}

/** On the writer thread: the uplinks of a pack, in order. */
export function unpack(bytes: Uint8Array): CompactUplink[] {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const out: CompactUplink[] = []
  let at = 0
  while (at < b.length) {
    const flags = b[at++]
    const ts = b.readDoubleLE(at)
    at += 8
    const deviceLen = b.readUInt16LE(at)
    const device = b.toString('utf8', at + 2, at + 2 + deviceLen)
    at += 2 + deviceLen
    const whatLen = b.readUInt16LE(at)
    at += 2
    let what: string | undefined
    if (whatLen !== NONE) {
      what = b.toString('utf8', at, at + whatLen)
      at += whatLen
    }
    const c: CompactUplink = { device, what, ts }
    if (flags & TEXT) {
      const n = b.readUInt32LE(at)
      c.text = b.toString('utf8', at + 4, at + 4 + n)
      at += 4 + n
    }
    if (flags & META) {
      const n = b.readUInt32LE(at)
      c.meta = JSON.parse(b.toString('utf8', at + 4, at + 4 + n)) as UplinkMeta
      at += 4 + n
    }
    if (flags & INTERNAL) c.internal = true
    out.push(c)
  }
  return out
}
