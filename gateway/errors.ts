// The one error catalogue. Each code has its HTTP status, a stable problem `type` URI (RFC 9457) and,
// where MQTT can carry it, the MQTT 3.1.1 CONNACK return code. README "Errors" lists them.

export const PROBLEM_BASE = 'https://streamgate.dev/problems/'

interface ErrorSpec { readonly status: number, readonly title: string, readonly slug: string }

export const errorCatalogue = {
  SG_ERR_BAD_REQUEST: { status: 400, title: 'Bad request', slug: 'bad-request' },
  SG_ERR_VALIDATION: { status: 400, title: 'Request does not match the schema', slug: 'validation' },
  SG_ERR_UNAUTHENTICATED: { status: 401, title: 'Authentication required', slug: 'unauthenticated' },
  SG_ERR_FORBIDDEN: { status: 403, title: 'Missing grant', slug: 'forbidden' },
  SG_ERR_NOT_FOUND: { status: 404, title: 'Not found', slug: 'not-found' },
  SG_ERR_CONFLICT: { status: 409, title: 'Already exists', slug: 'conflict' },
  SG_ERR_INCOMPATIBLE_SCHEMA: { status: 409, title: 'Incompatible schema change', slug: 'incompatible-schema' },
  SG_ERR_IDEMPOTENCY_MISMATCH: { status: 409, title: 'Idempotency-Key reused with a different request', slug: 'idempotency-mismatch' },
  SG_ERR_DATASET_NOT_EMPTY: { status: 409, title: 'The dataset has stored records', slug: 'dataset-not-empty' },
  SG_ERR_PRECONDITION_FAILED: { status: 412, title: 'If-Match does not match the current ETag', slug: 'precondition-failed' },
  SG_ERR_PRECONDITION_REQUIRED: { status: 428, title: 'If-Match is required', slug: 'precondition-required' },
  SG_ERR_RATE_LIMITED: { status: 429, title: 'Too many requests', slug: 'rate-limited' },
  SG_ERR_UNPROCESSABLE: { status: 422, title: 'No record was accepted', slug: 'unprocessable' },
  SG_ERR_PAYLOAD_TOO_LARGE: { status: 413, title: 'Payload too large', slug: 'payload-too-large' },
  SG_ERR_UNSUPPORTED_MEDIA_TYPE: { status: 415, title: 'Unsupported media type', slug: 'unsupported-media-type' },
  SG_ERR_JOURNAL_FULL: { status: 503, title: 'Journal quota reached', slug: 'journal-full' },
  SG_ERR_QUERY_TIMEOUT: { status: 503, title: 'Query timed out', slug: 'query-timeout' },
  SG_ERR_UNAVAILABLE: { status: 503, title: 'Service unavailable', slug: 'unavailable' },
  SG_ERR_INTERNAL: { status: 500, title: 'Internal error', slug: 'internal' }
} as const satisfies Record<string, ErrorSpec>

export type ErrorCode = keyof typeof errorCatalogue

export interface ErrorDetails {
  /** The request field or record path at fault, e.g. `/0/temp` or `body.id`. */
  readonly field?: string
  readonly [key: string]: unknown
}

export class StreamgateError extends Error {
  override name = 'StreamgateError'
  readonly status: number
  readonly type: string
  readonly title: string

  constructor (readonly code: ErrorCode, message: string, readonly details: ErrorDetails = {}, options?: { cause?: unknown }) {
    super(message, options)
    const spec = errorCatalogue[code]
    this.status = spec.status
    this.title = spec.title
    this.type = PROBLEM_BASE + spec.slug
  }
}

export function isStreamgateError (err: unknown): err is StreamgateError {
  return err instanceof StreamgateError
}

/**
 * Why a record or message was refused. These strings are the keys of `rejected` in dataset stats and
 * the `reason` of each entry in the rejects log; they are part of the public contract.
 */
export const RejectReason = {
  INVALID_UTF8: 'invalid_utf8',
  INVALID_JSON: 'invalid_json',
  NOT_AN_OBJECT: 'not_an_object',
  BATCH_TOO_LARGE: 'batch_too_large',
  EMPTY_BATCH: 'empty_batch',
  UNKNOWN_FIELD: 'unknown_field',
  WRONG_TYPE: 'wrong_type',
  MISSING_FIELD: 'missing_field',
  BAD_TIMESTAMP: 'bad_timestamp',
  OUT_OF_RANGE: 'out_of_range',
  STRING_TOO_LONG: 'string_too_long',
  PAYLOAD_TOO_LARGE: 'payload_too_large',
  UNKNOWN_DATASET: 'unknown_dataset',
  NOT_AUTHORIZED: 'not_authorized',
  BAD_TOPIC: 'bad_topic',
  JOURNAL_FULL: 'journal_full',
  /** The store (QuestDB) refused the record with a permanent error; its message is in the detail. */
  STORE_REFUSED: 'store_refused',
  // Refused by the MQTT layer before a dataset is known; counted in the global stats only.
  TOPIC_TOO_DEEP: 'topic_too_deep',
  WILDCARD_IN_TOPIC: 'wildcard_in_topic'
} as const

export type RejectReason = typeof RejectReason[keyof typeof RejectReason]

/** A record that failed validation: the reason code and a human sentence naming the field. */
export class RecordRejection {
  constructor (readonly reason: RejectReason, readonly detail: string, readonly field?: string) {}
}
