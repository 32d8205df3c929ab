// systemd integration (sd_notify protocol, through the systemd-notify tool): READY=1 once the
// gateway has started, WATCHDOG=1 at half the watchdog interval for as long as the event loop
// turns (a wedged loop misses it and systemd restarts the service), STOPPING=1 on shutdown. Does
// nothing unless systemd asked for it (NOTIFY_SOCKET). The unit needs NotifyAccess=all, since the
// messages come from the systemd-notify child on the gateway's behalf.
import { spawn } from 'node:child_process'
import type { Logger } from './log.js'

export class SystemdNotifier {
  private timer?: NodeJS.Timeout
  private failed = false

  constructor(
    private readonly log: Logger,
    private readonly env: NodeJS.ProcessEnv = process.env,
  ) {}

  get enabled(): boolean {
    return !!this.env.NOTIFY_SOCKET
  }

  private notify(...args: string[]): void {
    const child = spawn('systemd-notify', [`--pid=${process.pid}`, ...args], { stdio: 'ignore', env: this.env })
    child.on('error', (err) => {
      if (this.failed) return
      this.failed = true
      this.log.warn({ err: err.message }, 'systemd-notify failed: readiness and watchdog are not reported (install systemd or unset NOTIFY_SOCKET)')
    })
  }

  ready(): void {
    if (!this.enabled) return
    this.notify('--ready')
    const usec = Number(this.env.WATCHDOG_USEC)
    if (usec > 0) {
      this.timer = setInterval(() => this.notify('WATCHDOG=1'), Math.max(100, usec / 2000))
      this.timer.unref()
    }
  }

  stopping(): void {
    if (!this.enabled) return
    clearInterval(this.timer)
    this.notify('STOPPING=1')
  }
}
