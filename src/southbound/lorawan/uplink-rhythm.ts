// How often a LoRaWAN device usually sends, for "a configurable silence after the device's usual
// interval -> disconnected" (issue 8): a device that reports every 15 minutes is not gone after 5
// minutes of silence, one that reports every minute is. The interval is the median of the last gaps
// between its uplinks, measured on ChirpStack's own timestamps (events queued at the broker during a
// gateway restart arrive in a burst, but keep their times).
const GAPS_KEPT = 8

export class UplinkRhythm {
  private last?: number
  private readonly gaps: number[] = []

  /** One uplink, at the time ChirpStack gave it (ms since the epoch). */
  note(at: number): void {
    if (this.last !== undefined && at > this.last) {
      this.gaps.push(at - this.last)
      if (this.gaps.length > GAPS_KEPT) this.gaps.shift()
    }
    if (this.last === undefined || at > this.last) this.last = at
  }

  /** The usual gap between uplinks in ms; undefined until two uplinks were heard. */
  get usualMs(): number | undefined {
    if (this.gaps.length === 0) return undefined
    const sorted = [...this.gaps].sort((a, b) => a - b)
    const mid = sorted.length >> 1
    return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1]! + sorted[mid]!) / 2
  }
}

/** Silent past its usual interval plus the configured silence (`awayMs` 0: never away). */
export function silentTooLong(silentMs: number, usualMs: number | undefined, awayMs: number): boolean {
  return awayMs > 0 && silentMs > (usualMs ?? 0) + awayMs
}
