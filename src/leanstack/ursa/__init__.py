"""Ursa: analytical, SLA-driven resource management for microservices."""
