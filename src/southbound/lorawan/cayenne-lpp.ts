// Cayenne LPP (Low Power Payload, myDevices): a frame is a sequence of [channel, type, value...]
// with IPSO object types as type codes. Decoded into flat `{name}_{channel}` keys, the form TTN's
// built-in Cayenne formatter uses (`temperature_1: 27.2`), so hub-side rules read the same names.
// Sizes, signedness and resolutions per the Cayenne LPP reference (myDevices docs, "Cayenne Low
// Power Payload") and the widely used extended types (ElectronicCats CayenneLPP).

interface LppType {
  name: string
  size: number
  decode: (b: Buffer, at: number) => unknown
}

const u = (n: number, div = 1) => (b: Buffer, at: number): number => round(b.readUIntBE(at, n) / div)
const s = (n: number, div = 1) => (b: Buffer, at: number): number => round(b.readIntBE(at, n) / div)
const round = (v: number): number => Number(v.toFixed(6))
const xyz = (div: number) => (b: Buffer, at: number): Record<string, number> => ({
  x: round(b.readInt16BE(at) / div),
  y: round(b.readInt16BE(at + 2) / div),
  z: round(b.readInt16BE(at + 4) / div),
})

const TYPES: Record<number, LppType> = {
  0: { name: 'digital_in', size: 1, decode: u(1) },
  1: { name: 'digital_out', size: 1, decode: u(1) },
  2: { name: 'analog_in', size: 2, decode: s(2, 100) },
  3: { name: 'analog_out', size: 2, decode: s(2, 100) },
  100: { name: 'generic', size: 4, decode: u(4) },
  101: { name: 'illuminance', size: 2, decode: u(2) },
  102: { name: 'presence', size: 1, decode: u(1) },
  103: { name: 'temperature', size: 2, decode: s(2, 10) },
  104: { name: 'humidity', size: 1, decode: u(1, 2) },
  113: { name: 'accelerometer', size: 6, decode: xyz(1000) },
  115: { name: 'barometer', size: 2, decode: u(2, 10) },
  116: { name: 'voltage', size: 2, decode: u(2, 100) },
  117: { name: 'current', size: 2, decode: u(2, 1000) },
  118: { name: 'frequency', size: 4, decode: u(4) },
  120: { name: 'percentage', size: 1, decode: u(1) },
  121: { name: 'altitude', size: 2, decode: s(2) },
  125: { name: 'concentration', size: 2, decode: u(2) },
  128: { name: 'power', size: 2, decode: u(2) },
  130: { name: 'distance', size: 4, decode: u(4, 1000) },
  131: { name: 'energy', size: 4, decode: u(4, 1000) },
  132: { name: 'direction', size: 2, decode: u(2) },
  133: { name: 'unixtime', size: 4, decode: u(4) },
  134: { name: 'gyrometer', size: 6, decode: xyz(100) },
  135: { name: 'colour', size: 3, decode: (b, at) => ({ r: b[at], g: b[at + 1], b: b[at + 2] }) },
  136: {
    name: 'gps',
    size: 9,
    decode: (b, at) => ({ latitude: round(b.readIntBE(at, 3) / 10000), longitude: round(b.readIntBE(at + 3, 3) / 10000), altitude: round(b.readIntBE(at + 6, 3) / 100) }),
  },
  142: { name: 'switch', size: 1, decode: u(1) },
}

export class CayenneError extends Error {}

/** Decode one Cayenne LPP frame; throws CayenneError naming the offset of what does not fit. */
export function decodeCayenne(frame: Buffer): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  let at = 0
  while (at < frame.length) {
    if (at + 2 > frame.length) throw new CayenneError(`truncated at byte ${at}: a channel without a type`)
    const channel = frame[at]
    const code = frame[at + 1]
    const t = TYPES[code]
    if (!t) throw new CayenneError(`unknown Cayenne LPP type ${code} at byte ${at + 1}`)
    if (at + 2 + t.size > frame.length) throw new CayenneError(`truncated at byte ${at}: ${t.name} needs ${t.size} bytes`)
    out[`${t.name}_${channel}`] = t.decode(frame, at + 2)
    at += 2 + t.size
  }
  if (at === 0) throw new CayenneError('empty frame')
  return out
}
