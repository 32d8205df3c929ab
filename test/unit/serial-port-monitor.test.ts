// The line monitor's framing (src/southbound/serial/port-monitor.ts): what a technician sees as one
// frame, and what is kept. The serial scenario tests watch it on real ptys; this pins the cutting
// rules that are hard to provoke there (a line split over chunks, a long run, the ring's bound).
import { describe, expect, it } from 'vitest'
import { MAX_FRAME_BYTES, PortMonitor, RING, toLine } from '../../src/southbound/serial/port-monitor.js'

const text = (m: PortMonitor): string[] => m.recent().map((f) => `${f.dir}:${f.bytes.toString('latin1')}`)

describe('the line monitor', () => {
  it('makes one frame of each line, however the bytes arrive, and keeps a partial line apart', () => {
    const m = new PortMonitor({ delimiter: '\r\n', gapMs: 500 })
    m.record('rx', Buffer.from('T=1'), 0)
    m.record('rx', Buffer.from('\r'), 1)
    m.record('rx', Buffer.from('\nT=2\r\nT='), 2)
    expect(text(m)).toEqual(['rx:T=1\r\n', 'rx:T=2\r\n', 'rx:T='])
    // A write ends what came in before it.
    m.record('tx', Buffer.from('ACK\r\n'), 3)
    m.record('rx', Buffer.from('3\r\n'), 4)
    expect(text(m)).toEqual(['rx:T=1\r\n', 'rx:T=2\r\n', 'rx:T=', 'tx:ACK\r\n', 'rx:3\r\n'])
  })

  it('cuts a Modbus port\'s frames at the silence between them and at each write', () => {
    const m = new PortMonitor({ gapMs: 20 })
    const watched: string[] = []
    const stop = m.watch((f) => watched.push(toLine(f).hex))
    m.record('tx', Buffer.from('0103000000010a84', 'hex'), 0)
    m.record('rx', Buffer.from('010302', 'hex'), 10)
    m.record('rx', Buffer.from('00117844', 'hex'), 15)
    m.record('rx', Buffer.from('ff', 'hex'), 100) // noise after a silence: a frame of its own
    m.record('tx', Buffer.from('0103000000010a84', 'hex'), 200)
    expect(watched).toEqual(['0103000000010a84', '01030200117844', 'ff', '0103000000010a84'])
    stop()
    expect(m.watching).toBe(0)
  })

  it('shows bytes as hex and printable text, the rest as dots', () => {
    expect(toLine({ ts: 5, dir: 'rx', bytes: Buffer.from([0x41, 0x00, 0x7e, 0xff, 0x0a]) })).toEqual({ ts: 5, dir: 'rx', hex: '41007eff0a', text: 'A.~..' })
  })

  it('keeps the last RING frames of at most MAX_FRAME_BYTES each', () => {
    const m = new PortMonitor({ delimiter: '\n', gapMs: 500 })
    m.record('rx', Buffer.alloc(MAX_FRAME_BYTES * 2 + 10, 0x78), 0)
    expect(m.recent().map((f) => f.bytes.length)).toEqual([MAX_FRAME_BYTES, MAX_FRAME_BYTES, 10])
    for (let i = 0; i < RING + 50; i++) m.record('tx', Buffer.from(`line ${i}\n`), i)
    const kept = m.recent()
    expect(kept).toHaveLength(RING)
    expect(kept[0]!.bytes.toString()).toBe('line 50\n')
    expect(kept.at(-1)!.bytes.toString()).toBe(`line ${RING + 49}\n`)
  })
})
