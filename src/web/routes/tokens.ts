// /api/tokens: API tokens for scripts, made and revoked from the web UI (or with any credential
// the API takes). A token is shown once, in the 201 answer; the gateway keeps its SHA-256 only.
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyPluginAsync } from 'fastify'
import type { UiAuth } from '../auth-service.js'

const NewToken = Type.Object(
  { name: Type.String({ minLength: 1, maxLength: 64, pattern: '\\S', description: 'a name of 1 to 64 characters (what the token is for)' }) },
  { additionalProperties: false },
)
const TokenId = Type.Object({ id: Type.String({ pattern: '^[0-9a-f]{16}$', description: 'a token id (16 hex digits, from GET /api/tokens)' }) })

export const tokenRoutes: FastifyPluginAsync<{ ui: UiAuth }> = async (app, { ui }) => {
  app.get('/tokens', async () => ({ tokens: ui.listTokens() }))

  app.post<{ Body: Static<typeof NewToken> }>('/tokens', { schema: { body: NewToken } }, async (req, reply) => {
    const c = req.credential
    const by = c?.kind === 'session' ? (c.session?.username ?? null) : c?.kind === 'api-token' ? `api-token:${c.apiTokenId}` : 'api-token-file'
    reply.header('cache-control', 'no-store')
    return reply.code(201).send(ui.createToken(req.body.name.trim(), by))
  })

  app.delete<{ Params: Static<typeof TokenId> }>('/tokens/:id', { schema: { params: TokenId } }, async (req, reply) => {
    if (!ui.revokeToken(req.params.id)) return reply.code(404).send({ error: 'not_found', message: `no API token ${req.params.id}` })
    return reply.code(204).send()
  })
}
