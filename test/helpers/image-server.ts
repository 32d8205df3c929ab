// The image server of the OTA tests (issue 11): node's own http or https server with a test CA's
// certificate, GET /{name} with ETag and single byte ranges, serving each image whole, cut half-way
// (the connection drops) or trickled (half of it, slowly, then nothing until the mode changes).
import { createHash } from 'node:crypto'
import http from 'node:http'
import https from 'node:https'
import type { AddressInfo } from 'node:net'

export type Mode = 'whole' | 'cut' | 'trickle'

export interface Served {
  body: Buffer
  mode: Mode
  /** trickle: bytes written so far by the first response. */
  trickled: number
}

/** The image server: GET /{name} over http (or https with `tls`), with ETag and single byte ranges, in the mode each image is set to. */
export class ImageServer {
  readonly images = new Map<string, Served>()
  readonly requests: { name: string; range?: string; ifRange?: string }[] = []
  private readonly server: http.Server
  port = 0

  constructor(private readonly tls?: { cert: Buffer; key: Buffer }) {
    this.server = tls ? https.createServer(tls, (req, res) => this.serve(req, res)) : http.createServer((req, res) => this.serve(req, res))
  }

  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()))
    this.port = (this.server.address() as AddressInfo).port
  }

  async close(): Promise<void> {
    this.server.closeAllConnections()
    await new Promise((r) => this.server.close(r))
  }

  add(name: string, body: Buffer, mode: Mode = 'whole'): { url: string; md5: string; size: number } {
    this.images.set(name, { body, mode, trickled: 0 })
    return { url: `${this.tls ? 'https' : 'http'}://127.0.0.1:${this.port}/${name}`, md5: createHash('md5').update(body).digest('hex'), size: body.length }
  }

  fullRequests(name: string): number {
    return this.requests.filter((r) => r.name === name && !r.range).length
  }

  private serve(req: http.IncomingMessage, res: http.ServerResponse): void {
    const name = (req.url ?? '/').split('?')[0].slice(1)
    this.requests.push({ name, range: req.headers.range, ifRange: req.headers['if-range'] as string | undefined })
    const img = this.images.get(name)
    if (!img) return void res.writeHead(404).end()
    const etag = `"${createHash('sha1').update(img.body).digest('hex')}"`
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '')
    const from = m && (!req.headers['if-range'] || req.headers['if-range'] === etag) ? Number(m[1]) : 0
    if (from >= img.body.length && m) return void res.writeHead(416, { 'content-range': `bytes */${img.body.length}` }).end()
    const part = img.body.subarray(from)
    res.writeHead(from ? 206 : 200, {
      etag,
      'content-length': part.length,
      ...(from ? { 'content-range': `bytes ${from}-${img.body.length - 1}/${img.body.length}` } : {}),
    })
    if (img.mode === 'cut' && from === 0) {
      // Half of it, then the connection drops.
      res.write(part.subarray(0, part.length >> 1), () => res.destroy())
      return
    }
    if (img.mode === 'trickle') {
      const timer = setInterval(() => {
        if (img.mode !== 'trickle' || img.trickled >= part.length >> 1) {
          clearInterval(timer)
          return
        }
        const chunk = part.subarray(img.trickled, img.trickled + 8192)
        img.trickled += chunk.length
        res.write(chunk)
      }, 50)
      res.on('close', () => clearInterval(timer))
      return
    }
    res.end(part)
  }
}
