#!/usr/bin/env bash
# Stops dsv4 on the head (this host) and, with NNODES=2, on the worker over ssh, as started by
# scripts/start-dsv4.sh with the same settings file:
#   scripts/stop-dsv4.sh [--env deploy/.env]
# SIGTERM first (container: docker-compose down), so running requests finish within dsv4's
# --shutdown-grace-period; SIGKILL after 75 s. Safe to run when nothing is running.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/dsv4-deploy-lib.sh"
parse_args "$@"
load_env
rc=0
# The head first: it stops taking requests and drains them; then the worker it was driving.
for r in 0 ${WORKER_SSH:+1}; do
  if stop_node "$r"; then say "stopped rank $r on $(node_name "$r")"
  else echo "error: could not stop rank $r on $(node_name "$r")" >&2; rc=1; fi
done
exit "$rc"
