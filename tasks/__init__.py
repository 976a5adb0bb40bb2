"""Prefect tasks: thin wrappers over `bullphish_billing.stages`, adding names and retries."""
