# e5s-proxy container image: the SPIFFE mTLS sidecar, run by twistd.
#
#   docker build -t e5s-proxy .
#   docker run -v ./config.yaml:/etc/e5s-proxy/config.yaml:ro \
#       -v /run/spire/sockets:/run/spire/sockets:ro e5s-proxy
#
# The config comes from /etc/e5s-proxy/config.yaml (a ConfigMap in
# Kubernetes, see deploy/k8s/). The image contains no config and no secrets:
# the proxy gets its keys from the SPIRE agent's Workload API at run time.

# Stage 1: build the e5s-proxy wheel from this checkout.
FROM python:3.11-slim AS build

WORKDIR /src
COPY pyproject.toml README.md ./
COPY e5s_proxy/ e5s_proxy/
COPY twisted/plugins/e5s_proxy_plugin.py twisted/plugins/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Stage 2: install the wheel and its dependencies into a venv, without the
# build tree.
FROM python:3.11-slim

ENV PATH=/opt/e5s-proxy/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --from=build /wheels/ /tmp/wheels/
# Listing the plugins once as root writes Twisted's dropin.cache into the
# venv, so that twistd need not write it later on a read-only filesystem.
RUN python -m venv /opt/e5s-proxy \
    && /opt/e5s-proxy/bin/pip install --no-cache-dir /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && /opt/e5s-proxy/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
    && groupadd --system --gid 10001 e5s-proxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin e5s-proxy

# A fixed numeric UID, so that Kubernetes runAsNonRoot can check it
# without resolving a user name.
USER 10001:10001

# 8443: mTLS inbound (server.listen_addr), from other workloads.
# 15001: plaintext outbound (client.listen_addr), for the app in the same
#        pod; bind it to 127.0.0.1.
# 15000: plaintext admin (admin.listen_addr): /healthz, /readyz, /metrics.
EXPOSE 8443 15001 15000

# --pidfile= writes no PID file, because the container runtime tracks the
# process. twistd -n logs to stdout.
ENTRYPOINT ["twistd", "-n", "--pidfile=", "e5s-proxy"]
CMD ["--config", "/etc/e5s-proxy/config.yaml"]
