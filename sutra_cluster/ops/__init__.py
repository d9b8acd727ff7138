"""The operator command line's pieces (``sutra-cluster status|history|pause|resume|reinit``):
reading a cluster's state from etcd and its nodes, and showing it as tables,
JSON or YAML. Nothing here runs inside a node."""
