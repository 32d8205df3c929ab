// Cayenne LPP as the LoRaWAN adapter decodes it, against the examples of the Cayenne LPP reference
// (myDevices, "Cayenne Low Power Payload"): signed values, resolutions, multi-value types, and
// frames that do not fit are refused with the offset, never half-decoded.
import { describe, expect, it } from 'vitest'
import { CayenneError, decodeCayenne } from '../../src/southbound/lorawan/cayenne-lpp.js'

const hex = (s: string): Buffer => Buffer.from(s.replace(/ /g, ''), 'hex')

describe('Cayenne LPP', () => {
  it('decodes the reference examples', () => {
    expect(decodeCayenne(hex('03 67 01 10 05 67 00 FF'))).toEqual({ temperature_3: 27.2, temperature_5: 25.5 })
    expect(decodeCayenne(hex('06 71 04 D2 FB 2E 00 00'))).toEqual({ accelerometer_6: { x: 1.234, y: -1.234, z: 0 } })
    expect(decodeCayenne(hex('01 88 06 76 5F F2 96 0A 00 03 E8'))).toEqual({ gps_1: { latitude: 42.3519, longitude: -87.9094, altitude: 10 } })
  })

  it('decodes negative temperatures, humidity halves, analog values and barometer tenths', () => {
    expect(decodeCayenne(hex('01 67 FF 38 02 68 51 03 02 FF 9C 04 73 27 10'))).toEqual({
      temperature_1: -20, humidity_2: 40.5, analog_in_3: -1, barometer_4: 1000,
    })
  })

  it('refuses unknown types and truncated frames, naming the offset', () => {
    expect(() => decodeCayenne(hex('01 FE 00'))).toThrow(CayenneError)
    expect(() => decodeCayenne(hex('01 FE 00'))).toThrow(/type 254 at byte 1/)
    expect(() => decodeCayenne(hex('03 67 01'))).toThrow(/truncated at byte 0: temperature needs 2 bytes/)
    expect(() => decodeCayenne(hex('03 67 01 10 05'))).toThrow(/truncated at byte 4/)
    expect(() => decodeCayenne(Buffer.alloc(0))).toThrow(/empty/)
  })
})
