"""Webhook formats: one module per channel (parsing and signature checks)."""
