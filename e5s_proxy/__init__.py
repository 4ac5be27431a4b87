"""e5s-proxy: a SPIFFE mTLS sidecar for HTTP/1.1 apps, built on Twisted."""

__version__ = "0.1.0"
