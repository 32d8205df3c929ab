// Structured logs (pino): one child logger per component, secrets redacted wherever they appear.
import { pino, type Logger } from 'pino'

export type { Logger }

export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { name: 'iothub-edge' },
    redact: {
      paths: ['password', 'secret', '*.password', '*.secret', '*.apiToken', 'headers.authorization', 'req.headers.authorization'],
      censor: '[redacted]',
    },
  })
}

/** Logs at most once per interval per key; counts what it suppressed so nothing is hidden. */
export class RateLimitedLog {
  private last = new Map<string, { at: number; suppressed: number }>()
  constructor(
    private readonly log: Logger,
    private readonly intervalMs = 60_000,
  ) {}

  warn(key: string, obj: object, msg: string): void {
    const now = Date.now()
    const s = this.last.get(key)
    if (s && now - s.at < this.intervalMs) {
      s.suppressed++
      return
    }
    this.log.warn({ ...obj, suppressedSinceLast: s?.suppressed ?? 0 }, msg)
    this.last.set(key, { at: now, suppressed: 0 })
  }
}
