// Time for `$ntp`: the gateway answers every device's `$ntp` itself (it is closer than the hub, so
// more accurate), on its own clock corrected by the offset it measures against the hub with the
// same exchange (PROTOCOL.md "NTP"). The offset is 0 until the hub was reached once.
import type { JsonObject } from '../store/shadows.js'

export interface ClockSample {
  offsetMs: number
  roundTripMs: number
  measuredAt: number
}

// Of the recent samples the one with the shortest round trip wins: its delays were the most
// symmetric, so its offset the most accurate (the classic NTP clock filter).
const KEEP_SAMPLES = 8

export class HubClock {
  private sample?: ClockSample
  private samples: ClockSample[] = []
  private pending = new Map<string, number>()

  constructor(private readonly localNow: () => number = Date.now) {}

  /** Milliseconds to add to the local clock to get the hub's. */
  get offsetMs(): number {
    return this.sample?.offsetMs ?? 0
  }

  get lastSample(): ClockSample | undefined {
    return this.sample
  }

  /** The hub-corrected time. */
  now(): number {
    return this.localNow() + this.offsetMs
  }

  /** Build our own `$ntp` request (remember its MessageId so only our answer is used). */
  request(messageId: string): Buffer {
    const t = this.localNow()
    this.pending.set(messageId, t)
    if (this.pending.size > 16) this.pending.delete(this.pending.keys().next().value!)
    return Buffer.from(JSON.stringify({ device_time: t }))
  }

  /**
   * The hub's `$set_ntp` answer to our request: the classic NTP offset
   * ((recv - device_time) + (send - device_recv)) / 2. Returns false if it was not ours.
   */
  answer(body: JsonObject | undefined): boolean {
    const deviceRecv = this.localNow()
    const sent = body?.device_time
    const recv = body?.iothub_recv
    const send = body?.iothub_send
    if (typeof sent !== 'number' || typeof recv !== 'number' || typeof send !== 'number') return false
    if (![...this.pending.values()].includes(sent)) return false
    for (const [k, v] of this.pending) if (v === sent) this.pending.delete(k)
    this.samples.push({
      offsetMs: Math.round((recv - sent + (send - deviceRecv)) / 2),
      roundTripMs: deviceRecv - sent - (send - recv),
      measuredAt: deviceRecv,
    })
    if (this.samples.length > KEEP_SAMPLES) this.samples.shift()
    this.sample = this.samples.reduce((best, s) => (s.roundTripMs < best.roundTripMs ? s : best))
    return true
  }

  /** Our `$set_ntp` answer to a device: receive time taken on arrival, send time just before publishing. */
  answerFor(deviceTime: unknown, receivedAtLocal: number): Buffer {
    return Buffer.from(
      JSON.stringify({
        device_time: deviceTime,
        iothub_recv: receivedAtLocal + this.offsetMs,
        iothub_send: this.now(),
      }),
    )
  }
}
