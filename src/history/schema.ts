// `store.history:` the local history's settings (docs/operators/history.md).
import { Type, type Static } from '@sinclair/typebox'

export const HistorySchema = Type.Object(
  {
    enabled: Type.Boolean({ default: true, description: 'record what devices send into {dataDir}/history.db (an observer: never delays or refuses a message)' }),
    retentionDays: Type.Integer({ default: 7, minimum: 1, maximum: 3650, description: 'raw samples are kept this many days (one table per UTC day, dropped whole)' }),
    rollup5mDays: Type.Integer({ default: 90, minimum: 1, maximum: 3650, description: '5-minute rollups (n, sum, min, max, last) are kept this many days' }),
    rollup1hDays: Type.Integer({ default: 730, minimum: 1, maximum: 36500, description: 'hourly rollups are kept this many days' }),
    eventRetentionDays: Type.Integer({ default: 90, minimum: 1, maximum: 3650, description: 'device events (connect, disconnect, commands, replies) are kept this many days' }),
    maxBytes: Type.Integer({
      default: 536_870_912,
      minimum: 1_048_576,
      description: 'size quota of history.db; above it the oldest raw day is dropped first (counted: iothub_edge_history_days_dropped_total{reason="quota"})',
    }),
    maxSeriesPerDevice: Type.Integer({
      default: 200,
      minimum: 1,
      description: 'series one device may create; samples of further keys are dropped and counted (iothub_edge_history_series_rejected_total), so a device sending random keys cannot blow up the history',
    }),
    maxPending: Type.Integer({
      default: 50_000,
      minimum: 100,
      description: 'uplinks waiting to be written to the history; beyond this the history sheds (counted: iothub_edge_history_shed_total) rather than hold anything up',
    }),
    vitalsIntervalSeconds: Type.Integer({ default: 60, minimum: 1, description: "how often the gateway's own vitals (outbox, hub link, CPU, memory, disk) are recorded" }),
  },
  { additionalProperties: false, default: {}, description: 'the local history: what every device said, with retention and rollups, queryable over /api/history' },
)

export type HistoryConfig = Static<typeof HistorySchema>
