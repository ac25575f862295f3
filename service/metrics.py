"""Prometheus metrics served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import Counter

RSA_RUNS = Counter("mrsa_rsa_runs_total", "RSA runs started.")
ENGINE_CALLS = Counter("mrsa_rsa_engine_calls_total", "Engine requests made by finished RSA runs.")
GENERATED_TOKENS = Counter("mrsa_generated_tokens_total", "Completion tokens returned to clients.")
STOP_REASONS = Counter("mrsa_rsa_stops_total", "Why RSA runs stopped.", ["reason"])
