"""Processor plugins: each turns columnar batches into metrics (entry-point group ``modeltel.processors``)."""
