"""Runnable experiments over progprune: sweep definitions, a sweep runner, an aggregator."""
