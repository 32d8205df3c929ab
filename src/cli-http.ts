// The CLI's requests to the gateway running on the same data folder: plain http, or https with
// http.tls. Over https the certificate is pinned: runtime.json names the file the gateway serves
// and its SHA-256 fingerprint, and the connection is accepted only when the gateway presents that
// very certificate (a self-signed one as well as an operator's, whatever names it carries: the CLI
// reaches 127.0.0.1). Node's fetch cannot be given a trust anchor, hence node:http(s).
import http from 'node:http'
import https from 'node:https'
import { readFileSync } from 'node:fs'
import type { Readable } from 'node:stream'
import type { RuntimeInfo } from './web/runtime-files.js'

export interface Endpoint {
  base: string
  /** PEM of the certificate the gateway serves, and its fingerprint: both from runtime.json. */
  pin?: { ca: string; sha256: string }
}

export function endpoint(host: string, runtime: Pick<RuntimeInfo, 'httpPort' | 'scheme' | 'certSha256' | 'certFile'>): Endpoint {
  const h = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host
  const scheme = runtime.scheme ?? 'http'
  const base = `${scheme}://${h.includes(':') ? `[${h}]` : h}:${runtime.httpPort}`
  if (scheme !== 'https') return { base }
  if (!runtime.certSha256 || !runtime.certFile) throw new Error('the gateway serves https but its runtime.json names no certificate to trust: restart the gateway with this version')
  return { base, pin: { ca: readFileSync(runtime.certFile, 'utf8'), sha256: runtime.certSha256 } }
}

export interface Answer {
  status: number
  text: string
  /** The body as received (a binary download: the diagnostics bundle). */
  bytes: Buffer
  headers: http.IncomingHttpHeaders
}

export function request(ep: Endpoint, method: string, path: string, headers: Record<string, string>, body?: string | Readable, timeoutMs = 15_000): Promise<Answer> {
  const url = new URL(path, ep.base)
  const pin = ep.pin
  const options: https.RequestOptions = {
    method,
    headers,
    timeout: timeoutMs,
    // A connection of its own: a reused TLS session would skip the pin check below.
    agent: false,
    ...(pin
      ? {
          ca: pin.ca,
          // The served file may be a leaf issued by a CA (an operator's certificate): trust it as it is.
          allowPartialTrustChain: true,
          checkServerIdentity: (_host: string, cert: { fingerprint256: string }) =>
            cert.fingerprint256 === pin.sha256 ? undefined : new Error(`the gateway's certificate (${cert.fingerprint256}) is not the one in runtime.json (${pin.sha256})`),
        }
      : {}),
  }
  return new Promise((resolve, reject) => {
    const req = (url.protocol === 'https:' ? https : http).request(url, options, (res) => {
      const chunks: Buffer[] = []
      res.on('data', (c: Buffer) => chunks.push(c))
      res.on('end', () => {
        const bytes = Buffer.concat(chunks)
        resolve({ status: res.statusCode ?? 0, text: bytes.toString('utf8'), bytes, headers: res.headers })
      })
      res.on('error', reject)
    })
    req.on('timeout', () => req.destroy(new Error(`no answer from ${ep.base} within ${timeoutMs / 1000} s`)))
    req.on('error', reject)
    if (body === undefined || typeof body === 'string') req.end(body)
    else body.on('error', (err) => req.destroy(err)).pipe(req)
  })
}
