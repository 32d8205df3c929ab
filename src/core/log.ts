// Structured logs (pino): one child logger per component, secrets redacted wherever they appear.
// Two formats: json (one JSON object per line, for collectors and `jq`) and pretty (ISO time, level
// name, message, then the fields: for a person at a terminal). Under systemd (JOURNAL_STREAM set)
// every line starts with its syslog priority (`<3>`, sd-daemon(3)), which journald strips and
// records, so that `journalctl -p warning` works.
import { pino, type DestinationStream, type Logger } from 'pino'

export type { Logger }

export type LogFormat = 'json' | 'pretty'

export interface LoggerOptions {
  level: string
  /** Default: pretty when stdout is a terminal, json otherwise. */
  format?: LogFormat
  /** `gateway.id`: on every line, so that a fleet's logs can be told apart. */
  gatewayId?: string
  env?: NodeJS.ProcessEnv
  /** Where lines go (default stdout); tests pass their own. */
  out?: (line: string) => void
  /**
   * Told every line as JSON (after redaction, before formatting), besides `out`: the recent-logs
   * ring the web reads. Called in the logging call's turn: keep it cheap and never log from it.
   */
  tap?: (jsonLine: string, level: number) => void
}

// pino's numeric levels, their names and their syslog priorities (sd-daemon(3)).
export const LEVELS: Record<number, { name: string; priority: number }> = {
  10: { name: 'TRACE', priority: 7 },
  20: { name: 'DEBUG', priority: 7 },
  30: { name: 'INFO', priority: 6 },
  40: { name: 'WARN', priority: 4 },
  50: { name: 'ERROR', priority: 3 },
  60: { name: 'FATAL', priority: 2 },
}

// Credentials in a URL (`mqtts://user:pass@host`): whatever field or message they are in.
const URL_USERINFO = /([a-z][a-z0-9+.-]*:\/\/)[^/@\s"'\\]+@/gi

export function redactUrls(text: string): string {
  return text.replace(URL_USERINFO, '$1[redacted]@')
}

export function createLogger(options: LoggerOptions | string): Logger {
  const o: LoggerOptions = typeof options === 'string' ? { level: options } : options
  const env = o.env ?? process.env
  const format = o.format ?? (process.stdout.isTTY ? 'pretty' : 'json')
  const journal = !!env.JOURNAL_STREAM
  const out = o.out ?? ((line: string) => void process.stdout.write(line))
  const destination: DestinationStream = {
    write(line: string) {
      const safe = redactUrls(line)
      const level = Number(/"level":(\d+)/.exec(safe)?.[1] ?? 30)
      const text = format === 'pretty' ? prettyLine(safe) : safe
      out(journal ? `<${LEVELS[level]?.priority ?? 6}>${text}` : text)
      o.tap?.(safe, level)
    },
  }
  return pino(
    {
      level: o.level,
      base: { name: 'iothub-edge', ...(o.gatewayId ? { gateway: o.gatewayId } : {}) },
      redact: {
        paths: ['password', 'secret', 'token', 'apiToken', '*.password', '*.secret', '*.token', '*.apiToken', 'headers.authorization', 'req.headers.authorization'],
        censor: '[redacted]',
      },
    },
    destination,
  )
}

/** One line for a person: `2026-12-01T12:00:00.000Z WARN  [bridge] message key=value ...`. */
function prettyLine(json: string): string {
  let o: Record<string, unknown>
  try {
    o = JSON.parse(json) as Record<string, unknown>
  } catch {
    return json
  }
  const { level, time, msg, name: _name, pid: _pid, hostname: _hostname, component, err, ...rest } = o
  const parts = [
    new Date(typeof time === 'number' ? time : Date.now()).toISOString(),
    (LEVELS[Number(level)]?.name ?? String(level)).padEnd(5),
    ...(component ? [`[${String(component)}]`] : []),
    String(msg ?? ''),
    ...Object.entries(rest).map(([k, v]) => `${k}=${typeof v === 'string' ? (/\s/.test(v) ? JSON.stringify(v) : v) : JSON.stringify(v)}`),
  ]
  let line = parts.join(' ')
  // An error's stack stays on the same line: one event, one line (journald, grep).
  if (err && typeof err === 'object') {
    const e = err as { message?: string; stack?: string; code?: string }
    line += ` err=${JSON.stringify(e.stack ?? e.message ?? e)}`
  }
  return line + '\n'
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
