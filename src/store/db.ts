// Opens the gateway's SQLite database with the durability settings DESIGN.md requires and applies
// migrations. One connection for the whole process: better-sqlite3 is synchronous, so every write
// is ordered and group commit (see outbox.ts) is what keeps it fast.
import Database from 'better-sqlite3'
import { mkdirSync, statfsSync } from 'node:fs'
import path from 'node:path'

export type Db = Database.Database

const migrations: string[] = [
  // 1: registry, connections, outbox, counters
  `
  CREATE TABLE devices (
    product_id    TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    secret_hash   TEXT,
    secret_enc    BLOB,
    tags          TEXT NOT NULL DEFAULT '[]',
    tags_version  INTEGER NOT NULL DEFAULT 0,
    enabled       INTEGER NOT NULL DEFAULT 1,
    seed_digest   TEXT,
    changed_by_api INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (product_id, device_id)
  ) WITHOUT ROWID;

  CREATE TABLE connections (
    client_id     TEXT PRIMARY KEY,
    product_id    TEXT,
    device_id     TEXT,
    transport     TEXT NOT NULL,
    connected     INTEGER NOT NULL,
    ipaddress     TEXT,
    keepalive     INTEGER,
    proto_ver     INTEGER,
    connected_at  INTEGER,
    disconnect_at INTEGER
  );

  -- AUTOINCREMENT: ids never go back, so the bridge's per-priority cursors never skip a row.
  CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    prio        INTEGER NOT NULL,
    device      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    topic       TEXT NOT NULL,
    payload     BLOB NOT NULL,
    bytes       INTEGER NOT NULL,
    received_at INTEGER NOT NULL
  );
  CREATE INDEX outbox_by_prio ON outbox (prio, id);
  CREATE INDEX outbox_by_device ON outbox (device, prio, id);

  CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
  ) WITHOUT ROWID;
  `,
  // 2: commands (queue and history), seen RequestIds, shadow copies
  `
  CREATE TABLE commands (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    device      TEXT NOT NULL,
    type        TEXT NOT NULL,
    name        TEXT NOT NULL,
    encoding    TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    expires_at  INTEGER,
    sender      TEXT,
    payload     BLOB NOT NULL,
    origin      TEXT NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT,
    reply       BLOB,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
  );
  CREATE INDEX commands_by_device ON commands (device, state, id);
  CREATE INDEX commands_by_request ON commands (device, request_id);

  -- scope: the target device key, or a tag topic for tag commands
  CREATE TABLE seen_requests (
    scope      TEXT NOT NULL,
    request_id TEXT NOT NULL,
    seen_at    INTEGER NOT NULL,
    PRIMARY KEY (scope, request_id)
  ) WITHOUT ROWID;
  CREATE INDEX seen_by_time ON seen_requests (seen_at);

  CREATE TABLE shadows (
    device     TEXT PRIMARY KEY,
    doc        TEXT NOT NULL,
    updated_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  `,
  // 3: what each hub link subscribed, so that a later run can drop what is no longer wanted
  `
  CREATE TABLE hub_subscriptions (
    link   TEXT NOT NULL,
    filter TEXT NOT NULL,
    PRIMARY KEY (link, filter)
  ) WITHOUT ROWID;

  -- devices removed through the API/CLI that a config seed would otherwise create again
  CREATE TABLE removed_seeds (
    product_id  TEXT NOT NULL,
    device_id   TEXT NOT NULL,
    seed_digest TEXT NOT NULL,
    PRIMARY KEY (product_id, device_id)
  ) WITHOUT ROWID;
  `,
  // 4: a command sent to a device because it carries a tag remembers the tag (a native device gets
  // it on the tag's topic); the adapters' durable seen-sets (ChirpStack deduplication ids, CoAP
  // message ids), each entry with its own expiry
  `
  ALTER TABLE commands ADD COLUMN via_tag TEXT;

  CREATE TABLE adapter_seen (
    scope      TEXT NOT NULL,
    id         TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (scope, id)
  ) WITHOUT ROWID;
  CREATE INDEX adapter_seen_by_expiry ON adapter_seen (expires_at);
  `,
  // 5: records adapters keep about work in flight at their peer (a LoRaWAN downlink queued at
  // ChirpStack and the command it carries), each with its own expiry
  `
  CREATE TABLE adapter_records (
    scope      TEXT NOT NULL,
    id         TEXT NOT NULL,
    value      TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (scope, id)
  );
  CREATE INDEX adapter_records_by_expiry ON adapter_records (expires_at);
  `,
  // 6: the local rules' state (src/rules): window accumulators, last reported values, alarm states;
  // written in the outbox's group commits (decision 0013-rules)
  `
  CREATE TABLE rule_state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
  ) WITHOUT ROWID;
  `,
  // 7: the web UI's users (scrypt hashes with their parameters), server-side sessions and API
  // tokens (src/store/ui-auth.ts). Session ids and tokens are kept as SHA-256 digests only: what
  // the database holds cannot be replayed (decision 0018-ui-login).
  `
  CREATE TABLE ui_users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
  ) WITHOUT ROWID;

  CREATE TABLE ui_sessions (
    id_hash      TEXT PRIMARY KEY,
    username     TEXT NOT NULL REFERENCES ui_users (username) ON DELETE CASCADE,
    csrf         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE INDEX ui_sessions_by_user ON ui_sessions (username);

  CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    created_by   TEXT,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER
  ) WITHOUT ROWID;
  `,
  // 8: outbox_by_device leaves the fixed schema: only northbound devices mode reads the outbox by
  // device, and in gateway mode the index cost every insert and delete about a third more
  // (docs/performance.md, "2026-12-02: the outbox's drain"). The outbox creates it when it is
  // opened for devices mode (OutboxOptions.byDevice) and drops it otherwise.
  `
  DROP INDEX IF EXISTS outbox_by_device;
  `,
]

/** The database file in the data folder. */
export const DB_FILE = 'gateway.db'

export function openDatabase(dataDir: string): Db {
  mkdirSync(dataDir, { recursive: true })
  const db = new Database(path.join(dataDir, DB_FILE))
  db.pragma('journal_mode = WAL')
  // FULL: a commit is on the platter before we acknowledge (power loss, not only kill -9).
  db.pragma('synchronous = FULL')
  db.pragma('foreign_keys = ON')
  db.pragma('busy_timeout = 5000')
  // After a checkpoint resets the WAL, a WAL that grew past this is cut back to it: a burst does
  // not keep its disk space for good (decision 0015-wal-full-disk; openStore sets it lower on a
  // small disk, with the checkpoint threshold).
  db.pragma('journal_size_limit = 4194304')
  migrate(db)
  return db
}

function migrate(db: Db): void {
  const current = db.pragma('user_version', { simple: true }) as number
  for (let v = current; v < migrations.length; v++) {
    db.transaction(() => {
      db.exec(migrations[v])
      db.pragma(`user_version = ${v + 1}`)
    })()
  }
}

/** Bytes this process may still write on the filesystem holding `dir` (root may use the reserved blocks too). */
export function freeBytes(dir: string): number {
  const s = statfsSync(dir)
  return (process.getuid?.() === 0 ? s.bfree : s.bavail) * s.bsize
}

/** True for the errors a full disk produces (SQLITE_FULL, ENOSPC surfaced as SQLITE_IOERR_WRITE). */
export function isDiskFull(err: unknown): boolean {
  const code = (err as { code?: string } | null)?.code ?? ''
  const msg = (err as Error | null)?.message ?? ''
  return code === 'SQLITE_FULL' || code === 'ENOSPC' || code.startsWith('SQLITE_IOERR') || /disk is full|ENOSPC/.test(msg)
}
