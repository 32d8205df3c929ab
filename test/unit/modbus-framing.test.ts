// Modbus RTU framing and the bus master. The pure parts against the spec's own numbers; the master
// over a real pty pair (socat) whose far end a test script drives byte by byte, to produce what a
// pymodbus slave never sends: corrupt CRCs, line noise before an answer, an answer from the wrong unit.
import path from 'node:path'
import pino from 'pino'
import { SerialPort } from 'serialport'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { checkAnswer, crc16, readRequest, writeCoilsRequest, writeRegistersRequest } from '../../src/southbound/serial/modbus-frame.js'
import { ModbusMaster, type AttemptEvent } from '../../src/southbound/serial/modbus-master.js'
import { PortLink } from '../../src/southbound/serial/port-link.js'
import { decode, encode, planReads } from '../../src/southbound/serial/register-map.js'
import type { PortConfig, RegisterConfig } from '../../src/southbound/serial/schema.js'
import { PtyPair, serialTempDir } from '../helpers/serial-peers.js'

const reg = (r: Partial<RegisterConfig> & Pick<RegisterConfig, 'name' | 'table' | 'address'>): RegisterConfig => ({ wordOrder: 'big', scale: 1, offset: 0, writable: false, ...r })

/** An answer frame with its CRC (or a wrong one). */
function frame(bytes: number[], corrupt = false): Buffer {
  const b = Buffer.alloc(bytes.length + 2)
  Buffer.from(bytes).copy(b)
  b.writeUInt16LE(crc16(b, bytes.length) ^ (corrupt ? 0x0101 : 0), bytes.length)
  return b
}

describe('Modbus RTU frames', () => {
  it('computes the CRC of the spec\'s example and sends it low byte first', () => {
    // MODBUS over Serial Line V1.02, 6.2.2: read 10 holding registers from 0 of unit 1 -> C5 CD.
    expect(readRequest(1, 'holding', 0, 10).frame.toString('hex')).toBe('01030000000ac5cd')
  })

  it('builds fc 5, 6, 15 and 16 writes', () => {
    expect(writeCoilsRequest(1, 0xac, [true]).frame.subarray(0, 6).toString('hex')).toBe('010500acff00')
    expect(writeRegistersRequest(1, 1, [3]).frame.subarray(0, 6).toString('hex')).toBe('010600010003')
    expect(writeRegistersRequest(1, 1, [0x000a, 0x0102]).frame.subarray(0, 11).toString('hex')).toBe('0110000100020400 0a0102'.replace(/ /g, ''))
    // 10 coils from 19: 1,0,1,1,0,0,1,1 | 1,0 -> CD 01 (Application Protocol 6.11)
    const bits = [1, 0, 1, 1, 0, 0, 1, 1, 1, 0].map((b) => b === 1)
    expect(writeCoilsRequest(1, 19, bits).frame.subarray(0, 9).toString('hex')).toBe('010f0013000a02cd01')
  })

  it('decodes exceptions, and refuses corrupt answers and answers from another unit', () => {
    const req = readRequest(1, 'holding', 0, 1)
    expect(checkAnswer(req, frame([1, 0x83, 2]))).toEqual({ kind: 'exception', code: 2, message: 'illegal data address' })
    expect(checkAnswer(req, frame([1, 0x83, 6]))).toMatchObject({ kind: 'exception', code: 6, message: 'slave device busy' })
    expect(checkAnswer(req, frame([1, 3, 2, 0, 7], true))).toEqual({ kind: 'crc' })
    expect(checkAnswer(req, frame([2, 3, 2, 0, 7]))).toMatchObject({ kind: 'mismatch' })
  })
})

describe('register maps', () => {
  it('reads contiguous registers of one table in one request, and no more than a request may carry', () => {
    const blocks = planReads([
      reg({ name: 'a', table: 'holding', address: 0, type: 'float32' }),
      reg({ name: 'b', table: 'holding', address: 2 }),
      reg({ name: 'c', table: 'holding', address: 10 }),
      reg({ name: 'd', table: 'input', address: 3 }),
      reg({ name: 'e', table: 'holding', address: 11, type: 'int32' }),
      reg({ name: 'f', table: 'holding', address: 130 }),
      reg({ name: 'g', table: 'holding', address: 13 }),
    ])
    expect(blocks.map((b) => [b.table, b.address, b.count, b.registers.map((r) => r.name).join('')])).toEqual([
      ['holding', 0, 3, 'ab'],
      ['holding', 10, 4, 'ceg'],
      ['holding', 130, 1, 'f'],
      ['input', 3, 1, 'd'],
    ])
    const long = planReads(Array.from({ length: 130 }, (_, i) => reg({ name: `r${i}`, table: 'input', address: i })))
    expect(long.map((b) => b.count)).toEqual([125, 5])
  })

  it('decodes and encodes every type in both word orders with scale and offset', () => {
    const block = { table: 'holding' as const, address: 0, count: 4, registers: [] }
    const f = Buffer.alloc(4)
    f.writeFloatBE(-12.5)
    const [hi, lo] = [f.readUInt16BE(0), f.readUInt16BE(2)]
    expect(decode(reg({ name: 'x', table: 'holding', address: 0, type: 'float32' }), block, [hi, lo, 0, 0], null)).toBe(-12.5)
    expect(decode(reg({ name: 'x', table: 'holding', address: 0, type: 'float32', wordOrder: 'little' }), block, [lo, hi, 0, 0], null)).toBe(-12.5)
    expect(decode(reg({ name: 'x', table: 'holding', address: 1, type: 'int32', scale: 0.001 }), block, [0, 0xffff, 0xfc18, 0], null)).toBe(-1)
    expect(decode(reg({ name: 'x', table: 'holding', address: 0, type: 'int16', scale: 2, offset: -40 }), block, [0xffff], null)).toBe(-42)
    const t = reg({ name: 't', table: 'holding', address: 0, type: 'int32', wordOrder: 'little', scale: 0.1 })
    expect(encode(t, -1.5)).toEqual({ words: [0xfff1, 0xffff] })
    expect(encode(reg({ name: 'u', table: 'holding', address: 0, offset: 10 }), 12)).toEqual({ words: [2] })
    expect(() => encode(reg({ name: 'u', table: 'holding', address: 0 }), 70000)).toThrow(/out of range for uint16/)
    expect(() => encode(reg({ name: 'c', table: 'coil', address: 0, type: 'bool' }), 'on')).toThrow(/takes true or false/)
  })
})

describe('the bus master over a real pty', () => {
  let tmp: { dir: string; dispose: () => Promise<void> }
  let pair: PtyPair
  let link: PortLink
  let far: SerialPort
  let master: ModbusMaster
  const events: AttemptEvent[] = []
  // What the scripted slave answers to each request it gets, in order.
  let script: Buffer[][] = []
  const requests: Buffer[] = []

  beforeAll(async () => {
    tmp = await serialTempDir('modbus-framing-')
    pair = new PtyPair(path.join(tmp.dir, 'gw'), path.join(tmp.dir, 'dev'))
    await pair.start()
    far = new SerialPort({ path: pair.device, baudRate: 19200, autoOpen: false })
    await new Promise<void>((resolve, reject) => far.open((err) => (err ? reject(err) : resolve())))
    let pending = Buffer.alloc(0)
    far.on('data', (chunk: Buffer) => {
      // Requests are 8 bytes here (reads and single writes), however the pty splits them.
      pending = Buffer.concat([pending, chunk])
      while (pending.length >= 8) {
        requests.push(pending.subarray(0, 8))
        pending = pending.subarray(8)
        const answer = script.shift() ?? []
        for (const part of answer) far.write(part)
      }
    })
    const cfg = { name: 't', path: pair.gateway, baudRate: 19200, dataBits: 8, parity: 'none', stopBits: 1, reopenMinMs: 100, reopenMaxMs: 200 } as PortConfig
    link = new PortLink(cfg, pino({ level: 'silent' }))
    const opened = new Promise<void>((resolve) => link.once('open', resolve))
    link.start()
    await opened
    master = new ModbusMaster(link, { timeoutMs: 600, retries: 2, baudRate: 19200, onAttempt: (_u, e) => events.push(e) })
  })

  afterAll(async () => {
    master?.close()
    await link?.stop()
    if (far?.isOpen) await new Promise<void>((resolve) => far.close(() => resolve()))
    await pair?.stop()
    await tmp?.dispose()
  })

  it('counts a corrupt answer and retries until a good one arrives', async () => {
    events.length = 0
    script = [[frame([1, 3, 2, 0x12, 0x34], true)], [frame([1, 3, 2, 0x12, 0x34])]]
    const out = await master.transact(readRequest(1, 'holding', 7, 1))
    expect(out).toMatchObject({ kind: 'ok' })
    expect(events).toEqual(['crc', 'answer'])
  })

  it('skips noise before an answer and assembles an answer that arrives in pieces', async () => {
    events.length = 0
    const good = frame([1, 4, 4, 0, 1, 0, 2])
    script = [[Buffer.from([0x00, 0xff]), good.subarray(0, 3), good.subarray(3)]]
    const out = await master.transact(readRequest(1, 'input', 0, 2))
    expect(out.kind === 'ok' && out.frame.toString('hex')).toBe(good.toString('hex'))
  })

  it('gives up after its retries when only corrupt answers or silence come, saying which', async () => {
    events.length = 0
    script = [[frame([1, 3, 2, 0, 1], true)], [frame([1, 3, 2, 0, 1], true)], [frame([1, 3, 2, 0, 1], true)]]
    expect(await master.transact(readRequest(1, 'holding', 0, 1))).toEqual({ kind: 'no_answer', reason: 'crc' })
    expect(events).toEqual(['crc', 'crc', 'crc'])
    events.length = 0
    script = []
    expect(await master.transact(readRequest(1, 'holding', 0, 1))).toEqual({ kind: 'no_answer', reason: 'timeout' })
    expect(events).toEqual(['timeout', 'timeout', 'timeout'])
  })

  it('runs one transaction at a time on the bus, in the order asked', async () => {
    requests.length = 0
    script = [[frame([1, 3, 2, 0, 1])], [frame([2, 3, 2, 0, 2])], [frame([3, 3, 2, 0, 3])]]
    const outs = await Promise.all([1, 2, 3].map((u) => master.transact(readRequest(u, 'holding', 0, 1))))
    expect(outs.map((o) => o.kind === 'ok' && o.frame[0])).toEqual([1, 2, 3])
    expect(requests.map((r) => r[0])).toEqual([1, 2, 3])
  })

  it('does not retry an exception: the slave answered', async () => {
    events.length = 0
    script = [[frame([1, 0x86, 2])]]
    expect(await master.transact(writeRegistersRequest(1, 900, [1]))).toEqual({ kind: 'exception', code: 2, message: 'illegal data address' })
    expect(events).toEqual(['exception'])
  })
})
