// How fast the outbox drains to the hub: a running total (the links count each acknowledgement, a
// plain increment) sampled once a second into a ring, so the rate over the last N seconds costs the
// hot path nothing and health reads it in constant time.

const SAMPLE_MS = 1_000

export interface DrainRateView {
  /** Messages per second the hub acknowledged over the last 10 s. */
  last10s: number
  /** Messages per second the hub acknowledged over the last 60 s. */
  last60s: number
}

export class DrainRate {
  private readonly at: number[] = []
  private readonly totals: number[] = []
  private timer?: NodeJS.Timeout

  constructor(
    private readonly total: () => number,
    private readonly keepS = 60,
    private readonly now: () => number = Date.now,
  ) {}

  start(): void {
    this.sample()
    this.timer = setInterval(() => this.sample(), SAMPLE_MS).unref()
  }

  stop(): void {
    clearInterval(this.timer)
  }

  /** One sample now (the timer's; tests call it with their own clock). */
  sample(): void {
    this.at.push(this.now())
    this.totals.push(this.total())
    // One more than the window, so a full window has a sample at its start.
    if (this.at.length > this.keepS + 2) {
      this.at.shift()
      this.totals.shift()
    }
  }

  /** Messages per second over the last `seconds` (less right after the start: over what was sampled). */
  rate(seconds: number): number {
    if (this.at.length === 0) return 0
    const now = this.now()
    const from = now - seconds * 1000
    // The newest sample at or before the window's start, else the oldest there is.
    let i = 0
    for (let j = this.at.length - 1; j >= 0; j--) {
      if (this.at[j] <= from) {
        i = j
        break
      }
    }
    const elapsed = (now - this.at[i]) / 1000
    if (elapsed <= 0) return 0
    return Math.max(0, this.total() - this.totals[i]) / elapsed
  }

  view(): DrainRateView {
    const round = (n: number): number => Math.round(n * 10) / 10
    return { last10s: round(this.rate(10)), last60s: round(this.rate(60)) }
  }
}
