// Failed logins counted per key (a client address, a username) in a sliding window: after `max`
// failures within `windowMs` the key is refused until the oldest of them leaves the window.
// Attempts refused meanwhile are not checked and do not count. Memory is bounded: at most
// `maxKeys` keys are tracked (the oldest forgotten first).
export class FailureLimiter {
  private readonly failures = new Map<string, number[]>()

  constructor(
    private readonly opts: { max: number; windowMs: number; now: () => number; maxKeys?: number },
  ) {}

  /** Milliseconds until `key` may try again; 0 when it may now. */
  blockedFor(key: string): number {
    const recent = this.recent(key)
    if (recent.length < this.opts.max) return 0
    return Math.max(1, recent[recent.length - this.opts.max] + this.opts.windowMs - this.opts.now())
  }

  /** Counts a failure; true when this one made the key blocked (the first of a burst: log it then). */
  fail(key: string): boolean {
    const recent = this.recent(key)
    recent.push(this.opts.now())
    this.failures.delete(key)
    this.failures.set(key, recent)
    const max = this.opts.maxKeys ?? 10_000
    while (this.failures.size > max) this.failures.delete(this.failures.keys().next().value as string)
    return recent.length === this.opts.max
  }

  clear(key: string): void {
    this.failures.delete(key)
  }

  private recent(key: string): number[] {
    const since = this.opts.now() - this.opts.windowMs
    const list = (this.failures.get(key) ?? []).filter((t) => t > since)
    if (list.length === 0) this.failures.delete(key)
    else this.failures.set(key, list)
    return list
  }
}
