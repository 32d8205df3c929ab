// A sandbox for code from strangers (payload codecs from public device repositories; later the
// rules' user scripts): QuickJS compiled to WebAssembly (quickjs-emscripten), one engine instance
// per script. What it guarantees and what it does not: docs/decisions/0007-script-sandbox.md.
//
// - No ambient authority: the script sees QuickJS's standard library only (no `process`, `require`,
//   file system, network, timers); values cross as JSON text, never as host objects, so there is no
//   host constructor chain to climb (`this.constructor.constructor('return process')()` finds
//   QuickJS's own Function, whose global has no `process`).
// - CPU: an interrupt deadline per call (a `while (true) {}` is stopped).
// - Memory: QuickJS's own `setMemoryLimit` does not bound memory in the prebuilt wasm (upstream
//   issue 271: a script reached 2.1 GB under a 4 MiB limit), so each instance's linear memory is
//   capped by V8's `--wasm-max-mem-pages`, set from here before the first instance is made. V8
//   takes the flag at run time for memories created afterwards; it is process-wide, which is fine
//   for the gateway (its other wasm users, Node's HTTP parser and module lexer, need far less).
// - Each instance has its own wasm module instance, so its own linear memory: one codec that
//   exhausts it cannot starve another. An instance that ran out of memory or time is thrown away and
//   made anew for the next call (its heap may be left in any state).
import v8 from 'node:v8'
import { newQuickJSWASMModuleFromVariant, shouldInterruptAfterDeadline, type QuickJSContext, type QuickJSRuntime, type QuickJSWASMModule } from 'quickjs-emscripten-core'
import releaseSyncModule from '@jitl/quickjs-wasmfile-release-sync'

// The package's `types` point at its CommonJS declarations for both conditions, so TypeScript sees
// `{default: variant}` where Node's ESM import gives the variant itself; the loader takes either.
const releaseSync = releaseSyncModule as unknown as Parameters<typeof newQuickJSWASMModuleFromVariant>[0]

/** 64 KiB wasm pages per instance: 512 = 32 MiB, enough for any payload codec, far from the box's RAM. */
export const WASM_MAX_MEM_PAGES = 512

let memoryCapped = false

/** Set the per-memory cap once, before any sandbox instance exists. */
function capWasmMemory(): void {
  if (memoryCapped) return
  v8.setFlagsFromString(`--wasm-max-mem-pages=${WASM_MAX_MEM_PAGES}`)
  memoryCapped = true
}

export type SandboxFailure = 'load' | 'timeout' | 'memory' | 'exception' | 'bad_result'

export class SandboxError extends Error {
  constructor(
    message: string,
    readonly kind: SandboxFailure,
  ) {
    super(message)
  }
}

export interface SandboxOptions {
  /** CPU time one call may take (wall clock, checked by QuickJS's interrupt handler). */
  timeoutMs: number
  /** What the script is, for error messages (a file name). */
  name: string
}

/** One script in its own QuickJS engine; its top level runs once, its functions are called with JSON values. */
export class ScriptSandbox {
  private engine?: { module: QuickJSWASMModule; runtime: QuickJSRuntime; context: QuickJSContext }
  // Calls run one at a time: a rebuild after a failure must not race the next call.
  private queue: Promise<unknown> = Promise.resolve()

  private constructor(
    private readonly source: string,
    private readonly opts: SandboxOptions,
  ) {}

  /** Load a script: its top level runs once (within the time limit). Throws SandboxError('load'). */
  static async load(source: string, opts: SandboxOptions): Promise<ScriptSandbox> {
    const s = new ScriptSandbox(source, opts)
    await s.boot()
    return s
  }

  /** Whether the script defines a global function of that name. */
  has(fn: string): boolean {
    const ctx = this.engine?.context
    if (!ctx) return false
    this.engine!.runtime.setInterruptHandler(shouldInterruptAfterDeadline(Date.now() + this.opts.timeoutMs))
    const r = ctx.evalCode(`typeof globalThis[${JSON.stringify(fn)}] === 'function'`)
    if (r.error) {
      r.error.dispose()
      return false
    }
    const yes = ctx.dump(r.value) === true
    r.value.dispose()
    return yes
  }

  /**
   * Call a global function with one JSON argument and return its JSON result. Throws SandboxError:
   * 'timeout', 'memory' (the engine is rebuilt before the next call), 'exception' (the script
   * threw), 'bad_result' (not JSON-serialisable).
   */
  call(fn: string, arg: unknown): Promise<unknown> {
    const run = this.queue.then(() => this.callNow(fn, arg))
    this.queue = run.catch(() => undefined)
    return run
  }

  private async callNow(fn: string, arg: unknown): Promise<unknown> {
    if (!this.engine) await this.boot()
    const { runtime, context } = this.engine!
    runtime.setInterruptHandler(shouldInterruptAfterDeadline(Date.now() + this.opts.timeoutMs))
    const input = context.newString(JSON.stringify(arg))
    context.setProp(context.global, '__input', input)
    input.dispose()
    let text: string
    try {
      const r = context.evalCode(`JSON.stringify(globalThis[${JSON.stringify(fn)}](JSON.parse(__input)))`, `${this.opts.name}:call`)
      if (r.error) {
        const err = context.dump(r.error) as { name?: string; message?: string } | string
        r.error.dispose()
        throw this.failure(err)
      }
      const out: unknown = context.dump(r.value)
      r.value.dispose()
      if (typeof out !== 'string') throw new SandboxError(`${this.opts.name}: ${fn} returned nothing JSON can carry`, 'bad_result')
      text = out
    } catch (err) {
      if (err instanceof SandboxError) {
        if (err.kind === 'timeout' || err.kind === 'memory') this.discard()
        throw err
      }
      // The engine itself failed (a wasm trap, memory.grow refused): it is not usable any more.
      this.discard()
      throw new SandboxError(`${this.opts.name}: the engine failed in ${fn}: ${(err as Error).message}`, 'memory')
    }
    return JSON.parse(text) as unknown
  }

  dispose(): void {
    this.discard()
  }

  private async boot(): Promise<void> {
    capWasmMemory()
    const module = await newQuickJSWASMModuleFromVariant(releaseSync)
    const runtime = module.newRuntime()
    // Not a bound in the prebuilt wasm (see above), but it makes QuickJS fail early where it can.
    runtime.setMemoryLimit(WASM_MAX_MEM_PAGES * 65536 * 0.75)
    runtime.setMaxStackSize(512 * 1024)
    runtime.setInterruptHandler(shouldInterruptAfterDeadline(Date.now() + this.opts.timeoutMs))
    const context = runtime.newContext()
    this.engine = { module, runtime, context }
    let r
    try {
      r = context.evalCode(this.source, this.opts.name)
    } catch (err) {
      this.discard()
      throw new SandboxError(`${this.opts.name}: the engine failed while loading: ${(err as Error).message}`, 'load')
    }
    if (r.error) {
      const err = context.dump(r.error) as { name?: string; message?: string } | string
      r.error.dispose()
      this.discard()
      const f = this.failure(err)
      throw new SandboxError(`${f.message} (while loading)`, 'load')
    }
    r.value.dispose()
  }

  private failure(err: { name?: string; message?: string } | string): SandboxError {
    const name = typeof err === 'object' && err ? err.name : undefined
    const message = typeof err === 'object' && err ? (err.message ?? '') : String(err)
    if (name === 'InternalError' && message === 'interrupted') return new SandboxError(`${this.opts.name}: ran longer than ${this.opts.timeoutMs} ms; stopped`, 'timeout')
    if (name === 'InternalError' && /out of memory/.test(message)) return new SandboxError(`${this.opts.name}: ran out of memory`, 'memory')
    if (name === 'RangeError' && /stack/.test(message)) return new SandboxError(`${this.opts.name}: ${message}`, 'memory')
    return new SandboxError(`${this.opts.name}: ${name ?? 'Error'}: ${message}`.slice(0, 500), 'exception')
  }

  private discard(): void {
    const e = this.engine
    this.engine = undefined
    if (!e) return
    try {
      e.context.dispose()
      e.runtime.dispose()
    } catch {
      // A runtime left mid-allocation may refuse to free cleanly (leaked handles); its module
      // instance and memory go with the last reference anyway.
    }
  }
}
