// JavaScript payload codecs in the LoRaWAN Payload Codec API form that ChirpStack and TTN use
// (TS013-1.0.0): `decodeUplink({bytes, fPort, recvTime, variables}) -> {data, warnings, errors}` and
// `encodeDownlink({data, variables}) -> {bytes, fPort, warnings, errors}`, so codecs from public
// device repositories work unchanged. They are code from strangers: each runs in its own sandbox
// engine (src/sandbox/script-sandbox.ts) with a per-call time limit and a memory cap.
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { ScriptSandbox, SandboxError } from '../../sandbox/script-sandbox.js'

// Per call (and for the codec's top level once): generous for a payload codec, short enough that a
// looping one costs the adapter little.
const CALL_TIMEOUT_MS = 200

export class CodecError extends Error {}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

function problems(out: Record<string, unknown>, key: 'errors' | 'warnings'): string[] {
  const v = out[key]
  return Array.isArray(v) ? v.map((x) => String(x)).slice(0, 10) : []
}

export class JsCodec {
  private constructor(
    readonly file: string,
    private readonly sandbox: ScriptSandbox,
    readonly canEncode: boolean,
  ) {}

  /** Load a codec file; throws CodecError saying what is wrong with it. */
  static async load(file: string): Promise<JsCodec> {
    let source: string
    try {
      source = await readFile(file, 'utf8')
    } catch (err) {
      throw new CodecError(`cannot read codec ${file}: ${(err as Error).message}`)
    }
    let sandbox: ScriptSandbox
    try {
      sandbox = await ScriptSandbox.load(source, { timeoutMs: CALL_TIMEOUT_MS, name: path.basename(file) })
    } catch (err) {
      throw new CodecError(`codec ${file} does not load: ${(err as Error).message}`)
    }
    if (!sandbox.has('decodeUplink')) {
      sandbox.dispose()
      throw new CodecError(`codec ${file} defines no decodeUplink(input) function`)
    }
    return new JsCodec(file, sandbox, sandbox.has('encodeDownlink'))
  }

  /** The decoded `data`; throws CodecError (with the codec's own errors, or why it was stopped). */
  async decodeUplink(bytes: Buffer, fPort: number, recvTime: string): Promise<{ data: Record<string, unknown>; warnings: string[] }> {
    const out = await this.run('decodeUplink', { bytes: [...bytes], fPort, recvTime, variables: {} })
    const errors = problems(out, 'errors')
    if (errors.length) throw new CodecError(`decodeUplink: ${errors.join('; ')}`)
    if (!isObject(out.data)) throw new CodecError('decodeUplink returned no `data` object')
    return { data: out.data, warnings: problems(out, 'warnings') }
  }

  /** Bytes and fPort for `data`; throws CodecError. */
  async encodeDownlink(data: unknown): Promise<{ bytes: Buffer; fPort?: number; warnings: string[] }> {
    const out = await this.run('encodeDownlink', { data, variables: {} })
    const errors = problems(out, 'errors')
    if (errors.length) throw new CodecError(`encodeDownlink: ${errors.join('; ')}`)
    const bytes = out.bytes
    if (!Array.isArray(bytes) || !bytes.every((b) => Number.isInteger(b) && (b as number) >= 0 && (b as number) <= 255)) {
      throw new CodecError('encodeDownlink returned no `bytes` array of 0-255 integers')
    }
    const fPort = out.fPort
    if (fPort !== undefined && (!Number.isInteger(fPort) || (fPort as number) < 1 || (fPort as number) > 223)) {
      throw new CodecError(`encodeDownlink returned fPort ${String(fPort)}, not 1-223`)
    }
    return { bytes: Buffer.from(bytes as number[]), fPort: fPort as number | undefined, warnings: problems(out, 'warnings') }
  }

  dispose(): void {
    this.sandbox.dispose()
  }

  private async run(fn: string, input: unknown): Promise<Record<string, unknown>> {
    let out: unknown
    try {
      out = await this.sandbox.call(fn, input)
    } catch (err) {
      if (err instanceof SandboxError) throw new CodecError(`${fn} ${err.kind === 'exception' ? 'threw' : 'was stopped'}: ${err.message}`)
      throw err
    }
    if (!isObject(out)) throw new CodecError(`${fn} returned ${out === null ? 'null' : typeof out}, not an object`)
    return out
  }
}
