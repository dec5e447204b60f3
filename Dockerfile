# streamgate: a multi-stage build. The runtime image holds the compiled JavaScript (tsc output only),
# the console's static pages, production dependencies and the documented config example, and runs
# as the unprivileged `node` user.
# Debian slim, not Alpine: DuckDB (the embedded store) ships glibc binaries.

FROM node:20-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci
COPY tsconfig.json tsconfig.build.json ./
COPY config config
COPY gateway gateway
COPY bridges bridges
COPY api api
COPY bin bin
COPY console console
# tsc, then the console's pages into dist/console (npm run build)
RUN npm run build

FROM node:20-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev && npm cache clean --force

FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    STREAMGATE_DATA_DIR=/data \
    STREAMGATE_RABBITMQ_AUTH_BIND=0.0.0.0
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY package.json ./
# The documented example for STREAMGATE_CONFIG (every setting commented out; mount your own).
COPY config/streamgate.yaml ./config/streamgate.yaml
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
# mqtt, mqtt over websocket, http API, mqtts, wss, https API. Not the RabbitMQ auth backend (8089):
# only RabbitMQ calls it, over the compose network, and `docker run -P` must not publish it.
EXPOSE 1883 8083 8080 8883 8084 8443
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.STREAMGATE_HTTP_PORT || 8080) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
# SIGTERM drains (see docs/operations.md); node is PID 1's only child of note, so run it directly.
# Node's options: bin/node-options.ts says why.
STOPSIGNAL SIGTERM
CMD ["node", "--v8-pool-size=1", "dist/bin/streamgate.js"]
