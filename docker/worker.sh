#!/bin/sh
# tecc-worker: start one process of a party in the compose JetStream layout.
#
#   tecc-worker party  --config /var/lib/tecc/config/cluster0-shard1.yaml
#   tecc-worker ingest --config /var/lib/tecc/config/cluster0.yaml
#
# Before it runs `tecc-cluster "$@"` it puts into the process's state dir
# ($TECC_STATE, the config's state_dir) what a provisioning step would:
#
#   1. the party's JetStream credential ($TECC_NATS_PASSWORD_FILE, in the party's
#      own volume cluster<i>-nats-auth) as <state_dir>/nats/nats.password (0600),
#      where the party process reads it (cloud_tecc/jetstream/sharelog.py);
#   2. with $TECC_KEYS_FROM set (every worker but the party's first), the party's
#      sealed keys: a copy of $TECC_KEYS_FROM/sealed_keys.bin, once that first worker
#      created them (waits up to 120 s), unless this state dir holds them already.
#      All processes of a party run under its one attested identity (docs/CLOUD.md,
#      "Shards": the same service id, platform and sealed keys).
set -eu

log() { printf 'tecc-worker: %s\n' "$*" >&2; }

state=${TECC_STATE:?set TECC_STATE to the state_dir of the config}
mkdir -p "$state/nats"

if [ -n "${TECC_NATS_PASSWORD_FILE:-}" ]; then
  (umask 077 && cp "$TECC_NATS_PASSWORD_FILE" "$state/nats/.nats.password.tmp")
  mv "$state/nats/.nats.password.tmp" "$state/nats/nats.password"
fi

if [ -n "${TECC_KEYS_FROM:-}" ] && [ ! -f "$state/sealed_keys.bin" ]; then
  tries=0
  until [ -f "$TECC_KEYS_FROM/sealed_keys.bin" ]; do
    tries=$((tries + 1))
    if [ "$tries" -ge 120 ]; then
      log "no sealed keys in $TECC_KEYS_FROM after 120 s; is the party's first worker up?"
      exit 3
    fi
    sleep 1
  done
  (umask 077 && cp "$TECC_KEYS_FROM/sealed_keys.bin" "$state/.sealed_keys.tmp")
  mv "$state/.sealed_keys.tmp" "$state/sealed_keys.bin"
  log "sealed keys of the party copied from $TECC_KEYS_FROM"
fi

exec tecc-cluster "$@"
