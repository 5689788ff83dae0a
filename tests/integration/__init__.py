"""Tests across adapters and entrypoints, in process."""
