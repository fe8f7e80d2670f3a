"""Seer: anticipate QoS violations from per-tier traces and metrics, name the culprit tier, and
let a controller act before users notice (CNN + LSTM over the tiers x time matrix)."""
