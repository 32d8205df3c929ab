// Request validation: TypeBox schemas compiled by Ajv, and one 400 body for every failure,
// `{"error": "bad_request", "message": "<field> must be <what>"}`, the shape the API answered
// before it had schemas (the CLI and integrators read it). Schemas carry the "what" in
// `description`, so the wording lives next to the rule it explains.
import { Ajv, type ErrorObject, type Options } from 'ajv'
import { createRequire } from 'node:module'
import type { FastifySchemaValidationError, FastifyServerOptions } from 'fastify'

// allErrors stays off as in fastify's defaults: with it a crafted body makes Ajv do unbounded work.
// verbose gives each error its schema, where the description is.
const common: Options = { allErrors: false, useDefaults: true, strict: false, verbose: true }
// A JSON body carries its own types: "false" is not a boolean, "5" not a number. Path and query
// strings have none, so those are coerced as fastify does by default.
const bodyAjv = new Ajv({ ...common, coerceTypes: false })
const urlAjv = new Ajv({ ...common, coerceTypes: 'array' })

/** The failure as one sentence that names the field (fastify's schemaErrorFormatter). */
export function describeValidationError(errors: FastifySchemaValidationError[], dataVar: string): Error {
  const all = errors as ErrorObject[]
  // A union reports each branch before its own summary; the first error with a description is the one to show.
  const e = all.find((x) => expected(x) !== undefined) ?? all[0]
  const what = expected(e)
  const field = fieldOf(e) || dataVar
  if (e.keyword === 'required') return new Error(what ? `${field} is required and must be ${what}` : `${field} is required`)
  return new Error(what ? `${field} must be ${what}` : `${field} ${e.message ?? 'is invalid'}`)
}

function expected(e: ErrorObject): string | undefined {
  const schema = e.parentSchema as { description?: string; properties?: Record<string, { description?: string }> } | undefined
  if (e.keyword === 'required') return schema?.properties?.[String(e.params.missingProperty)]?.description
  return schema?.description
}

/** `/tags/0` -> `tags[0]`; a missing property is named too. */
function fieldOf(e: ErrorObject): string {
  const parts = e.instancePath.split('/').slice(1)
  if (e.keyword === 'required') parts.push(String(e.params.missingProperty))
  return parts.reduce((path, p) => (/^\d+$/.test(p) ? `${path}[${p}]` : path ? `${path}.${p}` : p), '')
}

type CompilersFactory = NonNullable<NonNullable<FastifyServerOptions['schemaController']>['compilersFactory']>
type SerializerFactory = NonNullable<CompilersFactory['buildSerializer']>
type SerializerCompiler = ReturnType<SerializerFactory>

/**
 * fastify's compilers (its `schemaController.compilersFactory`): requests are validated by the
 * two Ajv above; answers are serialized as fastify does by default (fast-json-stringify,
 * through the compiler fastify itself would load), but each route's serializer is compiled by its
 * first answer, not at start. An idle gateway then never loads fast-json-stringify, its Ajv and
 * fastify's default validator compiler (~2 MB of heap; docs/performance.md "2026-12-03").
 */
export const schemaCompilers: CompilersFactory = {
  buildValidator: () => ({ schema, httpPart }) => (httpPart === 'body' ? bodyAjv : urlAjv).compile(schema as object),
  buildSerializer: (externalSchemas, options) => {
    let compiler: SerializerCompiler | undefined
    return (route) => {
      let serialize: ((data: unknown) => string) | undefined
      return (data) => {
        compiler ??= (fastifyRequire()('@fastify/fast-json-stringify-compiler') as () => SerializerFactory)()(externalSchemas, options)
        return (serialize ??= compiler(route))(data)
      }
    }
  },
}

/** `require` as fastify's own module resolves it (its serializer compiler is fastify's dependency, not ours). */
function fastifyRequire(): NodeJS.Require {
  const require = createRequire(import.meta.url)
  return createRequire(require.resolve('fastify'))
}
