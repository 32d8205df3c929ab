// ChirpStack's HTTP integration (per application: `POST {url}?event=up|join|ack|txack|status|log`,
// the body the same JSON (`application/json`) or protobuf (`application/octet-stream`) as on MQTT).
// The gateway answers 200 only once the event is durable, 400 for an event it cannot read (counted,
// dropped), 503 while it cannot store; the shared secret travels in a header ChirpStack's
// integration is configured to send. A listener of the adapter's own, so ChirpStack needs neither
// the gateway's API token nor access to its API.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { timingSafeEqual, createHash } from 'node:crypto'

const MAX_BODY = 1024 * 1024

export interface HttpIntakeOptions {
  host: string
  port: number
  path: string
  secretHeader: string
  secret: string
}

export type EventHandler = (source: string, type: string, body: Buffer, encoding: 'json' | 'protobuf') => Promise<'taken' | 'bad'>

const digest = (s: string): Buffer => createHash('sha256').update(s).digest()

export class HttpIntake {
  private server?: Server
  private readonly secretDigest: Buffer

  constructor(
    private readonly opts: HttpIntakeOptions,
    private readonly onEvent: EventHandler,
    private readonly onRefused: (status: number, why: string, remote: string | undefined) => void,
  ) {
    this.secretDigest = digest(opts.secret)
  }

  get port(): number {
    const a = this.server?.address()
    return typeof a === 'object' && a ? a.port : this.opts.port
  }

  async start(): Promise<void> {
    const server = createServer((req, res) => void this.serve(req, res))
    this.server = server
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.opts.port, this.opts.host, () => {
        server.off('error', reject)
        resolve()
      })
    })
  }

  async stop(): Promise<void> {
    const server = this.server
    this.server = undefined
    if (!server) return
    // Requests in flight finish (their events become durable and are answered); no new ones.
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }

  private async serve(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://intake')
    const answer = (status: number, message: string): void => {
      if (status >= 400) this.onRefused(status, message, req.socket.remoteAddress)
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' }).end(`${message}\n`)
    }
    if (url.pathname !== this.opts.path) return answer(404, `not found; ChirpStack's HTTP integration posts to ${this.opts.path}?event=...`)
    if (req.method !== 'POST') return answer(405, 'POST only')
    const given = req.headers[this.opts.secretHeader.toLowerCase()]
    if (typeof given !== 'string' || !timingSafeEqual(digest(given), this.secretDigest)) return answer(401, `missing or wrong ${this.opts.secretHeader} header`)
    const type = url.searchParams.get('event') ?? ''
    const contentType = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase()
    const encoding = contentType === 'application/json' ? 'json' : contentType === 'application/octet-stream' || contentType === 'application/x-protobuf' ? 'protobuf' : undefined
    if (!encoding) return answer(415, 'content-type must be application/json or application/octet-stream (protobuf)')
    const chunks: Buffer[] = []
    let size = 0
    try {
      for await (const chunk of req) {
        size += (chunk as Buffer).length
        if (size > MAX_BODY) return answer(413, `body larger than ${MAX_BODY} bytes`)
        chunks.push(chunk as Buffer)
      }
    } catch {
      return // the client went away mid-body: nothing to answer
    }
    try {
      const result = await this.onEvent(`http ${req.socket.remoteAddress ?? ''}`, type, Buffer.concat(chunks), encoding)
      if (result === 'bad') return answer(400, 'not a readable ChirpStack event (counted in iothub_edge_lorawan_bad_events_total)')
      answer(200, 'ok')
    } catch (err) {
      answer(503, `not stored, send it again: ${(err as Error).message}`)
    }
  }
}
