"""Benchmark of e5s-proxy against ghostunnel, nginx and a direct connection."""
