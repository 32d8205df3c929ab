// Opens the gateway's SQLite store and everything kept in it: the outbox, the device registry, the
// connection table, commands, shadows, the hub subscriptions each link holds, and the adapters'
// seen-sets and records. One database file, one connection (better-sqlite3 is synchronous).
import type { Config } from '../config.js'
import { outboxQuota } from '../config.js'
import type { Logger } from '../core/log.js'
import { ErrorCodes } from '../core/errors.js'
import { freeBytes, isDiskFull, type Db } from './db.js'
import { openCheckedDatabase, type CheckedDatabase, type CheckKind } from './salvage.js'
import { WalCheckpointer } from './wal-checkpointer.js'
import { Outbox, RESUME_FREE_BYTES } from './outbox.js'
import { Ballast } from './ballast.js'
import { DeviceRegistry } from './devices.js'
import { ConnectionStore } from './connections.js'
import { CommandStore } from './commands.js'
import { ShadowStore } from './shadows.js'
import { HubSubscriptionStore } from './hub-subscriptions.js'
import { SeenStore } from './seen.js'
import { AdapterRecordStore } from './adapter-records.js'
import { RuleStateTable } from './rule-state.js'
import { UiAuthStore } from './ui-auth.js'

export interface Store {
  readonly db: Db
  readonly outbox: Outbox
  readonly registry: DeviceRegistry
  readonly connections: ConnectionStore
  readonly commands: CommandStore
  readonly shadows: ShadowStore
  readonly hubSubscriptions: HubSubscriptionStore
  readonly seen: SeenStore
  readonly records: AdapterRecordStore
  readonly ruleState: RuleStateTable
  /** The web UI's users, sessions and API tokens. */
  readonly uiAuth: UiAuthStore
  /** How the database was checked at this start, and what was salvaged if it was damaged. */
  readonly opened: Omit<CheckedDatabase, 'db'>
  close(): void
}

/** `check`: quick_check after an unclean stop, the cheap check otherwise (docs/decisions/0014-damaged-store.md). */
export async function openStore(cfg: Config, log: Logger, check: CheckKind = 'cheap'): Promise<Store> {
  const dataDir = cfg.gateway.dataDir
  const { db, ...opened } = openCheckedDatabase(dataDir, check)
  const maxBytes = resolveQuota(db, cfg, log)
  const ballast = new Ballast(dataDir)
  ballast.ensure(2 * RESUME_FREE_BYTES)
  const walPages = ballast.walPages(db.pragma('page_size', { simple: true }) as number)
  db.pragma(`wal_autocheckpoint = ${walPages}`)
  db.pragma(`journal_size_limit = ${walPages * (db.pragma('page_size', { simple: true }) as number)}`)
  // The group commits can run on a writer thread with its own connection (their fsync off the event
  // loop, synchronous=FULL kept, a sender acknowledged only once its commit is back; the quota's
  // victims chosen on this thread): IOTHUB_EDGE_OUTBOX_WRITER_THREAD=1. Off by default: measured
  // side by side with the Mosquitto bridge on a quiet machine, throughput and the backlog drain were
  // the same with it and the latency worse (decision 0022-store-off-event-loop).
  const writerThread = process.env.IOTHUB_EDGE_OUTBOX_WRITER_THREAD === '1'
  // The WAL's checkpoints on a thread of their own while commits are frequent (decision
  // 0026-wal-checkpoint-thread); the automatic checkpoint above stays as the backstop.
  // IOTHUB_EDGE_WAL_CHECKPOINT_MS: the thread's interval, for measuring (0: no thread).
  const warned = new Set<string>()
  const everyMs = Number(process.env.IOTHUB_EDGE_WAL_CHECKPOINT_MS)
  const checkpointer = new WalCheckpointer(db, {
    ...(process.env.IOTHUB_EDGE_WAL_CHECKPOINT_MS && Number.isFinite(everyMs) && everyMs >= 0 ? { everyMs } : {}),
    onError: (err) => {
      // A full disk is the outbox's to report (IHE_STORE_FULL) and to relieve.
      if (isDiskFull(err) || warned.has(err.code ?? err.message)) return
      warned.add(err.code ?? err.message)
      log.warn({ err: err.message, code: ErrorCodes.STORE_FAILED }, 'the WAL checkpointer thread could not checkpoint gateway.db; the main connection checkpoints instead (logged once per cause)')
    },
  })
  const outbox = new Outbox(db, { maxBytes, rpcRespTtlMs: cfg.store.outbox.rpcRespTtlSeconds * 1000, ballast, writerThread, byDevice: cfg.northbound.mode === 'devices', onCommit: () => checkpointer.committed() })
  // The quota counts rows; SQLite needs about as much again (indexes, the WAL, room to checkpoint).
  // A quota near the free space means the disk fills before the quota ever evicts anything.
  const free = freeBytes(dataDir)
  if (cfg.store.outbox.maxBytes && maxBytes > free / 2) {
    log.warn(
      { maxBytes, freeBytes: free, dataDir, code: ErrorCodes.CONFIG_INVALID },
      'store.outbox.maxBytes is more than half the free space of the data disk: the disk will fill before the quota applies; lower it or free space',
    )
  }
  const registry = new DeviceRegistry(db, dataDir, cfg.northbound.mode === 'devices')
  // A gateway restarted on a full disk must still come up (degraded) and serve what it has: the
  // seed is retried at the next start if it cannot be written now.
  try {
    const seeded = await registry.seed(cfg.devices)
    if (seeded.created || seeded.updated) log.info(seeded, 'device registry seeded from config')
  } catch (err) {
    log.error({ err, code: isDiskFull(err) ? ErrorCodes.STORE_FULL : ErrorCodes.STORE_FAILED }, 'could not seed the device registry from the config')
  }
  return {
    db,
    outbox,
    registry,
    // Its records join the outbox's group commits (connections.ts).
    connections: new ConnectionStore(db, outbox),
    commands: new CommandStore(db),
    shadows: new ShadowStore(db),
    hubSubscriptions: new HubSubscriptionStore(db),
    seen: new SeenStore(db),
    records: new AdapterRecordStore(db),
    ruleState: new RuleStateTable(db, outbox),
    uiAuth: new UiAuthStore(db),
    opened,
    close() {
      outbox.close()
      checkpointer.close()
      db.close()
    },
  }
}

/**
 * The outbox quota. Configured, or derived from the disk at start; a derived quota never shrinks
 * across restarts (it is kept in the database): measured on a disk that filled up, it would be
 * tiny and would evict what was acknowledged before the restart.
 */
function resolveQuota(db: Db, cfg: Config, log: Logger): number {
  const measured = outboxQuota(cfg)
  if (cfg.store.outbox.maxBytes) return measured
  const row = db.prepare("SELECT value FROM counters WHERE name = 'outbox.default_quota'").get() as { value: number } | undefined
  const quota = Math.max(measured, row?.value ?? 0)
  if (quota !== row?.value) {
    try {
      db.prepare("INSERT INTO counters (name, value) VALUES ('outbox.default_quota', ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value").run(quota)
    } catch (err) {
      log.warn({ err: (err as Error).message }, 'could not record the outbox quota')
    }
  }
  return quota
}
