#!/bin/sh
# tecc-enrol: the one-shot first step of the compose deployment.
#
#   1. opens (first run: creates) the simulated TEE platform shared by the
#      cloud services and reads its attestation public key;
#   2. computes the enclave measurement of this image's cluster build with the
#      analytics policy;
#   3. renders the gateway config with both (the gateway verifies the
#      clusters' quotes against them);
#   4. provisions the gateway on first start: identity and spool keys sealed
#      in the TPM (swtpm container); later starts keep the sealed keys;
#   5. renders the cluster configs with the gateway's public key (the
#      operator allow-list).
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

log() { printf 'tecc-enrol: %s\n' "$*" >&2; }

# render TEMPLATE_NAME OUTPUT_NAME: substitute every @NAME@ placeholder.
render() {
  tmp="$CONFIG_DIR/.$2.tmp"
  sed -e "s/@PLATFORM_KEY_ID@/$platform_key_id/g" \
      -e "s/@PLATFORM_PUBLIC_KEY@/$platform_key/g" \
      -e "s/@MEASUREMENT@/$measurement/g" \
      -e "s/@GATEWAY_PUBLIC_KEY@/${gateway_key:-@GATEWAY_PUBLIC_KEY@}/g" \
      "$TEMPLATES/$1" > "$tmp"
  mv "$tmp" "$CONFIG_DIR/$2"
}

mkdir -p "$CONFIG_DIR"

# shellcheck disable=SC2046  # keygen prints exactly "<key id> <public key hex>"
set -- $(tecc-cluster keygen --platform-dir "$PLATFORM_DIR")
platform_key_id=$1
platform_key=$2
measurement=$(tecc-cluster measure --policy "$POLICY")
log "platform $platform_key_id, measurement $measurement"

render gateway.yaml.tmpl gateway.yaml

if [ -f "$GATEWAY_STATE/identity.sealed" ] && [ -f "$GATEWAY_STATE/spool-key.sealed" ]; then
  log "gateway already provisioned; keeping the keys sealed in $GATEWAY_STATE"
else
  log "provisioning the gateway: keys sealed in the TPM"
  tecc-gateway provision --config "$CONFIG_DIR/gateway.yaml" >&2
fi
gateway_key=$(tr -d '[:space:]' < "$GATEWAY_STATE/identity.pub")
log "gateway public key $gateway_key"

render cluster0.yaml.tmpl cluster0.yaml
render cluster1.yaml.tmpl cluster1.yaml
log "configs rendered to $CONFIG_DIR"
