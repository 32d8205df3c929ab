// One attempt at the gateway's own download of an image: streamed into a partial file in the data
// folder, resumed where an earlier attempt (or an earlier process, kill -9 included) stopped with
// `Range` and `If-Range` (RFC 9110 sections 14.2 and 13.1.5), over node's http/https with the
// hub's TLS settings, bounded by the declared size and paced by the shared bandwidth limit.
import { open, readFile, stat, truncate, writeFile } from 'node:fs/promises'
import http from 'node:http'
import https from 'node:https'

/** Why an attempt failed; `permanent` ones are not retried (the image or its server is wrong). */
export class FetchError extends Error {
  constructor(
    message: string,
    readonly kind: 'download' | 'size',
    readonly permanent: boolean,
  ) {
    super(message)
  }
}

export interface FetchTarget {
  url: string
  /** Where the bytes accumulate until the image is verified. */
  partPath: string
  /** The validator of what is in the part file (ETag or Last-Modified), for If-Range. */
  metaPath: string
  expectedSize: number
}

export interface FetchSettings {
  idleTimeoutMs: number
  ca?: Buffer
  rejectUnauthorized: boolean
  pace: BandwidthLimit
}

const MAX_REDIRECTS = 5

/** What the bandwidth limit reads the time from and waits with (a test's own clock in unit tests). */
export interface PaceClock {
  now(): number
  sleep(ms: number): Promise<void>
}

const realClock: PaceClock = { now: () => Date.now(), sleep: (ms) => new Promise((r) => setTimeout(r, ms)) }

/**
 * A token bucket shared by every download: at most `bytesPerSecond` in total (0 = unlimited), with
 * at most one second of burst. A chunk larger than one second's worth goes once the bucket is full
 * and leaves it in debt, so that large socket reads average out to the rate too.
 */
export class BandwidthLimit {
  private tokens: number
  private last: number

  constructor(
    private readonly bytesPerSecond: number,
    private readonly clock: PaceClock = realClock,
  ) {
    this.tokens = bytesPerSecond
    this.last = clock.now()
  }

  async take(n: number, signal?: AbortSignal): Promise<void> {
    if (this.bytesPerSecond <= 0) return
    const needed = Math.min(n, this.bytesPerSecond)
    for (;;) {
      const now = this.clock.now()
      this.tokens = Math.min(this.bytesPerSecond, this.tokens + ((now - this.last) / 1000) * this.bytesPerSecond)
      this.last = now
      if (this.tokens >= needed) {
        this.tokens -= n
        return
      }
      if (signal?.aborted) throw new FetchError('aborted', 'download', false)
      // Until the bucket holds what this chunk needs (not the whole chunk: the rest is debt).
      await this.clock.sleep(Math.max(10, ((needed - this.tokens) / this.bytesPerSecond) * 1000))
    }
  }
}

interface Validator {
  etag?: string
  lastModified?: string
}

/** Bytes already in the part file (0 when there is none). */
export async function partBytes(path: string): Promise<number> {
  return stat(path).then(
    (s) => s.size,
    () => 0,
  )
}

/** One attempt: resolves once the part file holds `expectedSize` bytes, fsynced; throws FetchError otherwise. */
export async function fetchOnce(t: FetchTarget, s: FetchSettings, signal: AbortSignal): Promise<void> {
  let have = await partBytes(t.partPath)
  if (have > t.expectedSize) {
    await truncate(t.partPath, 0)
    have = 0
  }
  if (have === t.expectedSize) return
  const validator: Validator = have > 0 ? await readFile(t.metaPath, 'utf8').then((x) => JSON.parse(x) as Validator, () => ({})) : {}
  const headers: Record<string, string> = { 'user-agent': 'iothub-edge-ota', 'accept-encoding': 'identity' }
  if (have > 0) {
    headers.range = `bytes=${have}-`
    // Only a strong validator may guard a range (RFC 9110 13.1.5): otherwise the md5 check catches a changed file.
    const strong = validator.etag && !validator.etag.startsWith('W/') ? validator.etag : validator.lastModified
    if (strong) headers['if-range'] = strong
  }
  const res = await request(t.url, headers, s, signal)
  const status = res.statusCode ?? 0
  let from: number
  if (status === 206) {
    const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(res.headers['content-range'] ?? ''))
    if (!m || Number(m[1]) !== have) {
      res.resume()
      await truncate(t.partPath, 0)
      throw new FetchError(`server answered a range other than the one asked (${String(res.headers['content-range'])}); starting over`, 'download', false)
    }
    if (m[3] !== '*' && Number(m[3]) !== t.expectedSize) {
      res.resume()
      throw new FetchError(`the server's file is ${m[3]} bytes, the command says ${t.expectedSize}`, 'size', true)
    }
    from = have
  } else if (status === 200) {
    from = 0
    const length = res.headers['content-length']
    if (length !== undefined && Number(length) !== t.expectedSize) {
      res.resume()
      throw new FetchError(`the server's file is ${length} bytes, the command says ${t.expectedSize}`, 'size', true)
    }
    const v: Validator = { etag: header(res.headers.etag), lastModified: header(res.headers['last-modified']) }
    await writeFile(t.metaPath, JSON.stringify(v))
  } else if (status === 416) {
    res.resume()
    await truncate(t.partPath, 0)
    throw new FetchError('server refused the resume range (416); starting over', 'download', false)
  } else {
    res.resume()
    // 4xx: the URL is wrong or not allowed (retrying will not help, except 408/429); 5xx: the server may recover.
    const permanent = status >= 400 && status < 500 && status !== 408 && status !== 429
    throw new FetchError(`server answered HTTP ${status}`, 'download', permanent)
  }
  // Written chunk by chunk as it arrives: when the connection is cut, everything received is in the
  // file (nothing buffered in a stream is thrown away), so the next attempt resumes from there.
  res.setTimeout(s.idleTimeoutMs, () => res.destroy(new FetchError(`nothing received for ${s.idleTimeoutMs / 1000} s`, 'download', false)))
  const fh = await open(t.partPath, from === 0 ? 'w' : 'a')
  let written = from
  try {
    for await (const chunk of res as AsyncIterable<Buffer>) {
      if (written + chunk.length > t.expectedSize) throw new FetchError(`the server sent more than the ${t.expectedSize} bytes the command says`, 'size', true)
      await s.pace.take(chunk.length, signal)
      await fh.write(chunk)
      written += chunk.length
    }
    if (written !== t.expectedSize) throw new FetchError(`download ended after ${written} of ${t.expectedSize} bytes`, 'download', false)
    await fh.sync()
  } catch (err) {
    res.destroy()
    if (err instanceof FetchError) throw err
    throw new FetchError(`download cut after ${written} of ${t.expectedSize} bytes (${(err as Error).message})`, 'download', false)
  } finally {
    await fh.close()
  }
}

function header(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v
}

function request(url: string, headers: Record<string, string>, s: FetchSettings, signal: AbortSignal, redirects = 0): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    let u: URL
    try {
      u = new URL(url)
    } catch {
      return reject(new FetchError(`not a URL: ${url}`, 'download', true))
    }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return reject(new FetchError(`cannot fetch ${u.protocol} URLs (http and https only)`, 'download', true))
    const lib = u.protocol === 'https:' ? https : http
    const req = lib.get(u, { headers, signal, timeout: s.idleTimeoutMs, ...(u.protocol === 'https:' ? { ca: s.ca, rejectUnauthorized: s.rejectUnauthorized } : {}) }, (res) => {
      const status = res.statusCode ?? 0
      if (status >= 300 && status < 400 && res.headers.location) {
        res.resume()
        if (redirects >= MAX_REDIRECTS) return reject(new FetchError(`more than ${MAX_REDIRECTS} redirects`, 'download', true))
        return resolve(request(new URL(res.headers.location, u).toString(), headers, s, signal, redirects + 1))
      }
      resolve(res)
    })
    req.on('timeout', () => req.destroy(new Error(`no answer within ${s.idleTimeoutMs / 1000} s`)))
    req.on('error', (err) => reject(err instanceof FetchError ? err : new FetchError(`${u.host}: ${err.message}`, 'download', false)))
  })
}
