// A LoRaWAN device is reported disconnected after a configurable silence beyond its usual uplink
// interval (issue 8), learnt from ChirpStack's timestamps of its uplinks.
import { describe, expect, it } from 'vitest'
import { silentTooLong, UplinkRhythm } from '../../src/southbound/lorawan/uplink-rhythm.js'

const MIN = 60_000

describe('LoRaWAN uplink rhythm', () => {
  it('learns the usual interval as the median gap, ignoring repeats and out-of-order times', () => {
    const r = new UplinkRhythm()
    expect(r.usualMs).toBeUndefined()
    r.note(0)
    expect(r.usualMs).toBeUndefined()
    // Every 15 minutes, with one late uplink (30 min) and one repeat of a time already seen.
    for (const t of [15, 30, 60, 75, 75, 90]) r.note(t * MIN)
    r.note(80 * MIN) // an older event delivered late
    expect(r.usualMs).toBe(15 * MIN)
  })

  it('keeps only the recent gaps: a device that was reconfigured to report more often is judged by its new interval', () => {
    const r = new UplinkRhythm()
    let t = 0
    for (let i = 0; i < 5; i++) r.note((t += 60 * MIN))
    for (let i = 0; i < 8; i++) r.note((t += 5 * MIN))
    expect(r.usualMs).toBe(5 * MIN)
  })

  it('is away only after its usual interval plus the configured silence, or the silence alone while the interval is unknown', () => {
    expect(silentTooLong(20 * MIN, 15 * MIN, 10 * MIN)).toBe(false)
    expect(silentTooLong(26 * MIN, 15 * MIN, 10 * MIN)).toBe(true)
    expect(silentTooLong(11 * MIN, undefined, 10 * MIN)).toBe(true)
    expect(silentTooLong(9 * MIN, undefined, 10 * MIN)).toBe(false)
    expect(silentTooLong(1000 * MIN, 15 * MIN, 0)).toBe(false)
  })
})
