// The API's one credential: `Authorization: Bearer <token>`.
import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyReply, FastifyRequest } from 'fastify'

/** The 401 body; `where`: where an operator finds the token (the file, or the config key). */
export const unauthorized = (where = 'api-token in the gateway\'s data folder'): { error: string; message: string } => ({
  error: 'unauthorized',
  message: `send Authorization: Bearer <token> (the token is in ${where})`,
})

// Both sides are hashed first: timingSafeEqual needs equal lengths, and comparing digests keeps
// the time independent of the length of what was sent.
const digest = (s: string): Buffer => createHash('sha256').update(s).digest()

/** An onRequest hook; registered on a scope, so it guards that scope's routes however the URL is spelled. */
export function requireBearerToken(token: string, where?: string): (req: FastifyRequest, reply: FastifyReply) => Promise<FastifyReply | undefined> {
  if (!token) throw new Error('the web API needs a non-empty token: an empty one would match a missing header')
  const expected = digest(token)
  const refusal = unauthorized(where)
  return async (req, reply) => {
    const sent = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '')?.[1] ?? ''
    if (!timingSafeEqual(digest(sent), expected)) return reply.code(401).send(refusal)
    return undefined
  }
}
