# pg-replicate: one image for the producer and every consumer.
FROM node:24-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY shared shared
COPY producer producer
COPY consumers consumers
COPY cli cli
COPY serve serve
COPY test test
COPY scripts scripts
RUN npm run build && npm prune --omit=dev

FROM node:24-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules node_modules
COPY --from=build /app/dist/shared dist/shared
COPY --from=build /app/dist/producer dist/producer
COPY --from=build /app/dist/consumers dist/consumers
COPY --from=build /app/dist/cli dist/cli
COPY --from=build /app/dist/serve dist/serve
# The status page's files, served as they are.
COPY --from=build /app/serve/page serve/page
# Not root: the image's own user, with /data (where the compose file keeps DuckDB files) its own.
RUN mkdir -p /data && chown node:node /data
USER node
ENTRYPOINT ["node", "dist/cli/index.js"]
CMD ["--help"]
