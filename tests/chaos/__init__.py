"""Chaos tests: a real etcd and three real node processes, with SIGKILL, SIGSTOP,
network partitions (iptables), an etcd outage, divergent tails, switchovers and
SIGTERM, each checked by ``checker.py`` and summed up in a JSON report."""
