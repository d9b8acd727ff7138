#!/usr/bin/env bash
# Online backup of a Sutra Cluster shard; replaces the deployment guide's
# backup-sutra.sh (flush, sleep, cp, tar), which could copy a half-written file.
#
# `sutra-cluster backup` streams a consistent snapshot at one LSN from a running
# node while writes go on (ask a replica: the leader keeps all its speed),
# checks every frame, and writes storage.dat + manifest.json (LSN, term, state
# digest, sha256) into a new folder. A failed run leaves no folder behind.
#
#   sudo install -m 0755 deploy/backup-sutra.sh /usr/local/bin/backup-sutra.sh
#   crontab:  0 2 * * * /usr/local/bin/backup-sutra.sh >> /var/log/sutra/backup.log 2>&1
#   restore:  sutra-cluster restore --from /backup/sutra/<stamp> --data-dir <new node's STORAGE_PATH>
#
# Settings (environment):
#   SUTRA_BACKUP_NODE            host:port of the node to back up (default localhost:50051)
#   SUTRA_BACKUP_DIR             where backups go (default /backup/sutra)
#   SUTRA_BACKUP_RETENTION_DAYS  backups older than this are deleted (default 30)
#   SUTRA_CLI                    the sutra-cluster program (default: sutra-cluster on PATH,
#                                else /opt/sutra/venv/bin/sutra-cluster)
#   SUTRA_CLUSTER_SECRET_FILE    the cluster secret (GetSnapshot is a node-plane call); or, with
#                                mutual TLS, SUTRA_TLS_CERT/KEY/CA of an admin certificate
#                                (docs/HA.md#security). Default: /etc/sutra/cluster-secret if it exists.
set -euo pipefail

NODE="${SUTRA_BACKUP_NODE:-localhost:50051}"
ROOT="${SUTRA_BACKUP_DIR:-/backup/sutra}"
KEEP_DAYS="${SUTRA_BACKUP_RETENTION_DAYS:-30}"
CLI="${SUTRA_CLI:-$(command -v sutra-cluster || echo /opt/sutra/venv/bin/sutra-cluster)}"

if [ -z "${SUTRA_CLUSTER_SECRET:-}${SUTRA_CLUSTER_SECRET_FILE:-}${SUTRA_TLS_CA:-}" ] && [ -r /etc/sutra/cluster-secret ]; then
  export SUTRA_CLUSTER_SECRET_FILE=/etc/sutra/cluster-secret
fi

mkdir -p "$ROOT"
dest="$ROOT/$(date -u +%Y%m%d-%H%M%S)"
n=1
while [ -e "$dest" ]; do  # two runs in one second must not share (or delete) a folder
  dest="$ROOT/$(date -u +%Y%m%d-%H%M%S)-$n"
  n=$((n + 1))
done
# Work in a folder of this run's own; only a complete backup gets the final name.
work="$dest.partial.$$"
if ! "$CLI" backup --node "$NODE" --out "$work/"; then
  rm -rf -- "$work"
  echo "backup FAILED: $NODE -> $dest" >&2
  exit 1
fi
mv -- "$work" "$dest"

# Retention: delete backup folders (those holding a manifest) older than KEEP_DAYS days.
find "$ROOT" -mindepth 1 -maxdepth 1 -type d -mtime +"$KEEP_DAYS" -exec test -f '{}/manifest.json' ';' -print0 |
  xargs -0 -r rm -rf --

echo "backup completed: $dest ($(du -sh "$dest" | cut -f1))"
