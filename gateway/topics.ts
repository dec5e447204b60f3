// Topic grammar and identifier rules (README "Topics").
//
//   datasets/<dataset>/<device>[/<anything>...]
//
// A dataset id is safe as a topic level, an AMQP routing-key word, a QuestDB table name and a SQL
// identifier. A principal or device id is safe as a topic level and a routing-key word: no `+`, `#`,
// `/`, `.`, `*`, `$`, NUL or other control characters.

export const DATASET_ID = /^[a-z][a-z0-9_]{0,62}$/
export const PRINCIPAL_ID = /^[A-Za-z0-9_][A-Za-z0-9_:@-]{0,127}$/
/** A gateway node's id (STREAMGATE_NODE_ID; a lost node named for recovery). */
export const NODE_ID = /^[A-Za-z0-9._-]{1,64}$/

export const TOPIC_ROOT = 'datasets/'
const ROOT_LEN = TOPIC_ROOT.length

export function isDatasetId (s: string): boolean {
  return DATASET_ID.test(s)
}

export function isPrincipalId (s: string): boolean {
  return PRINCIPAL_ID.test(s)
}

export interface TopicAddress {
  readonly dataset: string
  readonly device: string
}

/**
 * Splits a PUBLISH topic into dataset and device, or returns null when it is not under `datasets/`
 * or its dataset or device level is malformed. Aedes has already refused wildcards and empty topics
 * ([MQTT-3.3.2-2]) and topics deeper than maxTopicLevels.
 */
export function parsePublishTopic (topic: string): TopicAddress | null {
  if (!topic.startsWith(TOPIC_ROOT)) return null
  const dsEnd = topic.indexOf('/', ROOT_LEN)
  if (dsEnd <= ROOT_LEN) return null
  let devEnd = topic.indexOf('/', dsEnd + 1)
  if (devEnd === -1) devEnd = topic.length
  if (devEnd === dsEnd + 1) return null
  const dataset = topic.slice(ROOT_LEN, dsEnd)
  const device = topic.slice(dsEnd + 1, devEnd)
  if (!DATASET_ID.test(dataset) || !PRINCIPAL_ID.test(device)) return null
  return { dataset, device }
}

/** The dataset a topic belongs to, without validating the device level (used on delivery). */
export function datasetOfTopic (topic: string): string | null {
  if (!topic.startsWith(TOPIC_ROOT)) return null
  const dsEnd = topic.indexOf('/', ROOT_LEN)
  return dsEnd > ROOT_LEN ? topic.slice(ROOT_LEN, dsEnd) : null
}

export type FilterScope =
  | { readonly kind: 'dataset', readonly dataset: string }
  | { readonly kind: 'sys' }
  | { readonly kind: 'other' }

/**
 * Classifies a SUBSCRIBE filter. A dataset filter names its dataset literally at the second level;
 * wildcards are allowed only below it. `datasets/+/#`, `#`, `+/...` and `$share/...` are 'other'.
 */
export function classifyFilter (filter: string): FilterScope {
  if (filter.startsWith('$SYS/') || filter === '$SYS') return { kind: 'sys' }
  if (!filter.startsWith(TOPIC_ROOT)) return { kind: 'other' }
  let dsEnd = filter.indexOf('/', ROOT_LEN)
  if (dsEnd === -1) dsEnd = filter.length
  const dataset = filter.slice(ROOT_LEN, dsEnd)
  return DATASET_ID.test(dataset) ? { kind: 'dataset', dataset } : { kind: 'other' }
}
