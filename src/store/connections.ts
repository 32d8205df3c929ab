// Connection tracking per client id, with the hub's Connection fields (PROTOCOL.md `$connection`).
// With the outbox given (the gateway), a connect or disconnect is staged and joins the outbox's next
// group commit, the one that carries its `$connection` upload: no commit (no fsync) of its own on
// the event loop. 100 devices connecting used to cost 100 fsyncs, about a second with the event
// loop blocked while they published (docs/performance.md, 2026-12-02 intake). The table is
// bookkeeping: a record lost in a crash (or a failed commit) shows as a stale connection at the next
// start, as before.
import type { Statement } from 'better-sqlite3'
import type { Db } from './db.js'
import type { Outbox, SqlWrite } from './outbox.js'
import type { DeviceRef, Transport } from '../core/types.js'

export interface ConnectionInfo {
  clientId: string
  productId: string | null
  deviceId: string | null
  transport: Transport
  connected: boolean
  ipaddress: string | null
  keepalive: number | null
  protoVer: number | null
  connectedAt: number | null
  disconnectAt: number | null
}

interface Row {
  client_id: string
  product_id: string | null
  device_id: string | null
  transport: Transport
  connected: number
  ipaddress: string | null
  keepalive: number | null
  proto_ver: number | null
  connected_at: number | null
  disconnect_at: number | null
}

const UPSERT = `INSERT INTO connections (client_id, product_id, device_id, transport, connected, ipaddress, keepalive, proto_ver, connected_at, disconnect_at)
  VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, NULL)
  ON CONFLICT(client_id) DO UPDATE SET product_id = excluded.product_id, device_id = excluded.device_id,
    transport = excluded.transport, connected = 1, ipaddress = excluded.ipaddress, keepalive = excluded.keepalive,
    proto_ver = excluded.proto_ver, connected_at = excluded.connected_at, disconnect_at = NULL`
const DISCONNECT = 'UPDATE connections SET connected = 0, disconnect_at = ? WHERE client_id = ? AND connected = 1'

export class ConnectionStore {
  private readonly st: Record<'upsert' | 'disconnect' | 'all' | 'stale', Statement>
  // Writes waiting for the outbox's next group commit (with an outbox only).
  private staged: SqlWrite[] = []

  constructor(
    private readonly db: Db,
    private readonly outbox?: Outbox,
  ) {
    this.st = {
      upsert: db.prepare(UPSERT),
      disconnect: db.prepare(DISCONNECT),
      all: db.prepare('SELECT * FROM connections ORDER BY client_id'),
      stale: db.prepare('SELECT * FROM connections WHERE connected = 1'),
    }
    outbox?.addParticipant({
      write: () => {
        const writes = this.staged
        this.staged = []
        return writes
      },
      committed: () => {},
      // Gone with the failed commit: a connection left open shows as stale at the next start.
      failed: () => {},
    })
  }

  connected(c: Omit<ConnectionInfo, 'connected' | 'disconnectAt'> & DeviceRef): ConnectionInfo {
    this.write(UPSERT, [c.clientId, c.productId, c.deviceId, c.transport, c.ipaddress, c.keepalive, c.protoVer, c.connectedAt])
    return { ...c, connected: true, disconnectAt: null }
  }

  disconnected(clientId: string, at = Date.now()): void {
    this.write(DISCONNECT, [at, clientId])
  }

  private write(sql: string, args: SqlWrite['args']): void {
    if (!this.outbox) {
      this.statement(sql).run(...args)
      return
    }
    this.staged.push({ sql, args })
    // The commit that carries it (the `$connection` upload usually asks for it in the same turn).
    this.outbox.barrier().catch(() => undefined)
  }

  private statement(sql: string): Statement {
    return sql === UPSERT ? this.st.upsert : this.st.disconnect
  }

  list(): ConnectionInfo[] {
    return (this.st.all.all() as Row[]).map(toInfo)
  }

  /** Connections a previous run left marked as connected (it died): close them now and return them. */
  closeStale(at = Date.now()): ConnectionInfo[] {
    const rows = (this.st.stale.all() as Row[]).map(toInfo)
    this.db.transaction(() => {
      for (const r of rows) this.st.disconnect.run(at, r.clientId)
    })()
    return rows.map((r) => ({ ...r, connected: false, disconnectAt: at }))
  }
}

function toInfo(r: Row): ConnectionInfo {
  return {
    clientId: r.client_id,
    productId: r.product_id,
    deviceId: r.device_id,
    transport: r.transport,
    connected: r.connected === 1,
    ipaddress: r.ipaddress,
    keepalive: r.keepalive,
    protoVer: r.proto_ver,
    connectedAt: r.connected_at,
    disconnectAt: r.disconnect_at,
  }
}

/**
 * When the gateway last heard from a device: `heard` (its latest message, if known), or the latest
 * connect or disconnect of any of its connections (the table outlives restarts); null if never.
 */
export function lastSeen(connections: readonly ConnectionInfo[], heard?: number): number | null {
  const times = connections.flatMap((c) => [c.connectedAt, c.disconnectAt]).filter((t): t is number => t !== null)
  if (heard !== undefined) times.push(heard)
  return times.length ? Math.max(...times) : null
}
