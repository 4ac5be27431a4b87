"""Test and demo harness: real SPIRE processes and backend apps."""
