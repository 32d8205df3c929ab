// The OTA relay over HTTP: the images devices fetch (`GET|HEAD /ota/{token}`, byte ranges per
// RFC 9110 section 14, mounted outside /api: the unguessable token in the URL is the device's
// credential, as the hub's own image URLs are), and the technician's API under /api/ota/.
import { createReadStream } from 'node:fs'
import type { Readable } from 'node:stream'
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import rangeParser from 'range-parser'
import type { LocalFiles } from '../core/local-files.js'
import { isFileToken } from '../core/local-files.js'
import type { DeviceRef } from '../core/types.js'
import { parseDeviceKey } from '../core/types.js'
import { ImageRefused, UnknownDevices, type OtaRelay } from './ota-relay.js'

/** `GET|HEAD /{token}`: 200 or 206 with Content-Range, 416 for a range past the end, ETag, If-Range. */
export function fileRoutes(files: LocalFiles): FastifyPluginAsync {
  return async (app) => {
    const serve = async (req: FastifyRequest<{ Params: { token: string } }>, reply: FastifyReply): Promise<FastifyReply> => {
      const file = isFileToken(req.params.token) ? files.open(req.params.token) : undefined
      if (!file) return reply.code(404).send({ error: 'not_found', message: 'no such image, or its job ended or expired' })
      const etag = `"${file.etag}"`
      void reply.header('accept-ranges', 'bytes').header('etag', etag).header('content-type', 'application/octet-stream').header('cache-control', 'no-store')
      let start = 0
      let end = file.size - 1
      let status = 200
      const range = req.headers.range
      const ifRange = req.headers['if-range']
      // If-Range with another validator: the client's partial copy is stale, it gets the whole image.
      if (range && (ifRange === undefined || ifRange === etag)) {
        const r = rangeParser(file.size, range, { combine: true })
        if (r === -1) return reply.code(416).header('content-range', `bytes */${file.size}`).send()
        // -2 (malformed) and several ranges: served whole, as RFC 9110 14.2 allows.
        if (r !== -2 && r.type === 'bytes' && r.length === 1) {
          start = r[0].start
          end = r[0].end
          status = 206
          void reply.header('content-range', `bytes ${start}-${end}/${file.size}`)
        }
      }
      const length = Math.max(0, end - start + 1)
      void reply.code(status).header('content-length', String(length))
      if (req.method === 'HEAD') {
        // Written by hand: fastify would set Content-Length to the empty body's 0 (RFC 9110 9.3.2: the GET's length).
        reply.hijack()
        reply.raw.writeHead(status, reply.getHeaders() as Record<string, string>)
        reply.raw.end()
        return reply
      }
      if (length === 0) return reply.send()
      const stream = createReadStream(file.path, { start, end })
      let sent = 0
      stream.on('data', (c) => (sent += c.length))
      stream.on('close', () => file.served(sent, 'http'))
      return reply.send(stream)
    }
    app.get('/:token', serve)
  }
}

/** /api/ota/: images (list, upload), jobs (list, create). */
export function apiRoutes(ota: OtaRelay): FastifyPluginAsync {
  return async (app) => {
    // An image is a raw body streamed to the cache, never buffered whole.
    app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload))
    app.get('/images', async () => ({ images: await ota.images() }))
    app.post('/images', async (req: FastifyRequest<{ Querystring: { version?: string; type?: string } }>, reply) => {
      const { version, type } = req.query
      if (!version || !type) return reply.code(400).send({ error: 'bad_request', message: 'version and type are required in the query (?version=1.2.3&type=firmware)' })
      if (!req.headers['content-type']?.startsWith('application/octet-stream')) {
        return reply.code(415).send({ error: 'unsupported_media_type', message: 'send the image as the body with Content-Type: application/octet-stream' })
      }
      const length = req.headers['content-length'] === undefined ? undefined : Number(req.headers['content-length'])
      try {
        const img = await ota.upload(req.body as Readable, { version, type, length })
        return reply.code(201).send({ image: img })
      } catch (err) {
        if (err instanceof ImageRefused) return reply.code(413).send({ error: 'refused', message: err.message })
        throw err
      }
    })
    app.get('/jobs', async () => ({ jobs: ota.jobs() }))
    app.post('/jobs', async (req: FastifyRequest<{ Body: { image?: unknown; devices?: unknown; tag?: unknown; productId?: unknown; expiresAt?: unknown; maxConcurrent?: unknown } }>, reply) => {
      const b = req.body ?? {}
      const devices = Array.isArray(b.devices) ? b.devices.filter((d): d is string => typeof d === 'string' && d.includes('/')).map(parseDeviceKey) : []
      const tag = typeof b.tag === 'string' && typeof b.productId === 'string' ? { productId: b.productId, tag: b.tag } : undefined
      const maxConcurrent = b.maxConcurrent
      const badLimit = maxConcurrent !== undefined && !(typeof maxConcurrent === 'number' && Number.isSafeInteger(maxConcurrent) && maxConcurrent >= 0)
      if (typeof b.image !== 'string' || (devices.length === 0 && !tag) || badLimit) {
        return reply.code(400).send({
          error: 'bad_request',
          message: 'body: {"image": md5 or key, "devices": ["p/d", ...]} or {"image", "productId", "tag"}; optional "expiresAt" (UNIX seconds), "maxConcurrent" (devices at once, a whole number, 0 = no limit)',
        })
      }
      try {
        const job = ota.createJob({ image: b.image, devices: devices as DeviceRef[], tag, expiresAt: typeof b.expiresAt === 'number' ? b.expiresAt : undefined, maxConcurrent: maxConcurrent as number | undefined })
        // Nothing sent (unknown devices, a tag no device carries): no job, and the answer says so.
        if (job.devices.length === 0) {
          return reply.code(400).send({ error: 'no_devices', message: `no device to send the image to: ${tag ? `no enabled device of product ${tag.productId} has the tag ${tag.tag}` : 'the command was not taken'}` })
        }
        return reply.code(201).send(job)
      } catch (err) {
        if (err instanceof UnknownDevices) return reply.code(400).send({ error: 'unknown_devices', message: err.message })
        if (err instanceof ImageRefused) return reply.code(404).send({ error: 'not_found', message: err.message })
        throw err
      }
    })
  }
}
