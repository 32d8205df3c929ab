// A Server-Sent Events client as a browser's EventSource reads a stream: over real HTTP (fetch),
// events split on blank lines, `event:` and `data:` fields, comments (`: ping`) kept apart.
// Tests wait for an event that matches; everything received is kept for their failure messages.
import { setTimeout as sleep } from 'node:timers/promises'

export interface SseEvent {
  event: string
  /** The `data:` field parsed as JSON (the gateway sends JSON only). */
  data: any
}

export class SseClient {
  readonly events: SseEvent[] = []
  readonly comments: string[] = []
  status = 0
  contentType = ''
  private readonly abort = new AbortController()
  private buffer = ''
  private ended = false
  private reading?: Promise<void>

  constructor(
    private readonly url: string,
    private readonly headers: Record<string, string> = {},
  ) {}

  /** Connects and resolves once the response headers are in (a non-200 is kept in `status`). */
  async open(): Promise<this> {
    const res = await fetch(this.url, { headers: { accept: 'text/event-stream', ...this.headers }, signal: this.abort.signal })
    this.status = res.status
    this.contentType = res.headers.get('content-type') ?? ''
    if (res.status !== 200 || !res.body) {
      await res.text().catch(() => undefined)
      this.ended = true
      return this
    }
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader()
    this.reading = (async () => {
      try {
        for (;;) {
          const { value, done } = await reader.read()
          if (done) break
          this.take(value)
        }
      } catch {
        // aborted by close(), or the server went away
      } finally {
        this.ended = true
      }
    })()
    return this
  }

  get closed(): boolean {
    return this.ended
  }

  /** The first event of this type (since `from`) matching the predicate; throws with what arrived after the timeout. */
  async waitFor(event: string, predicate: (data: any) => boolean = () => true, timeoutMs = 15_000, from = 0): Promise<SseEvent> {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const found = this.events.slice(from).find((e) => e.event === event && predicate(e.data))
      if (found) return found
      if (Date.now() > deadline || this.ended) {
        const seen = this.events.map((e) => `${e.event} ${JSON.stringify(e.data).slice(0, 200)}`).join('\n')
        throw new Error(`no "${event}" event matching ${predicate.toString()} within ${timeoutMs} ms${this.ended ? ' (stream ended)' : ''}; received:\n${seen}`)
      }
      await sleep(50)
    }
  }

  async close(): Promise<void> {
    this.abort.abort()
    await this.reading
  }

  private take(chunk: string): void {
    this.buffer += chunk
    for (let end = this.buffer.indexOf('\n\n'); end >= 0; end = this.buffer.indexOf('\n\n')) {
      const block = this.buffer.slice(0, end)
      this.buffer = this.buffer.slice(end + 2)
      let event = 'message'
      const data: string[] = []
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) this.comments.push(line.slice(1).trim())
        else if (line.startsWith('event:')) event = line.slice(6).trim()
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''))
      }
      if (data.length) this.events.push({ event, data: JSON.parse(data.join('\n')) })
    }
  }
}
