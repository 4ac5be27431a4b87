"""twistd plugin declaration; options and the service live in e5s_proxy.tap."""

from twisted.application.service import ServiceMaker

e5s_proxy = ServiceMaker(
    "e5s-proxy",
    "e5s_proxy.tap",
    "SPIFFE mTLS sidecar for HTTP/1.1 apps",
    "e5s-proxy",
)
