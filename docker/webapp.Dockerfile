# The demo backend: `webapp` supervised by `shoal agent` (PID 1).
#
# Build context: a folder with bin/shoal and bin/webapp (docker/build-images.sh stages it
# from docker/build-binaries.sh: static release builds). Base: shoal-base:bookworm is made locally by
# docker/base-image.sh; with a registry, --build-arg BASE=debian:bookworm-slim works as is.
#
# Without host binaries (a registry and a Rust image at hand), build them in a first stage
# from the repository root as context instead, and copy from it:
#   FROM rust:1-bookworm AS build
#   WORKDIR /src
#   COPY . .
#   RUN docker/build-binaries.sh && mkdir -p /out/bin \
#       && cp target/static/shoal target/static/webapp /out/bin/
#   ...then below: COPY --from=build /out/bin/ /usr/local/bin/
ARG BASE=shoal-base:bookworm
FROM ${BASE}

COPY bin/shoal bin/webapp /usr/local/bin/
# Serf's CLI for handler scripts written for Serf (`serf members ...`): shoal prints
# Serf's output when invoked under that name (docs/serf.md).
RUN ln -s shoal /usr/local/bin/serf

# Everything is an env default, so compose (or `docker run -e`) changes it without a new
# image: SHOAL_JOIN=lb,webapp, SHOAL_TAG=service=api,route=/api,..., WEBAPP_TAG=blue.
ENV SHOAL_TAG=service=web,port=3000,check=/health \
    SHOAL_CHECK=http://127.0.0.1:3000/health \
    SHOAL_CHECK_INTERVAL=1s \
    SHOAL_DRAIN=3s \
    WEBAPP_PORT=3000

EXPOSE 3000 7946/tcp 7946/udp
# Docker's health = the agent runs and its own health gate says ready.
HEALTHCHECK --interval=2s --timeout=2s --start-period=10s --retries=3 \
    CMD shoal info --format json | grep -q '"state":"ready"'
ENTRYPOINT ["shoal", "agent"]
CMD ["--", "webapp"]
