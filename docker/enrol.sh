#!/bin/sh
# tecc-enrol: the one-shot first step of the compose deployment.
#
#   1. opens (first run: creates) one simulated TEE platform per cloud service
#      (one trust domain each: cluster0, cluster1, dealer, output, each its own
#      volume that only that service mounts) and reads their public keys;
#   2. computes the enclave measurement of this image's cluster build with the
#      analytics policy;
#   3. renders the gateway, dealer and output configs with them (every
#      verifier binds each service id to its own platform's key);
#   4. provisions the gateway on first start: identity and spool keys sealed
#      in the TPM (swtpm container); later starts keep the sealed keys;
#   5. renders the cluster configs with the gateway's public key (the
#      operator allow-list): per party its shard-0 worker (`cluster<i>.yaml`, which
#      the ingest frontend runs with too), the standby of shard 0 and the worker of
#      shard 1, and the dealer of shard 1;
#   6. creates, once, each party's JetStream credential (a random password) in that
#      party's own volume cluster<i>-nats-auth and renders its nats-server config there
#      (only that party's node, workers and frontend mount it).
#
# Idempotent: every start re-renders the configs from the read-only templates
# and re-reads the keys, so editing a template or the policy takes effect on
# the next `docker compose up`. Paths can be overridden by the environment.
set -eu

TEMPLATES=${TECC_TEMPLATES:-/etc/tecc/templates}
POLICY=${TECC_POLICY:-/etc/tecc/policy.yaml}
CONFIG_DIR=${TECC_CONFIG_DIR:-/var/lib/tecc/config}
PLATFORM_DIR=${TECC_PLATFORM_DIR:-/var/lib/tecc/platform}
GATEWAY_STATE=${TECC_GATEWAY_STATE:-/var/lib/tecc/gateway}
# Beside the platforms by default: /var/lib/tecc/nats-auth/cluster<i> (one volume each).
NATS_AUTH_DIR=${TECC_NATS_AUTH_DIR:-$(dirname "$PLATFORM_DIR")/nats-auth}

log() { printf 'tecc-enrol: %s\n' "$*" >&2; }

# render TEMPLATE_NAME OUTPUT_NAME: substitute every @NAME@ placeholder.
render() {
  tmp="$CONFIG_DIR/.$2.tmp"
  sed -e "s/@PLATFORM_CLUSTER0_KEY_ID@/$cluster0_id/g" \
      -e "s/@PLATFORM_CLUSTER0@/$cluster0_key/g" \
      -e "s/@PLATFORM_CLUSTER1_KEY_ID@/$cluster1_id/g" \
      -e "s/@PLATFORM_CLUSTER1@/$cluster1_key/g" \
      -e "s/@PLATFORM_DEALER@/$dealer_key/g" \
      -e "s/@PLATFORM_OUTPUT@/$output_key/g" \
      -e "s/@MEASUREMENT@/$measurement/g" \
      -e "s/@GATEWAY_PUBLIC_KEY@/${gateway_key:-@GATEWAY_PUBLIC_KEY@}/g" \
      "$TEMPLATES/$1" > "$tmp"
  mv "$tmp" "$CONFIG_DIR/$2"
}

mkdir -p "$CONFIG_DIR"

# shellcheck disable=SC2046  # keygen prints exactly "<key id> <public key hex>"
set -- $(tecc-cluster keygen --platform-dir "$PLATFORM_DIR/cluster0"); cluster0_id=$1; cluster0_key=$2
# shellcheck disable=SC2046
set -- $(tecc-cluster keygen --platform-dir "$PLATFORM_DIR/cluster1"); cluster1_id=$1; cluster1_key=$2
# shellcheck disable=SC2046
set -- $(tecc-cluster keygen --platform-dir "$PLATFORM_DIR/dealer"); dealer_key=$2
# shellcheck disable=SC2046
set -- $(tecc-cluster keygen --platform-dir "$PLATFORM_DIR/output"); output_key=$2
measurement=$(tecc-cluster measure --policy "$POLICY")
log "platforms cluster0 $cluster0_id, cluster1 $cluster1_id; measurement $measurement"

render gateway.yaml.tmpl gateway.yaml
render dealer.yaml.tmpl dealer.yaml
render output.yaml.tmpl output.yaml

if [ -f "$GATEWAY_STATE/identity.sealed" ] && [ -f "$GATEWAY_STATE/spool-key.sealed" ]; then
  log "gateway already provisioned; keeping the keys sealed in $GATEWAY_STATE"
else
  log "provisioning the gateway: keys sealed in the TPM"
  # The TPM container may be healthy a moment before its name resolves and its port
  # answers on the tpm network: exit 4 (TPM unreachable) is retried for up to 10 s.
  tries=0
  until tecc-gateway provision --config "$CONFIG_DIR/gateway.yaml" >&2; do
    rc=$?
    tries=$((tries + 1))
    if [ "$rc" -ne 4 ] || [ "$tries" -ge 10 ]; then
      log "provisioning failed (exit $rc)"
      exit "$rc"
    fi
    log "TPM not reachable yet; retrying in 1 s"
    sleep 1
  done
fi
gateway_key=$(tr -d '[:space:]' < "$GATEWAY_STATE/identity.pub")
log "gateway public key $gateway_key"

for i in 0 1; do
  render "cluster$i.yaml.tmpl" "cluster$i.yaml"
  render "cluster$i-shard0-standby.yaml.tmpl" "cluster$i-shard0-standby.yaml"
  render "cluster$i-shard1.yaml.tmpl" "cluster$i-shard1.yaml"
done
render dealer-shard1.yaml.tmpl dealer-shard1.yaml

# Each party's JetStream credential: created once in its own volume, kept afterwards.
for i in 0 1; do
  auth="$NATS_AUTH_DIR/cluster$i"
  mkdir -p "$auth"
  if [ ! -s "$auth/nats.password" ]; then
    (umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' > "$auth/nats.password.tmp")
    mv "$auth/nats.password.tmp" "$auth/nats.password"
    log "created the JetStream credential of cluster$i"
  fi
  password=$(cat "$auth/nats.password")
  (umask 077 && sed -e "s/@NATS_PASSWORD@/$password/g" -e "s/@NATS_NAME@/cluster$i-nats/g" \
    "$TEMPLATES/nats.conf.tmpl" > "$auth/.nats.conf.tmp")
  mv "$auth/.nats.conf.tmp" "$auth/nats.conf"
done
log "configs rendered to $CONFIG_DIR, JetStream configs to $NATS_AUTH_DIR"
