// The outbox drain rate health shows: the hub's acknowledgements per second over the last 10 and
// 60 s, from a running total sampled once a second (the hub link only increments a counter).
import { describe, expect, it } from 'vitest'
import { DrainRate } from '../../src/northbound/drain-rate.js'

describe('drain rate', () => {
  it('is the acknowledgements per second over each window, and falls back to zero once the drain stops', () => {
    let now = 1_000_000
    let total = 0
    const rate = new DrainRate(() => total, 60, () => now)
    expect(rate.view()).toEqual({ last10s: 0, last60s: 0 })
    rate.sample()
    // 30 s of 50 acknowledgements a second, then 30 s of 10 a second.
    for (let s = 0; s < 60; s++) {
      now += 1000
      total += s < 30 ? 50 : 10
      rate.sample()
    }
    expect(rate.view()).toEqual({ last10s: 10, last60s: 30 })
    // Between samples the newest total counts at once.
    now += 500
    total += 100
    expect(rate.rate(10)).toBeCloseTo((10 * 10 + 100) / 10.5, 5)
    // Nothing acknowledged for a minute: zero over both windows.
    for (let s = 0; s < 61; s++) {
      now += 1000
      rate.sample()
    }
    expect(rate.view()).toEqual({ last10s: 0, last60s: 0 })
  })

  it('right after the start: the rate over what was sampled so far, never a division by zero', () => {
    let now = 5_000
    let total = 0
    const rate = new DrainRate(() => total, 60, () => now)
    rate.sample()
    expect(rate.rate(10)).toBe(0)
    now += 2000
    total = 40
    expect(rate.rate(10)).toBe(20)
    expect(rate.rate(60)).toBe(20)
  })
})
