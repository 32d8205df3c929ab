// The Modbus RTU master of one bus: strictly one transaction at a time (a half-duplex RS-485 bus
// carries one conversation), the 3.5-character silent interval kept before each request (MODBUS
// over Serial Line 2.5.1.1), the answer assembled to the length its request implies, its CRC
// checked, a timeout and a bounded number of retries per request. Exceptions are not retried: the
// slave answered, and asking again gets the same answer.
import { setTimeout as sleep } from 'node:timers/promises'
import { checkAnswer, expectedLength, silentIntervalMs, type Request } from './modbus-frame.js'
import type { PortLink } from './port-link.js'

export type Outcome =
  | { kind: 'ok'; frame: Buffer }
  | { kind: 'exception'; code: number; message: string }
  /** No valid answer after every try: silence, corrupt frames or answers that do not fit. */
  | { kind: 'no_answer'; reason: 'timeout' | 'crc' | 'mismatch' }
  | { kind: 'port_closed' }

/** What happened on one try, for the per-device counters. */
export type AttemptEvent = 'timeout' | 'crc' | 'mismatch' | 'exception' | 'answer'

/** The bus's own counters, every request counted (polls, writes and commissioning reads). */
export interface BusCounters {
  /** Requests written (each try). */
  requests: number
  /** Complete answer frames read back (valid, exceptions and corrupt ones). */
  answers: number
  timeouts: number
  /** Answers dropped as corrupt: bad CRC, or not fitting the request. */
  crcErrors: number
  exceptions: number
}

/** The last try that got no good answer. */
export interface BusFailure {
  kind: 'timeout' | 'crc' | 'mismatch' | 'exception'
  unitId: number
  message: string
  at: number
}

export interface TransactOptions {
  /** Not one of a configured device's requests (a technician's read): kept out of the devices' counters. */
  commissioning?: boolean
}

export class ModbusMaster {
  private chain: Promise<unknown> = Promise.resolve()
  private rx: Buffer = Buffer.alloc(0)
  private lastActivity = 0
  private onByte?: () => void
  private closed = false
  readonly counters: BusCounters = { requests: 0, answers: 0, timeouts: 0, crcErrors: 0, exceptions: 0 }
  lastFailure: BusFailure | null = null

  constructor(
    private readonly link: PortLink,
    private readonly opts: { timeoutMs: number; retries: number; baudRate: number; onAttempt?: (unitId: number, e: AttemptEvent) => void },
  ) {
    link.on('data', (chunk) => {
      this.lastActivity = performance.now()
      this.rx = Buffer.concat([this.rx, chunk])
      // A bounded buffer: bytes nobody waits for (noise, a late answer) are dropped at the next request.
      if (this.rx.length > 512) this.rx = this.rx.subarray(this.rx.length - 512)
      this.onByte?.()
    })
  }

  /** Stop taking transactions; the one in flight finishes on its timeout. */
  close(): void {
    this.closed = true
  }

  /** Run one transaction after those already queued on this bus. */
  transact(req: Request, opts: TransactOptions = {}): Promise<Outcome> {
    const run = this.chain.then(() => this.run(req, opts))
    this.chain = run.catch(() => undefined)
    return run
  }

  private async run(req: Request, opts: TransactOptions): Promise<Outcome> {
    const note = (e: AttemptEvent, detail?: string): void => {
      if (e === 'timeout') this.counters.timeouts++
      else this.counters.answers++
      if (e === 'crc' || e === 'mismatch') this.counters.crcErrors++
      if (e === 'exception') this.counters.exceptions++
      if (e !== 'answer') this.lastFailure = { kind: e, unitId: req.unitId, message: detail ?? e, at: Date.now() }
      if (!opts.commissioning) this.opts.onAttempt?.(req.unitId, e)
    }
    let last: 'timeout' | 'crc' | 'mismatch' = 'timeout'
    for (let attempt = 0; attempt <= this.opts.retries; attempt++) {
      if (this.closed || !this.link.isOpen) return { kind: 'port_closed' }
      await this.silence()
      this.rx = Buffer.alloc(0)
      try {
        await this.link.write(req.frame)
      } catch {
        return { kind: 'port_closed' }
      }
      this.counters.requests++
      this.lastActivity = performance.now()
      const frame = await this.awaitAnswer(req)
      if (!frame) {
        last = 'timeout'
        note('timeout', `unit ${req.unitId} did not answer within ${this.opts.timeoutMs} ms`)
        continue
      }
      const a = checkAnswer(req, frame)
      if (a.kind === 'ok') {
        note('answer')
        return a
      }
      if (a.kind === 'exception') {
        note('exception', `unit ${req.unitId} answered exception ${a.code} (${a.message})`)
        return a
      }
      last = a.kind
      note(a.kind, a.kind === 'crc' ? `a corrupt answer (bad CRC) from unit ${req.unitId}` : `an answer that did not fit the request to unit ${req.unitId}: ${a.detail}`)
    }
    return { kind: 'no_answer', reason: last }
  }

  /** Wait until the bus has been quiet for the silent interval (from the last byte either way). */
  private async silence(): Promise<void> {
    const quiet = silentIntervalMs(this.opts.baudRate)
    for (;;) {
      const wait = this.lastActivity + quiet - performance.now()
      if (wait <= 0) return
      await sleep(Math.ceil(wait))
    }
  }

  /** The answer frame once as many bytes arrived as the request implies; undefined on timeout. */
  private awaitAnswer(req: Request): Promise<Buffer | undefined> {
    return new Promise((resolve) => {
      const done = (frame: Buffer | undefined): void => {
        clearTimeout(timer)
        this.onByte = undefined
        resolve(frame)
      }
      const check = (): void => {
        // Leading bytes that cannot start the answer (noise, an echo of another unit) are skipped.
        while (this.rx.length > 0 && this.rx[0] !== req.unitId) this.rx = this.rx.subarray(1)
        const need = expectedLength(req, this.rx)
        if (need !== undefined && this.rx.length >= need) {
          const frame = Buffer.from(this.rx.subarray(0, need))
          this.rx = this.rx.subarray(need)
          done(frame)
        }
      }
      const timer = setTimeout(() => done(undefined), this.opts.timeoutMs)
      this.onByte = check
      check()
    })
  }
}
