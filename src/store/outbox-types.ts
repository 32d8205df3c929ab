// The outbox's statistics as GET /api/outbox answers them. Types only, importing nothing: the web
// app (ui/) names them too.

export type DropReason = 'quota' | 'rpc_resp_expired'
/** Priority class of an up message: 0 replies, 1 control and internal, 2 telemetry (DESIGN.md). */
export type Priority = 0 | 1 | 2

export interface OutboxStats {
  messages: number
  bytes: number
  oldestAgeMs: number
  byPriority: Record<Priority, { messages: number; bytes: number }>
  dropped: Record<DropReason, number>
  maxBytes: number
}
