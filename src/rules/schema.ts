// The `rules:` section of the config (composed into the root schema by src/config.ts). Expressions
// are CEL strings here; src/rules/compile.ts compiles them at start and reports each error with its
// key path, the way the schema's own errors are reported.
import { Type, type Static, type TOptional, type TSchema } from '@sinclair/typebox'
import { ID_PATTERN, ID_RULE } from '../core/hub-topics.js'

const Cel = (description: string) => Type.String({ minLength: 1, description: `CEL: ${description}` })
const Name = Type.String({ pattern: ID_PATTERN, description: ID_RULE })

export const AGGREGATES = ['min', 'max', 'avg', 'sum', 'count', 'last'] as const
export type Aggregate = (typeof AGGREGATES)[number]

const DropAction = { drop: Type.Literal(true, { description: 'nothing goes up; the device is still acknowledged' }) }

const TransformAction = {
  transform: Type.Object(
    {
      payload: Type.Optional(Cel('the payload that goes up instead (usually a map: `{"celsius": payload.t}`)')),
      dataType: Type.Optional(Type.String({ pattern: ID_PATTERN, description: 'the DataType it goes up with instead' })),
    },
    { additionalProperties: false, minProperties: 1, description: 'what goes up instead: a new payload (CEL) and/or DataType' },
  ),
}

const ReportOnChangeAction = {
  reportOnChange: Type.Object(
    {
      fields: Type.Array(Type.String({ minLength: 1 }), { minItems: 1, description: 'payload fields compared (a.b for nested ones)' }),
      deadband: Type.Number({ default: 0, minimum: 0, description: 'a number must move more than this from the last reported value' }),
      heartbeatSeconds: Type.Integer({ default: 0, minimum: 0, description: 'up anyway once this long passed since the last report; 0 = never' }),
    },
    { additionalProperties: false, description: 'up only when a field moved beyond the deadband, or the heartbeat is due' },
  ),
}

const WindowAction = {
  window: Type.Object(
    {
      seconds: Type.Integer({ minimum: 1, description: 'tumbling window length, aligned to the epoch (so a restart does not shift it)' }),
      fields: Type.Array(Type.String({ minLength: 1 }), { minItems: 1, description: 'numeric payload fields aggregated' }),
      aggregates: Type.Array(Type.Union(AGGREGATES.map((a) => Type.Literal(a))), { minItems: 1, default: ['min', 'max', 'avg', 'count'] }),
      dataType: Type.Optional(Type.String({ pattern: ID_PATTERN, description: "the aggregate's DataType; default the message's" })),
    },
    { additionalProperties: false, description: "one aggregate per tumbling window and device instead of every reading; the rule's last action" },
  ),
}

const AlarmAction = {
  alarm: Type.Object(
    {
      name: Name,
      set: Cel('true raises the alarm'),
      clear: Cel('true clears it (hysteresis: use a threshold on the safe side of `set`)'),
      forSeconds: Type.Number({ default: 0, minimum: 0, description: 'set (or clear) must hold this long before the state changes (debounce)' }),
      value: Type.Optional(Cel('the value reported with a change; default the payload')),
    },
    { additionalProperties: false, description: 'raise and clear an alarm with hysteresis and debounce; each change goes up as upload_data/{p}/{d}/alarm' },
  ),
}

const CommandAction = {
  command: Type.Object(
    {
      productId: Type.Optional(Type.String({ pattern: ID_PATTERN, description: "default the message's ProductId" })),
      deviceId: Type.Optional(Type.String({ pattern: ID_PATTERN, description: "default the message's DeviceId (unless tag is set)" })),
      tag: Type.Optional(Type.String({ minLength: 1, description: 'every device of productId carrying this tag, instead of one device' })),
      name: Type.String({ pattern: '^[A-Za-z0-9_.:-]{1,64}$', description: 'the CommandName (not internal: no leading $)' }),
      payload: Type.Optional(Cel('the command payload (a map is sent as JSON, a string as is)')),
      when: Type.Optional(Cel('send only when true (default: every message the rule acts on)')),
      expiresInSeconds: Type.Optional(Type.Integer({ minimum: 1, description: 'the command expires (is never delivered) after this long' })),
    },
    { additionalProperties: false, description: 'a command to a local device (or every device with a tag) through the durable command queue' },
  ),
}

const RepublishAction = {
  republish: Type.Object(
    {
      topic: Type.String({ minLength: 1, description: 'topic on the local broker; placeholders {productId}, {deviceId}, {dataType}' }),
      retain: Type.Boolean({ default: false }),
    },
    { additionalProperties: false, description: 'the message on the local broker, for trusted local tools on internal listeners' },
  ),
}

const RateLimitAction = {
  rateLimit: Type.Object(
    {
      perSeconds: Type.Number({ exclusiveMinimum: 0, description: 'the period' }),
      burst: Type.Integer({ default: 1, minimum: 1, description: 'messages per device let through per period; the rest is dropped' }),
    },
    { additionalProperties: false, description: 'at most burst messages per device per period; the rest is dropped' },
  ),
}

// One object with exactly one key rather than a union: Ajv then names the wrong key itself
// (`rules[0].actions[1].window.seconds: must be >= 1`), not "must match one of the branches".
export const RuleActionSchema = Type.Object(
  {
    ...mapOptional(DropAction),
    ...mapOptional(TransformAction),
    ...mapOptional(ReportOnChangeAction),
    ...mapOptional(WindowAction),
    ...mapOptional(AlarmAction),
    ...mapOptional(CommandAction),
    ...mapOptional(RepublishAction),
    ...mapOptional(RateLimitAction),
  },
  { additionalProperties: false, minProperties: 1, maxProperties: 1, description: 'one action: a single key naming it' },
)

function mapOptional<T extends Record<string, TSchema>>(o: T): { [K in keyof T]: TOptional<T[K]> } {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, Type.Optional(v)])) as { [K in keyof T]: TOptional<T[K]> }
}

export const RuleSchema = Type.Object(
  {
    name: Type.String({ pattern: ID_PATTERN, description: `${ID_RULE}; unique` }),
    from: Type.String({
      minLength: 1,
      description: 'filter over the up topic without its MessageId: upload_data/{ProductId}/{DeviceId}/{DataType} or update_status/{ProductId}/{DeviceId}; + and # as in MQTT',
    }),
    where: Type.Optional(Cel('the rule acts only on messages for which this is true')),
    actions: Type.Array(RuleActionSchema, { minItems: 1, description: 'applied in order' }),
  },
  { additionalProperties: false },
)

export const RulesSchema = Type.Array(RuleSchema, {
  default: [],
  description: 'local rules, applied in order to every message on its way up (docs/operators/rules.md)',
})

export type RuleConfig = Static<typeof RuleSchema>
export type RuleAction = Static<typeof RuleActionSchema>
export type RulesConfig = Static<typeof RulesSchema>
