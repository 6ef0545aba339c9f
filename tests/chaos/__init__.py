"""Chaos tests: real processes killed, stopped and restarted under load (issue #4)."""
