// A device's register map turned into wire work: the fewest read requests that cover it (contiguous
// addresses of one table merged, up to the protocol's maximum per request), raw words decoded into
// engineering units (value = raw x scale + offset), and values encoded back for writes
// (raw = round((value - offset) / scale)).
import { MAX_READ, type Table } from './modbus-frame.js'
import { registerType, type RegisterConfig } from './schema.js'

/** How many table entries (registers or bits) a value of this type spans. */
export function widthOf(r: RegisterConfig): number {
  const t = registerType(r)
  return t === 'int32' || t === 'uint32' || t === 'float32' ? 2 : 1
}

/** One read request and the registers it serves. */
export interface ReadBlock {
  table: Table
  address: number
  count: number
  registers: RegisterConfig[]
}

/** Merge registers of one table whose spans touch or overlap into blocks no larger than a request may ask. */
export function planReads(registers: readonly RegisterConfig[]): ReadBlock[] {
  const blocks: ReadBlock[] = []
  const byTable = new Map<Table, RegisterConfig[]>()
  for (const r of registers) byTable.set(r.table, [...(byTable.get(r.table) ?? []), r])
  for (const [table, regs] of byTable) {
    regs.sort((a, b) => a.address - b.address)
    let cur: ReadBlock | undefined
    for (const r of regs) {
      const end = r.address + widthOf(r)
      if (cur && r.address <= cur.address + cur.count && end - cur.address <= MAX_READ[table]) {
        cur.count = Math.max(cur.count, end - cur.address)
        cur.registers.push(r)
      } else {
        cur = { table, address: r.address, count: end - r.address, registers: [r] }
        blocks.push(cur)
      }
    }
  }
  return blocks
}

/** The two words of a 32-bit value in wire order -> one 32-bit buffer, high word first. */
function words32(hiLo: [number, number], order: RegisterConfig['wordOrder']): Buffer {
  const [a, b] = hiLo
  const buf = Buffer.alloc(4)
  buf.writeUInt16BE(order === 'big' ? a : b, 0)
  buf.writeUInt16BE(order === 'big' ? b : a, 2)
  return buf
}

/** Decode one register's value (engineering units) from its block's words or bits. */
export function decode(r: RegisterConfig, block: ReadBlock, words: readonly number[] | null, bits: readonly boolean[] | null): number | boolean {
  const i = r.address - block.address
  const t = registerType(r)
  if (t === 'bool') return bits ? bits[i]! : words![i]! !== 0
  let raw: number
  if (t === 'int16') raw = (words![i]! << 16) >> 16
  else if (t === 'uint16') raw = words![i]!
  else {
    const buf = words32([words![i]!, words![i + 1]!], r.wordOrder)
    raw = t === 'int32' ? buf.readInt32BE(0) : t === 'uint32' ? buf.readUInt32BE(0) : buf.readFloatBE(0)
  }
  const v = raw * r.scale + r.offset
  // Keep float noise from scaling (0.1 x 2305 = 230.50000000000003) out of the readings.
  return t === 'float32' && r.scale === 1 && r.offset === 0 ? Number(v.toPrecision(7)) : Number(v.toPrecision(12))
}

/** What a write of `value` sends: bits for coils, words for registers. Throws a message for the command's reason. */
export function encode(r: RegisterConfig, value: unknown): { bits: boolean[] } | { words: number[] } {
  const t = registerType(r)
  if (t === 'bool') {
    if (typeof value === 'boolean') return { bits: [value] }
    if (value === 0 || value === 1) return { bits: [value === 1] }
    throw new Error(`${r.name} takes true or false, got ${JSON.stringify(value)}`)
  }
  if (typeof value !== 'number' || !Number.isFinite(value)) throw new Error(`${r.name} takes a number, got ${JSON.stringify(value)}`)
  const scaled = (value - r.offset) / r.scale
  if (t === 'float32') {
    const buf = Buffer.alloc(4)
    buf.writeFloatBE(scaled, 0)
    const hi = buf.readUInt16BE(0)
    const lo = buf.readUInt16BE(2)
    return { words: r.wordOrder === 'big' ? [hi, lo] : [lo, hi] }
  }
  const raw = Math.round(scaled)
  const [min, max] = t === 'int16' ? [-0x8000, 0x7fff] : t === 'uint16' ? [0, 0xffff] : t === 'int32' ? [-0x80000000, 0x7fffffff] : [0, 0xffffffff]
  if (raw < min || raw > max) throw new Error(`${r.name}: ${value} is out of range for ${t} (raw ${raw})`)
  if (t === 'int16' || t === 'uint16') return { words: [raw & 0xffff] }
  const buf = Buffer.alloc(4)
  if (t === 'int32') buf.writeInt32BE(raw, 0)
  else buf.writeUInt32BE(raw, 0)
  const hi = buf.readUInt16BE(0)
  const lo = buf.readUInt16BE(2)
  return { words: r.wordOrder === 'big' ? [hi, lo] : [lo, hi] }
}
