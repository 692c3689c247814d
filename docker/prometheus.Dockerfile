# Prometheus for `./demo up N --monitoring` (compose/monitoring.yml): Debian's `prometheus`
# package on the local base image, scraping what lbgen's file_sd targets list.
#
# Build context: docker/build-images.sh stages docker/prometheus.yml and
# docker/prometheus-start.sh. Base: shoal-base (docker/base-image.sh); with a registry,
# --build-arg BASE=debian:bookworm-slim works the same.
ARG BASE=shoal-base:bookworm
FROM ${BASE}

# The web UI loads one file of libjs-moment-timezone (moment-timezone-with-data.min.js); its
# data/ folder, every tz release since 2014 as JSON, is 210 of the image's MB: dropped.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
              /usr/share/javascript/moment-timezone/data \
    && mkdir -p /etc/prometheus/targets /prometheus \
    && chown prometheus:prometheus /prometheus

COPY docker/prometheus.yml /etc/prometheus/prometheus.yml
COPY docker/prometheus-start.sh /usr/local/bin/prometheus-start

USER prometheus
EXPOSE 9090
# The agents' API token (SHOAL_API_TOKEN) becomes a file Prometheus reads; see the script.
ENTRYPOINT ["/usr/local/bin/prometheus-start"]
