"""Sutra Cluster: a replicated storage cluster for a continuously learning knowledge graph."""

__version__ = "0.1.0"
