// The intake gate: whether the gateway may acknowledge new work. It closes while the data disk is
// full (nothing may be acknowledged that cannot be made durable) and while the gateway stops, and
// probes the disk until there is room again.
import type { Logger } from './log.js'
import type { Metrics } from './metrics.js'
import { ErrorCodes } from './errors.js'
import { RESUME_FREE_BYTES, type Outbox } from '../store/outbox.js'

const DISK_PROBE_MS = 1_000

export class IntakeGate {
  private readonly listeners: ((open: boolean) => void)[] = []
  private probeTimer?: NodeJS.Timeout
  private stopping = false

  constructor(
    private readonly d: { outbox: Outbox; metrics: Metrics; log: Logger; dataDir: string },
  ) {}

  start(): void {
    this.d.outbox.on('full', (err: Error) => this.onDiskFull(err))
    this.d.outbox.on('writable', () => this.onDiskWritable())
    this.d.outbox.on('relieved', ({ ballastBytes, walBytes }: { ballastBytes: number; walBytes: number }) =>
      this.d.log.warn(
        { code: ErrorCodes.STORE_FULL, ballastBytes, walBytes },
        `data disk full: gave ${ballastBytes} reserved byte(s) (the ballast) and ${walBytes} WAL byte(s) back to the outbox, so that what the hub acknowledges can be deleted`,
      ),
    )
    // A gateway started on a full disk comes up degraded, refusing work, and probes for room.
    this.d.outbox.checkHeadroom()
  }

  isOpen(): boolean {
    return !this.d.outbox.isFull && !this.stopping
  }

  get diskFull(): boolean {
    return this.d.outbox.isFull
  }

  onChange(listener: (open: boolean) => void): void {
    this.listeners.push(listener)
  }

  /** The gateway is stopping: refuse new work from now on. */
  close(): void {
    this.stopping = true
    clearInterval(this.probeTimer)
  }

  private onDiskFull(err: Error): void {
    this.d.metrics.storeFull.set(1)
    this.d.metrics.rejected.inc({ reason: 'store_full' })
    this.d.log.error(
      { err: err.message, code: ErrorCodes.STORE_FULL, dataDir: this.d.dataDir },
      `data disk is full: no longer acknowledging messages; free space in the data folder and intake resumes by itself (once ${RESUME_FREE_BYTES >> 20} MiB are free)`,
    )
    for (const l of this.listeners) l(false)
    clearInterval(this.probeTimer)
    this.probeTimer = setInterval(() => {
      if (this.d.outbox.probe()) clearInterval(this.probeTimer)
    }, DISK_PROBE_MS)
  }

  private onDiskWritable(): void {
    clearInterval(this.probeTimer)
    this.d.metrics.storeFull.set(0)
    this.d.log.info('data disk writable again: intake resumed')
    for (const l of this.listeners) l(true)
  }
}
