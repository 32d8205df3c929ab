// The script sandbox behind LoRaWAN codecs (docs/decisions/0007-script-sandbox.md): code from
// strangers runs in QuickJS/wasm with a deadline and a memory cap, cannot reach the host, and a
// failing script leaves the process and the other scripts intact.
import { afterEach, describe, expect, it } from 'vitest'
import { ScriptSandbox, SandboxError } from '../../src/sandbox/script-sandbox.js'

const opened: ScriptSandbox[] = []
// A deadline far from what these calls need: on a loaded machine a 200 ms wall-clock deadline
// stopped a three-byte sum (the deadline tests set their own).
async function load(source: string, timeoutMs = 5_000): Promise<ScriptSandbox> {
  const s = await ScriptSandbox.load(source, { timeoutMs, name: 'test.js' })
  opened.push(s)
  return s
}
async function failure(p: Promise<unknown>): Promise<SandboxError> {
  try {
    await p
  } catch (err) {
    if (err instanceof SandboxError) return err
    throw err
  }
  throw new Error('expected the call to fail')
}

afterEach(() => {
  for (const s of opened.splice(0)) s.dispose()
})

describe('ScriptSandbox', () => {
  it('calls a function with JSON in and out', async () => {
    const s = await load('function decodeUplink(i) { return { data: { sum: i.bytes.reduce(function (a, b) { return a + b }, 0) } } }')
    expect(s.has('decodeUplink')).toBe(true)
    expect(s.has('encodeDownlink')).toBe(false)
    await expect(s.call('decodeUplink', { bytes: [1, 2, 3] })).resolves.toEqual({ data: { sum: 6 } })
  })

  it('gives the script no way to the host: no process, require, timers, fetch; the constructor chain ends in QuickJS', async () => {
    const s = await load(`function probe() {
      var out = {}
      try { out.viaThis = String(this.constructor.constructor('return process')()) } catch (e) { out.viaThis = e.name }
      try { out.viaFn = String((function () {}).constructor('return typeof process + typeof require + typeof globalThis.process')()) } catch (e) { out.viaFn = e.name }
      try { out.viaProto = String(Object.getPrototypeOf(async function () {}).constructor('return 1').constructor.constructor('return process')()) } catch (e) { out.viaProto = e.name }
      out.kinds = [typeof require, typeof setTimeout, typeof fetch, typeof module, typeof import_meta_x]
      return out
    }`)
    expect(await s.call('probe', null)).toEqual({
      viaThis: 'ReferenceError',
      viaFn: 'undefinedundefinedundefined',
      viaProto: 'ReferenceError',
      kinds: ['undefined', 'undefined', 'undefined', 'undefined', 'undefined'],
    })
  })

  it('stops a call that loops forever, and the same script answers the next call', async () => {
    const s = await load('var n = 0; function f(x) { n++; if (x.loop) { while (true) {} } return n }', 100)
    const err = await failure(s.call('f', { loop: true }))
    expect(err.kind).toBe('timeout')
    // A fresh engine: the script's top level ran again.
    await expect(s.call('f', { loop: false })).resolves.toBe(1)
  })

  it('stops a script that allocates 1 GB at its memory cap, with the process intact', async () => {
    const s = await load('function f(kind) { if (kind === "buffer") return new ArrayBuffer(1 << 30).byteLength; var a = []; for (;;) a.push("x".repeat(1 << 20) + a.length) }', 10_000)
    const rssBefore = process.memoryUsage().rss
    expect((await failure(s.call('f', 'buffer'))).kind).toBe('memory')
    expect((await failure(s.call('f', 'strings'))).kind).toBe('memory')
    expect(process.memoryUsage().rss - rssBefore).toBeLessThan(256 * 1024 * 1024)
    const other = await load('function g() { return "still here" }')
    await expect(other.call('g', null)).resolves.toBe('still here')
  })

  it('reports a script that throws, or returns what JSON cannot carry, and one that does not load', async () => {
    const s = await load('function t() { throw new TypeError("bad byte at 3") } function u() { return undefined }')
    const thrown = await failure(s.call('t', null))
    expect(thrown).toMatchObject({ kind: 'exception' })
    expect(thrown.message).toContain('TypeError: bad byte at 3')
    expect((await failure(s.call('u', null))).kind).toBe('bad_result')
    expect((await failure(ScriptSandbox.load('function (', { timeoutMs: 100, name: 'broken.js' }))).kind).toBe('load')
  })
})
