// Import boundaries of src/ (docs/contributors/boundaries.md), checked by
// `npm run check:boundaries` as part of `npm test`. Paths are relative to the directory the
// check runs in, so the same rules also run on the fixtures of test/unit/boundaries.test.ts.
// Rules are written by folder, so they hold for new adapters (src/southbound/<adapter>/) and
// new files without edits here. Every rule's comment is printed with its violations: it says
// what the rule protects.

// Transport packages: they belong to the adapters and the cloud link, not to the core or store.
const TRANSPORT_PACKAGES = 'mqtt|aedes|fastify|coap|serialport'
// Installed packages resolve to node_modules/<name>/...; one that is not installed keeps its bare name.
const transportPackage = `(^|/)node_modules/(${TRANSPORT_PACKAGES})/|^(${TRANSPORT_PACKAGES})(/|$)`
// Node's network modules, with or without the node: prefix.
const networkBuiltin = '^(node:)?(net|tls|dgram|http|https|http2)$'

/** @type {import('dependency-cruiser').IConfiguration} */
export default {
  forbidden: [
    // --- southbound: one folder per adapter; files directly in src/southbound/ are the registry
    {
      name: 'southbound-not-cloud-link',
      comment: 'Adapters never talk to the cloud link: uplinks go through the core AdapterContext, commands come back through the command router.',
      severity: 'error',
      from: { path: '^src/southbound/' },
      to: { path: '^src/northbound/' },
    },
    {
      name: 'southbound-not-store',
      comment: 'Adapters never write SQL: what must be durable goes through the core API, which owns the store.',
      severity: 'error',
      from: { path: '^src/southbound/' },
      to: { path: '^src/store/' },
    },
    {
      name: 'southbound-not-web-or-root',
      comment: 'Adapters are built by the composition root and know nothing of it, the CLI or the web UI.',
      severity: 'error',
      from: { path: '^src/southbound/' },
      to: { path: ['^src/web/', '^src/gateway\\.ts$', '^src/cli\\.ts$'] },
    },
    {
      name: 'adapters-not-each-other',
      comment: 'Adapters never talk to each other, nor to the registry that knows them all: each one plugs into the core on its own and can be added or removed alone.',
      severity: 'error',
      from: { path: '^src/southbound/([^/]+)/' },
      // adapter-module.ts is the shape every adapter folder hands the registry: the plug, not another adapter.
      to: { path: '^src/southbound/', pathNot: ['^src/southbound/$1/', '^src/southbound/adapter-module\\.ts$'] },
    },
    {
      name: 'only-registry-knows-adapters',
      comment: 'The adapter registry (files directly in src/southbound/) is the one place that knows all adapters; everything else reaches them through it or through the SouthboundAdapter interface.',
      severity: 'error',
      from: { path: '^src/', pathNot: '^src/southbound/' },
      to: { path: '^src/southbound/[^/]+/' },
    },

    // --- store: the bottom layer
    {
      name: 'store-not-upper-layers',
      comment: 'The store keeps data and knows nothing of who reads or writes it: not the adapters, the cloud link, the rules, the web UI or the composition root.',
      severity: 'error',
      from: { path: '^src/store/' },
      to: { path: ['^src/(northbound|southbound|web|rules|history|ota)/', '^src/gateway\\.ts$'] },
    },
    {
      name: 'store-no-network',
      comment: 'The store never does network I/O: durability must not wait on, or break with, a socket.',
      severity: 'error',
      from: { path: '^src/store/' },
      to: { path: [networkBuiltin, transportPackage] },
    },

    // --- core: the hub of the pipeline
    {
      name: 'core-not-edges',
      comment: 'The core is the hub of the pipeline: adapters, the cloud link, the rules and the web UI plug into it, never the reverse. Wiring them together is the job of the composition root (src/gateway.ts).',
      severity: 'error',
      from: { path: '^src/core/' },
      to: { path: ['^src/(southbound|northbound|web|rules|history|ota)/', '^src/gateway\\.ts$', '^src/cli\\.ts$'] },
    },
    {
      name: 'core-no-transport-packages',
      comment: 'The core speaks only the gateway\'s own types (Uplink, Command, DeviceRef); peers\' protocol packages stay inside the adapters and the cloud link.',
      severity: 'error',
      from: { path: '^src/core/' },
      to: { path: transportPackage },
    },

    // --- northbound: the cloud link
    {
      name: 'northbound-not-devices-or-root',
      comment: 'The cloud link never reaches devices, rules or the web UI directly: commands go through the core\'s command router to the owning adapter.',
      severity: 'error',
      from: { path: '^src/northbound/' },
      to: { path: ['^src/(southbound|web|rules)/', '^src/gateway\\.ts$'] },
    },

    // --- ota: a service the composition root plugs into the core's seams
    {
      name: 'ota-through-core-seams',
      comment: 'The OTA relay plugs into the core through its seams (CommandHold, LocalFiles) and is wired by the composition root: it never reaches adapters, the cloud link, the web UI or the gateway\'s store; the transports serve its files through AdapterContext.localFile.',
      severity: 'error',
      from: { path: '^src/ota/' },
      to: { path: ['^src/(southbound|northbound|web|rules)/', '^src/store/(?!commands\\.ts$)', '^src/gateway\\.ts$', '^src/cli\\.ts$'] },
    },
    {
      name: 'nothing-reaches-into-ota',
      comment: 'Only the composition root (and the config schema) know the OTA relay: adapters serve its files through AdapterContext.localFile, the core holds its commands through CommandHold.',
      severity: 'error',
      from: { path: '^src/', pathNot: ['^src/ota/', '^src/gateway\\.ts$', '^src/config\\.ts$'] },
      to: { path: '^src/ota/' },
    },

    // --- rules: pure logic on the core's vocabulary
    {
      name: 'rules-only-core-vocabulary',
      comment: 'Rules see only the gateway\'s vocabulary (src/core/types.ts, src/core/hub-topics.ts) and each other, so they stay pure and testable without a running gateway.',
      severity: 'error',
      from: { path: '^src/rules/' },
      to: { path: '^src/', pathNot: ['^src/rules/', '^src/core/types\\.ts$', '^src/core/hub-topics\\.ts$'] },
    },

    // --- history: an observer of the pipeline, in its own file
    {
      name: 'history-observer-only',
      comment: 'The local history only watches: it gets committed uplinks and events through the core\'s observer seam (src/core/observers.ts) from the composition root, and keeps its own history.db. It never reaches the outbox\'s store, the adapters, the cloud link or the web, so it cannot drive or slow the pipeline.',
      severity: 'error',
      from: { path: '^src/history/' },
      to: { path: ['^src/(store|southbound|northbound|web|rules)/', '^src/gateway\\.ts$', '^src/cli\\.ts$', '^src/core/(?!types|log|errors|observers|damaged-file|worker-thread)[^/]+\\.ts$'] },
    },
    {
      name: 'web-history-types-only',
      comment: 'The web names the history\'s types; its queries reach it through WebDeps.history, built by the composition root.',
      severity: 'error',
      from: { path: '^src/web/' },
      to: { path: '^src/history/', dependencyTypesNot: ['type-only'] },
    },

    // --- web: reads and steers the core through the interface the composition root hands it
    {
      name: 'web-not-edges-or-root',
      comment: 'The web UI never drives adapters, the cloud link or the composition root directly: it gets a narrow interface (src/web/deps.ts) from the composition root.',
      severity: 'error',
      from: { path: '^src/web/' },
      to: { path: ['^src/(southbound|northbound)/', '^src/gateway\\.ts$'] },
    },
    {
      name: 'web-types-only-from-core-and-store',
      comment: 'The web UI may name the core\'s and the store\'s types (import type) but not call into them: behaviour reaches it only through the interface the composition root hands it.',
      severity: 'error',
      from: { path: '^src/web/' },
      // The topic codec, the error catalogue and password hashing (the UI's users, the broker's app
      // accounts) are the core's vocabulary: pure, and meant to be shared.
      to: { path: '^src/(core|store)/', pathNot: ['^src/core/hub-topics\\.ts$', '^src/core/errors\\.ts$', '^src/core/password-hash\\.ts$'], dependencyTypesNot: ['type-only'] },
    },

    // --- the web app (ui/): a browser bundle that names the server's response types
    {
      name: 'ui-only-type-files-from-src',
      comment: 'The web app (ui/, bundled by esbuild for the browser) names the server\'s response types with `import type` from src/\'s type-only files (*-types.ts) and nothing else: esbuild erases those imports, so nothing of the server reaches the bundle, and the app\'s tsc (a DOM project) never reads a Node-specific file.',
      severity: 'error',
      from: { path: '^ui/' },
      to: { path: '^src/', pathNot: '^src/.+-types\\.ts$' },
    },
    {
      name: 'ui-type-files-type-only',
      comment: 'The web app imports src/\'s type files with `import type` (or `export type`), so esbuild bundles nothing from src/.',
      severity: 'error',
      from: { path: '^ui/' },
      to: { path: '^src/', dependencyTypesNot: ['type-only'] },
    },
    {
      name: 'type-files-import-only-type-files',
      comment: 'A type-only file (src/**/*-types.ts) imports only other type-only files: the web app reads it with its own tsc (DOM, no Node types), which must not be led into Node-specific code.',
      severity: 'error',
      from: { path: '^src/.+-types\\.ts$' },
      to: { pathNot: '^src/.+-types\\.ts$' },
    },

    // --- the whole tree
    {
      name: 'no-cycles',
      comment: 'No import cycles (type-only imports count too): a cycle ties modules so that none can be understood, tested or started first on its own.',
      severity: 'error',
      from: { path: '^src/' },
      to: { circular: true },
    },
    {
      name: 'reachable-from-cli',
      comment: 'Every file in src/ is reachable from the entry point src/cli.ts (what bin/iothub-edge.js runs): a file nothing imports is dead code or not wired in yet.',
      severity: 'error',
      from: { path: '^src/cli\\.ts$' },
      to: { path: '^src/', pathNot: '\\.d\\.ts$', reachable: false },
    },
    {
      name: 'no-unresolvable',
      comment: 'Every import must resolve (a .js specifier to its .ts file); one that does not is invisible to these rules.',
      severity: 'error',
      from: { path: '^src/' },
      to: { couldNotResolve: true },
    },
  ],
  options: {
    doNotFollow: { path: ['node_modules'] },
    // process.getBuiltinModule('net') counts as an import of net.
    detectProcessBuiltinModuleCalls: true,
    // See `import type` and the imports tsc elides, so cycles and the web rule see them.
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      mainFields: ['module', 'main', 'types', 'typings'],
    },
    skipAnalysisNotInRules: true,
  },
}
