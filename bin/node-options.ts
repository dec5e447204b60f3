// The Node.js options streamgate is started with: by `npm start`, by the container image's CMD and by
// the benchmark. They cannot be set once the process runs (V8's platform is made before any of our
// code), so they go on the command line; test/deploy/node-options.test.ts keeps package.json and the
// Dockerfile in step with this list.

/**
 * `--v8-pool-size=1`: one V8 worker thread (the collector's parallel scavenge and concurrent marking,
 * background compilation) instead of Node's 4. On two vCPUs the four helpers of each scavenge competed
 * with the event loop, the sink thread and the load for two CPUs, and the scavenge waited for the
 * slowest: at 20k msg/s, seven alternating pairs of runs each gave less scavenge time with one helper
 * (12 s of a run: 164-287 ms against 264-462, mean pause 1.3-2.3 ms against 2.1-3.7; BENCHMARKS.md,
 * 2026-11-30 08:20 UTC). A fixed 1, not `0` ("as many as the CPUs, less one"): Node 20's count of CPUs
 * ignores a container's CPU limit (libuv before 1.49), so on a 64-core host a 2-CPU container would get
 * 63 helpers. On a machine with many idle cores, more helpers may shorten the scavenges: start
 * `node --v8-pool-size=N dist/bin/streamgate.js` there (options on the command line win over
 * NODE_OPTIONS).
 */
export const NODE_OPTIONS: readonly string[] = ['--v8-pool-size=1']
