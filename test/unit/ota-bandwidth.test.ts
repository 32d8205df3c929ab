// ota.bandwidthBytesPerSecond: the token bucket the gateway's own image downloads share, on a clock
// of the test's own (sleeping advances it), so the arithmetic is checked without the wall clock:
// how long, in the limiter's time, a given number of bytes takes at a given rate.
import { describe, expect, it } from 'vitest'
import { BandwidthLimit, type PaceClock } from '../../src/ota/image-fetch.js'

class TestClock implements PaceClock {
  t = 1_000_000
  sleeps = 0
  now(): number {
    return this.t
  }
  async sleep(ms: number): Promise<void> {
    this.sleeps++
    this.t += ms
  }
}

/** Takes `chunks` chunks of `size` bytes one after the other; the limiter's time it took, in ms. */
async function pass(limit: BandwidthLimit, clock: TestClock, chunks: number, size: number): Promise<number> {
  const start = clock.t
  for (let i = 0; i < chunks; i++) await limit.take(size)
  return clock.t - start
}

describe('the OTA download bandwidth limit', () => {
  it('never waits when unlimited (0)', async () => {
    const clock = new TestClock()
    expect(await pass(new BandwidthLimit(0, clock), clock, 1000, 65_536)).toBe(0)
    expect(clock.sleeps).toBe(0)
  })

  it('lets one second of bytes through at once, then the rate: 10 kB at 2 kB/s take 4 s', async () => {
    const clock = new TestClock()
    expect(await pass(new BandwidthLimit(2000, clock), clock, 10, 1000)).toBeCloseTo(4000, 3)
  })

  it('holds the rate with socket-sized reads: 1000 x 1460 bytes at 100 kB/s', async () => {
    const clock = new TestClock()
    const ms = await pass(new BandwidthLimit(100_000, clock), clock, 1000, 1460)
    // All but the first second's burst at the rate.
    expect(ms).toBeCloseTo(((1000 * 1460 - 100_000) / 100_000) * 1000, 0)
  })

  it('holds the rate with reads larger than a second of it (debt): 5 x 3000 bytes at 1000 B/s take 12 s', async () => {
    const clock = new TestClock()
    // The first read goes on the full bucket and leaves a debt of 2000; each next one waits 3 s.
    expect(await pass(new BandwidthLimit(1000, clock), clock, 5, 3000)).toBeCloseTo(12_000, 3)
  })

  it('is one budget for all downloads together: two at once share the rate', async () => {
    const clock = new TestClock()
    const limit = new BandwidthLimit(1000, clock)
    const start = clock.t
    await Promise.all([pass(limit, clock, 10, 500), pass(limit, clock, 10, 500)])
    // 10 kB together at 1000 B/s, the first second's burst included: 9 s, not 4.5.
    expect(clock.t - start).toBeGreaterThanOrEqual(9000)
    expect(clock.t - start).toBeLessThanOrEqual(9000 + 20)
  })

  it('keeps no more than one second of burst after an idle time', async () => {
    const clock = new TestClock()
    const limit = new BandwidthLimit(1000, clock)
    clock.t += 60_000
    expect(await pass(limit, clock, 6, 500)).toBeCloseTo(2000, 3)
  })
})
