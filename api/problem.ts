// RFC 9457 problem+json for every error, from the gateway's one catalogue.
import type { ErrorRequestHandler, RequestHandler } from 'express'
import { isStreamgateError, StreamgateError } from '../gateway/index.js'

export const PROBLEM_TYPE = 'application/problem+json'

interface HttpishError { status?: number, type?: string, expose?: boolean, message?: string }

/** Maps body-parser and other HTTP errors onto the catalogue; anything unknown is a 500 without details. */
function toStreamgateError (err: unknown): StreamgateError {
  if (isStreamgateError(err)) return err
  const e = err as HttpishError
  if (e?.type === 'entity.parse.failed') return new StreamgateError('SG_ERR_BAD_REQUEST', 'request body is not valid JSON: ' + (e.message ?? ''), { field: 'body' })
  if (e?.type === 'entity.invalid.utf8') return new StreamgateError('SG_ERR_BAD_REQUEST', 'request body is not valid UTF-8', { field: 'body' })
  if (e?.type === 'entity.too.large') return new StreamgateError('SG_ERR_PAYLOAD_TOO_LARGE', 'request body exceeds STREAMGATE_HTTP_BODY_LIMIT', { field: 'body' })
  if (e?.type === 'encoding.unsupported' || e?.type === 'charset.unsupported') return new StreamgateError('SG_ERR_UNSUPPORTED_MEDIA_TYPE', e.message ?? 'unsupported encoding')
  if (typeof e?.status === 'number' && e.status >= 400 && e.status < 500 && e.expose === true) return new StreamgateError('SG_ERR_BAD_REQUEST', e.message ?? 'bad request')
  return new StreamgateError('SG_ERR_INTERNAL', 'internal error', {}, { cause: err })
}

export function problemHandler (log: { error: (obj: object, msg: string) => void }): ErrorRequestHandler {
  return (err, req, res, _next) => {
    const e = toStreamgateError(err)
    if (e.status >= 500 && e.code === 'SG_ERR_INTERNAL') log.error({ err: (err as Error)?.stack ?? String(err), url: req.originalUrl }, 'request failed')
    const { field, retryAfter, ...extra } = e.details
    if (typeof retryAfter === 'number') res.setHeader('Retry-After', String(retryAfter))
    res.status(e.status).type(PROBLEM_TYPE).json({
      type: e.type,
      title: e.title,
      status: e.status,
      detail: e.message,
      instance: req.originalUrl,
      code: e.code,
      ...(field !== undefined ? { field } : {}),
      ...extra
    })
  }
}

export const notFound: RequestHandler = (req, _res, next) => {
  next(new StreamgateError('SG_ERR_NOT_FOUND', `no route for ${req.method} ${req.path}`))
}

/**
 * Refuses a body that is not JSON before parsing it, and one declared in another charset than UTF-8:
 * JSON between systems is UTF-8 (RFC 8259 §8.1), and only UTF-8 bodies are checked for ill-formed
 * text (a UTF-16 decoder would store U+FFFD for a lone surrogate where MQTT refuses invalid_utf8).
 */
export const requireJson: RequestHandler = (req, _res, next) => {
  if (req.method === 'GET' || req.method === 'DELETE' || req.method === 'HEAD') return next()
  const length = req.headers['content-length']
  if ((length === undefined || length === '0') && req.headers['transfer-encoding'] === undefined) return next()
  if (req.is(['application/json', 'application/x-ndjson']) === false) return next(new StreamgateError('SG_ERR_UNSUPPORTED_MEDIA_TYPE', 'send application/json (or application/x-ndjson where documented)'))
  const charset = declaredCharset(req.headers['content-type'])
  if (charset !== undefined && charset !== 'utf-8' && charset !== 'utf8') return next(new StreamgateError('SG_ERR_UNSUPPORTED_MEDIA_TYPE', `charset=${charset.slice(0, 40)} is not supported: send UTF-8 (RFC 8259)`))
  next()
}

/** The charset parameter of a Content-Type, lower-cased and unquoted; undefined when there is none. */
function declaredCharset (contentType: string | undefined): string | undefined {
  return /;\s*charset=([^;]+)/i.exec(contentType ?? '')?.[1]?.trim().replace(/^"|"$/g, '').toLowerCase()
}
