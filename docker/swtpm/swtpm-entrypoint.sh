#!/bin/sh
# The swtpm container's entry point: a TPM that only the gateway can use.
#
#   * the command port and the control port (power, reset) listen on
#     SWTPM_BIND (0.0.0.0 in the container, which compose attaches only to the
#     internal `tpm` network shared with the gateway and enrol): the gateway's
#     TSS (TCTI swtpm) opens both, so a loopback-only control port would lock
#     the gateway out; no other service can reach either, and TPM2_Clear is
#     disabled below, so the control port cannot clear the TPM;
#   * at every start, before the health check passes: TPM2_Clear is disabled
#     and the platform hierarchy's auth is set to a random value nobody keeps
#     (what platform firmware does at boot), so no client can clear the TPM;
#   * at the first start: a random lockout auth (kept in the TPM state volume,
#     0600) and dictionary-attack parameters (32 tries, one forgiven per
#     minute, lockout auth retry after 10 minutes). The gateway sets the owner
#     auth itself at provisioning (tpm.owner_auth_file);
#   * SIGTERM is an orderly TPM2_Shutdown(STATE) before swtpm exits, so a
#     container restart is no longer an unorderly power loss that the TPM
#     counts as a dictionary-attack failure.
#
# Environment (defaults are the container's): SWTPM_STATE, SWTPM_PORT (the
# control port is SWTPM_PORT + 1), SWTPM_BIND.
set -eu

STATE=${SWTPM_STATE:-/var/lib/swtpm}
PORT=${SWTPM_PORT:-2321}
CTRL=$((PORT + 1))
BIND=${SWTPM_BIND:-0.0.0.0}
TCTI="swtpm:host=127.0.0.1,port=$PORT"
LOCKOUT="$STATE/lockout.auth"
umask 077

log() { printf 'swtpm-entrypoint: %s\n' "$*" >&2; }

rm -f "$STATE/.ready"
swtpm socket --tpm2 \
  --server "type=tcp,port=$PORT,bindaddr=$BIND" \
  --ctrl "type=tcp,port=$CTRL,bindaddr=$BIND" \
  --flags not-need-init,startup-clear \
  --tpmstate "dir=$STATE" &
pid=$!
# If a setup step fails, do not leave swtpm running without its protections.
trap 'kill "$pid" 2>/dev/null || true' EXIT

stop() {
  log "orderly shutdown"
  tpm2_shutdown -T "$TCTI" -c >&2 || log "TPM2_Shutdown failed; the next start counts as unorderly"
  swtpm_ioctl --tcp "127.0.0.1:$CTRL" -s >&2 || kill "$pid"
  wait "$pid" || true
  trap - EXIT
  exit 0
}
trap stop TERM INT

i=0
until tpm2_startup -T "$TCTI" >/dev/null 2>&1 || tpm2_pcrread -T "$TCTI" sha256:0 >/dev/null 2>&1; do
  i=$((i + 1))
  [ "$i" -lt 100 ] || { log "swtpm did not come up"; exit 1; }
  sleep 0.1
done

random_hex() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

if [ ! -s "$LOCKOUT" ]; then
  # First start: DA parameters (with the empty lockout auth), then a random lockout auth.
  tpm2_dictionarylockout -T "$TCTI" -s -n 32 -t 60 -l 600 >&2
  random_hex > "$LOCKOUT.new"
  tpm2_changeauth -T "$TCTI" -c lockout "hex:$(cat "$LOCKOUT.new")" >&2
  mv "$LOCKOUT.new" "$LOCKOUT"
  log "dictionary-attack parameters and lockout auth set (kept in $LOCKOUT)"
fi
tpm2_clearcontrol -T "$TCTI" -C p s >&2
tpm2_changeauth -T "$TCTI" -c platform "hex:$(random_hex)" >&2
touch "$STATE/.ready"
log "TPM ready: clear disabled, platform auth discarded"

wait "$pid"
