// Modbus RTU framing, pure: request frames, the length of the answer each one expects, CRC and
// exception decoding. References: "MODBUS Application Protocol Specification V1.1b3" (the PDUs,
// section 6, exception codes section 7) and "MODBUS over Serial Line V1.02" (RTU framing 2.5.1,
// CRC 6.2.2). Nothing here does I/O.

export type Table = 'holding' | 'input' | 'coil' | 'discrete'

/** Function codes used here (Application Protocol 6.1-6.12). */
export const FC = {
  readCoils: 0x01,
  readDiscreteInputs: 0x02,
  readHoldingRegisters: 0x03,
  readInputRegisters: 0x04,
  writeSingleCoil: 0x05,
  writeSingleRegister: 0x06,
  writeMultipleCoils: 0x0f,
  writeMultipleRegisters: 0x10,
} as const

export const READ_FC: Record<Table, number> = { coil: FC.readCoils, discrete: FC.readDiscreteInputs, holding: FC.readHoldingRegisters, input: FC.readInputRegisters }

/** The most one read request may ask for (Application Protocol 6.1-6.4). */
export const MAX_READ: Record<Table, number> = { coil: 2000, discrete: 2000, holding: 125, input: 125 }

/** Exception codes (Application Protocol section 7), by name. */
export const EXCEPTIONS: Record<number, string> = {
  1: 'illegal function',
  2: 'illegal data address',
  3: 'illegal data value',
  4: 'slave device failure',
  5: 'acknowledge',
  6: 'slave device busy',
  8: 'memory parity error',
  10: 'gateway path unavailable',
  11: 'gateway target device failed to respond',
}

/** CRC-16/MODBUS (Serial Line 6.2.2): polynomial 0xA001 reflected, init 0xFFFF, sent low byte first. */
export function crc16(buf: Uint8Array, end = buf.length): number {
  let crc = 0xffff
  for (let i = 0; i < end; i++) {
    crc ^= buf[i]!
    for (let b = 0; b < 8; b++) crc = crc & 1 ? (crc >>> 1) ^ 0xa001 : crc >>> 1
  }
  return crc
}

function withCrc(pdu: number[], unitId: number): Buffer {
  const frame = Buffer.alloc(pdu.length + 3)
  frame[0] = unitId
  Buffer.from(pdu).copy(frame, 1)
  frame.writeUInt16LE(crc16(frame, frame.length - 2), frame.length - 2)
  return frame
}

/** A request on the wire and what a normal answer to it looks like. */
export interface Request {
  unitId: number
  fc: number
  frame: Buffer
  /** Length of the normal answer frame, CRC included. */
  answerLength: number
}

export function readRequest(unitId: number, table: Table, address: number, count: number): Request {
  const fc = READ_FC[table]
  const bits = table === 'coil' || table === 'discrete'
  const dataBytes = bits ? Math.ceil(count / 8) : count * 2
  return { unitId, fc, frame: withCrc([fc, address >> 8, address & 0xff, count >> 8, count & 0xff], unitId), answerLength: 3 + dataBytes + 2 }
}

/** fc 5 (one coil) or 15 (several). */
export function writeCoilsRequest(unitId: number, address: number, values: boolean[]): Request {
  if (values.length === 1) {
    // fc 5 takes 0xFF00 for on, 0x0000 for off (6.5); the answer echoes the request.
    return { unitId, fc: FC.writeSingleCoil, frame: withCrc([FC.writeSingleCoil, address >> 8, address & 0xff, values[0] ? 0xff : 0, 0], unitId), answerLength: 8 }
  }
  const bytes = new Array<number>(Math.ceil(values.length / 8)).fill(0)
  values.forEach((v, i) => {
    if (v) bytes[i >> 3]! |= 1 << (i & 7)
  })
  const n = values.length
  return {
    unitId,
    fc: FC.writeMultipleCoils,
    frame: withCrc([FC.writeMultipleCoils, address >> 8, address & 0xff, n >> 8, n & 0xff, bytes.length, ...bytes], unitId),
    answerLength: 8,
  }
}

/** fc 6 (one register) or 16 (several, e.g. both words of a 32-bit value). */
export function writeRegistersRequest(unitId: number, address: number, words: number[]): Request {
  if (words.length === 1) {
    const w = words[0]!
    return { unitId, fc: FC.writeSingleRegister, frame: withCrc([FC.writeSingleRegister, address >> 8, address & 0xff, w >> 8, w & 0xff], unitId), answerLength: 8 }
  }
  const n = words.length
  const data = words.flatMap((w) => [w >> 8, w & 0xff])
  return {
    unitId,
    fc: FC.writeMultipleRegisters,
    frame: withCrc([FC.writeMultipleRegisters, address >> 8, address & 0xff, n >> 8, n & 0xff, n * 2, ...data], unitId),
    answerLength: 8,
  }
}

/** What a slave answered, once a complete frame is in. */
export type Answer =
  | { kind: 'ok'; frame: Buffer }
  | { kind: 'exception'; code: number; message: string }
  | { kind: 'crc' }
  | { kind: 'mismatch'; detail: string }

/**
 * How many bytes the answer to `req` has, judged from what arrived so far: the normal length, or 5
 * for an exception (function code with the high bit set, Application Protocol section 7), or
 * undefined while too little is in to tell.
 */
export function expectedLength(req: Request, buf: Buffer): number | undefined {
  if (buf.length < 2) return undefined
  if (buf[1] === (req.fc | 0x80)) return 5
  return req.answerLength
}

/** Check a complete answer frame against its request. */
export function checkAnswer(req: Request, frame: Buffer): Answer {
  if (crc16(frame, frame.length - 2) !== frame.readUInt16LE(frame.length - 2)) return { kind: 'crc' }
  if (frame[0] !== req.unitId) return { kind: 'mismatch', detail: `answer from unit ${frame[0]}, asked unit ${req.unitId}` }
  if (frame[1] === (req.fc | 0x80)) {
    const code = frame[2]!
    return { kind: 'exception', code, message: EXCEPTIONS[code] ?? `exception ${code}` }
  }
  if (frame[1] !== req.fc) return { kind: 'mismatch', detail: `answer with function ${frame[1]}, asked ${req.fc}` }
  return { kind: 'ok', frame }
}

/** The 16-bit words of a read-registers answer. */
export function answerWords(frame: Buffer): number[] {
  const n = frame[2]! / 2
  const words: number[] = []
  for (let i = 0; i < n; i++) words.push(frame.readUInt16BE(3 + i * 2))
  return words
}

/** The bits of a read-coils/discrete answer, `count` of them. */
export function answerBits(frame: Buffer, count: number): boolean[] {
  const bits: boolean[] = []
  for (let i = 0; i < count; i++) bits.push(((frame[3 + (i >> 3)]! >> (i & 7)) & 1) === 1)
  return bits
}

/**
 * The silent interval that ends an RTU frame (Serial Line 2.5.1.1): 3.5 character times, and a
 * fixed 1.75 ms above 19200 baud. A character is 11 bits (start, 8 data, parity or a second stop, stop).
 */
export function silentIntervalMs(baudRate: number): number {
  if (baudRate > 19200) return 1.75
  return (3.5 * 11 * 1000) / baudRate
}
