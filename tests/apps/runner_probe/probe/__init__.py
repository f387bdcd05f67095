"""Probe app: counts messages in context.state and fails on request."""
