// /metrics in Prometheus' text format (prom-client). Gauges and counters read the gateway's own
// counters when scraped (nothing on the hot path); label sets are bounded: datasets (created by
// admins), reject reasons (a fixed list), sinks, breakers, API routes (the operation templates).
import client from 'prom-client'
import type { Broker, BreakerStatus, Catalog, Journal, JournalConsumer, Pipeline, Rejects } from '../gateway/index.js'

export interface MetricsDeps {
  readonly broker: Broker
  readonly pipeline: Pipeline
  readonly catalog: Catalog
  readonly rejects: Rejects
  readonly journal: Journal
  readonly consumers: readonly JournalConsumer[]
  readonly breakers: () => Record<string, BreakerStatus | null>
}

const BREAKER_STATE = { closed: 0, 'half-open': 1, open: 2 } as const

/** A counter whose value is read from elsewhere at scrape time (it only ever grows there). */
/** A gauge set from elsewhere at scrape time. */
function gaugeFrom (registry: client.Registry, name: string, help: string, labelNames: string[], read: (set: (labels: Record<string, string>, v: number) => void) => void): void {
  new client.Gauge({
    name, help, labelNames, registers: [registry],
    collect () {
      this.reset()
      read((labels, v) => this.set(labels, v))
    }
  })
}

function counterFrom (registry: client.Registry, name: string, help: string, labelNames: string[], read: (set: (labels: Record<string, string>, v: number) => void) => void): void {
  new client.Counter({
    name, help, labelNames, registers: [registry],
    collect () {
      this.reset()
      read((labels, v) => { if (v > 0) this.inc(labels, v) })
    }
  })
}

export interface Metrics {
  readonly registry: client.Registry
  readonly httpDuration: client.Histogram<'method' | 'route' | 'status'>
  readonly sinkWriteDuration: client.Histogram<'sink'>
}

export function createMetrics (deps: MetricsDeps): Metrics {
  const registry = new client.Registry()
  client.collectDefaultMetrics({ register: registry, prefix: 'streamgate_' })

  gaugeFrom(registry, 'streamgate_mqtt_sessions', 'Authenticated MQTT sessions (TCP, TLS and WebSocket)', [], (set) => set({}, deps.broker.sessions().length))
  counterFrom(registry, 'streamgate_mqtt_connects_total', 'MQTT connections authenticated', [], (set) => set({}, deps.broker.stats.connects))
  counterFrom(registry, 'streamgate_mqtt_auth_failures_total', 'MQTT CONNECTs refused for bad credentials', [], (set) => set({}, deps.broker.stats.authFailures))
  counterFrom(registry, 'streamgate_mqtt_connections_refused_address_total', 'MQTT connections closed at accept: over STREAMGATE_MQTT_MAX_CONNECTIONS_PER_ADDRESS or _ACCEPT_RATE_PER_ADDRESS', [], (set) => set({}, deps.broker.stats.connectionsRefusedAddress))
  counterFrom(registry, 'streamgate_mqtt_protocol_errors_total', 'MQTT connections closed for protocol errors', [], (set) => set({}, deps.broker.stats.protocolErrors))

  counterFrom(registry, 'streamgate_messages_received_total', 'Messages (MQTT, AMQP) and HTTP batch records that reached validation, accepted or not, by dataset', ['dataset'],
    (set) => { for (const d of deps.catalog.list()) set({ dataset: d.id }, deps.catalog.stats(d.id)?.received ?? 0) })
  counterFrom(registry, 'streamgate_messages_accepted_total', 'Messages (MQTT, AMQP, HTTP batch entries) accepted into the journal, by dataset', ['dataset'],
    (set) => { for (const d of deps.catalog.list()) set({ dataset: d.id }, deps.catalog.stats(d.id)?.messages ?? 0) })
  counterFrom(registry, 'streamgate_records_accepted_total', 'Records accepted into the journal, by dataset', ['dataset'],
    (set) => { for (const d of deps.catalog.list()) set({ dataset: d.id }, deps.catalog.stats(d.id)?.records ?? 0) })
  counterFrom(registry, 'streamgate_records_rejected_total', 'Records and messages refused, by dataset ("" when none applies) and reason', ['dataset', 'reason'], (set) => {
    for (const [reason, n] of Object.entries(deps.rejects.counts(null))) set({ dataset: '', reason }, n)
    for (const d of deps.catalog.list()) for (const [reason, n] of Object.entries(deps.rejects.counts(d.id))) set({ dataset: d.id, reason }, n)
  })

  gaugeFrom(registry, 'streamgate_journal_bytes', 'Journal bytes on disk not yet released by every consumer', [], (set) => set({}, deps.journal.bytes))
  gaugeFrom(registry, 'streamgate_journal_committed_seq', 'Last durable journal sequence number', [], (set) => set({}, deps.journal.committedSeq))
  gaugeFrom(registry, 'streamgate_journal_healthy', '1 while the journal accepts appends', [], (set) => set({}, deps.journal.healthy ? 1 : 0))
  counterFrom(registry, 'streamgate_journal_commits_total', 'Group commits (one fdatasync each, for every write made since the previous one)', [], (set) => set({}, deps.journal.stats.commits))
  counterFrom(registry, 'streamgate_journal_refused_full_total', 'Appends refused because the journal quota was reached', [], (set) => set({}, deps.journal.stats.refusedFull))

  gaugeFrom(registry, 'streamgate_consumer_lag_records', 'Journal entries a consumer has not stored yet', ['consumer'], (set) => { for (const c of deps.consumers) set({ consumer: c.name }, c.lag) })
  gaugeFrom(registry, 'streamgate_consumer_lag_seconds', 'Age of the oldest entry a consumer has not stored yet', ['consumer'], (set) => {
    for (const c of deps.consumers) { const l = c.status().lagSeconds; if (l !== null) set({ consumer: c.name }, l) }
  })
  counterFrom(registry, 'streamgate_consumer_failures_total', 'Failed sink writes (each is retried)', ['consumer'], (set) => { for (const c of deps.consumers) set({ consumer: c.name }, c.status().failures) })
  gaugeFrom(registry, 'streamgate_breaker_state', 'Circuit breaker state: 0 closed, 1 half-open, 2 open', ['breaker'], (set) => {
    for (const [name, b] of Object.entries(deps.breakers())) if (b !== null) set({ breaker: name }, BREAKER_STATE[b.state])
  })
  counterFrom(registry, 'streamgate_breaker_transitions_total', 'Circuit breaker state changes, by breaker and the state entered', ['breaker', 'to'], (set) => {
    for (const [name, b] of Object.entries(deps.breakers())) {
      if (b === null) continue
      for (const [to, n] of Object.entries(b.transitions)) set({ breaker: name, to }, n)
    }
  })

  const httpDuration = new client.Histogram({
    name: 'streamgate_http_request_duration_seconds', help: 'API requests by method, route template and status',
    labelNames: ['method', 'route', 'status'] as const, buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10], registers: [registry]
  })
  const sinkWriteDuration = new client.Histogram({
    name: 'streamgate_sink_write_duration_seconds', help: 'Time a sink took to store one batch', labelNames: ['sink'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30], registers: [registry]
  })
  return { registry, httpDuration, sinkWriteDuration }
}
