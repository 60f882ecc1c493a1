"""Synchronous invocation: enqueue with a reply inbox and wait for the outcome."""
