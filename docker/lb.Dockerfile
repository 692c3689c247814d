# The load balancer: HAProxy + lbgen supervised by `shoal agent` (PID 1), following the
# cluster's membership (docker/lb-services.toml).
#
# Build context: a folder with bin/shoal, bin/lbgen, templates/haproxy.cfg.hbs and
# docker/lb-services.toml (docker/build-images.sh stages it). The Prometheus targets
# template is used by compose/monitoring.yml (LBGEN_RENDER). Base: shoal-base-haproxy,
# made locally by docker/base-image.sh with HAProxy in it; with a registry,
# --build-arg BASE=debian:bookworm-slim installs HAProxy from Debian below.
ARG BASE=shoal-base-haproxy:bookworm
FROM ${BASE}

RUN if ! command -v haproxy >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends haproxy \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && mkdir -p /run/haproxy /usr/local/etc/haproxy /etc/lbgen/certs /etc/shoal

COPY bin/shoal bin/lbgen /usr/local/bin/
# Serf's CLI for handler scripts written for Serf (`serf members ...`): shoal prints
# Serf's output when invoked under that name (docs/serf.md).
RUN ln -s shoal /usr/local/bin/serf
COPY templates/haproxy.cfg.hbs templates/prometheus-targets.json.hbs /etc/lbgen/
COPY docker/lb-services.toml /etc/shoal/services.toml

# Not a backend (no `service` tag). The stats page is this node's health check.
# timeout_connect=1s: a connection on a container network takes well under 1 ms, while a
# killed container's address stays silent, so each try at it costs the full connect timeout
# before HAProxy retries elsewhere (5 s with the template's default). tls_certs: HTTPS on 443
# once a certificate is mounted there (compose/certs); an empty directory keeps it closed.
ENV SHOAL_SERVICES=/etc/shoal/services.toml \
    SHOAL_TAG=role=lb \
    SHOAL_DRAIN=2s \
    LBGEN_VAR=http_port=80,stats_port=1936,timeout_connect=1s,tls_certs=/etc/lbgen/certs \
    LBGEN_WAIT=200ms:2s

EXPOSE 80 443 1936 8405 7946/tcp 7946/udp
HEALTHCHECK --interval=2s --timeout=2s --start-period=10s --retries=3 \
    CMD shoal info --format json | grep -q '"state":"ready"'
ENTRYPOINT ["shoal", "agent"]
