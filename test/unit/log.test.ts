// What an operator reads: JSON lines for collectors, one readable line per event at a terminal,
// journald priorities under systemd, the gateway id on every line, and no secret in any of it
// (fields named like secrets, and credentials inside URLs wherever they appear).
import { describe, expect, it } from 'vitest'
import { createLogger } from '../../src/core/log.js'

function capture(opts: { format: 'json' | 'pretty'; env?: NodeJS.ProcessEnv }): { lines: string[]; log: ReturnType<typeof createLogger> } {
  const lines: string[] = []
  const log = createLogger({ level: 'info', format: opts.format, gatewayId: 'site-7', env: opts.env ?? {}, out: (l) => lines.push(l) })
  return { lines, log }
}

describe('logs', () => {
  it('json: one JSON object per line, with the gateway id, secrets and URL credentials redacted', () => {
    const { lines, log } = capture({ format: 'json' })
    log.child({ component: 'bridge' }).warn({ url: 'mqtts://gw:hunter2@hub.example.com:8883', password: 'hunter3', nested: { secret: 'hunter4' } }, 'cannot reach mqtts://gw:hunter5@hub.example.com')
    expect(lines).toHaveLength(1)
    const o = JSON.parse(lines[0]) as Record<string, unknown>
    expect(o).toMatchObject({ gateway: 'site-7', component: 'bridge', url: 'mqtts://[redacted]@hub.example.com:8883', password: '[redacted]', nested: { secret: '[redacted]' } })
    expect(lines[0]).not.toMatch(/hunter/)
  })

  it('pretty: ISO time, level name, component, message and fields on one line; an error stack stays on it', () => {
    const { lines, log } = capture({ format: 'pretty' })
    log.child({ component: 'broker' }).error({ err: new Error('boom\nsecond line'), device: 'thermo/t1' }, 'device refused')
    expect(lines).toHaveLength(1)
    expect(lines[0].endsWith('\n')).toBe(true)
    expect(lines[0].trimEnd().split('\n')).toHaveLength(1)
    expect(lines[0]).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ERROR \[broker\] device refused /)
    expect(lines[0]).toContain('gateway=site-7')
    expect(lines[0]).toContain('device=thermo/t1')
    expect(lines[0]).toContain('boom')
  })

  it('under systemd every line starts with its syslog priority, in both formats', () => {
    for (const format of ['json', 'pretty'] as const) {
      const { lines, log } = capture({ format, env: { JOURNAL_STREAM: '8:1234' } })
      log.info('i')
      log.warn('w')
      log.error('e')
      log.fatal('f')
      expect(lines.map((l) => l.slice(0, 3))).toEqual(['<6>', '<4>', '<3>', '<2>'])
      if (format === 'json') for (const l of lines) expect(() => JSON.parse(l.slice(3))).not.toThrow()
    }
  })

  it('no priority prefix outside systemd', () => {
    const { lines, log } = capture({ format: 'json' })
    log.warn('w')
    expect(lines[0].startsWith('{')).toBe(true)
  })
})
