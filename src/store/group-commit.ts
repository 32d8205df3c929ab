// When a group commit runs, for the stores that batch their writes (the outbox, the broker's
// sessions): everything queued in one turn of the event loop joins one transaction (`now`: after the
// current I/O phase, so every packet parsed from the sockets readable in this turn is in it), and
// what need not be durable at once waits at most `lazyMs` for a commit (`later`). A commit that runs
// asynchronously (the outbox's, on its writer thread) is never started twice at once: a request while
// one is in flight runs as soon as it has finished, with everything that gathered meanwhile.
export class GroupCommit {
  private scheduled = false
  private timer?: NodeJS.Timeout
  private inFlight?: Promise<void>
  private again = false

  constructor(
    /** Commits what is waiting; a promise while the commit is still running elsewhere. */
    private readonly commit: () => void | Promise<void>,
    private readonly lazyMs: number,
  ) {}

  /** Commit after the current I/O phase. */
  now(): void {
    if (this.scheduled) return
    this.scheduled = true
    setImmediate(this.fire)
  }

  /** Commit within `lazyMs`, unless one runs sooner. */
  later(): void {
    if (!this.timer && !this.scheduled) this.timer = setTimeout(this.fire, this.lazyMs)
  }

  /** A commit is starting (called by the store's flush): pending requests are served by it. */
  taken(): void {
    this.scheduled = false
    clearTimeout(this.timer)
    this.timer = undefined
  }

  /** The commit in flight, if any (resolves when it has finished, never rejects). */
  get running(): Promise<void> | undefined {
    return this.inFlight
  }

  /** Keep this commit's promise; once it settles, a commit asked for meanwhile runs. */
  track(p: Promise<void>): Promise<void> {
    const done: Promise<void> = p.then(
      () => this.settled(done),
      () => this.settled(done),
    )
    this.inFlight = done
    return done
  }

  cancel(): void {
    this.taken()
    this.again = false
  }

  private settled(p: Promise<void>): void {
    if (this.inFlight === p) this.inFlight = undefined
    if (this.again) {
      this.again = false
      this.now()
    }
  }

  private readonly fire = (): void => {
    if (this.inFlight) {
      this.scheduled = false
      this.again = true
      return
    }
    this.taken()
    void this.commit()
  }
}
