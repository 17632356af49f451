# shellcheck shell=bash
# Sourced by tests/deploy/*.sh: a temp dir, cleanup hooks run in reverse order on exit, fail(), free_port.
set -euo pipefail
# shellcheck disable=SC2034  # used by the scripts that source this
SRC=${DSV4_SOURCE_DIR:?DSV4_SOURCE_DIR (the checkout) is set by CTest}
T=$(mktemp -d)
CLEANUPS=()
on_exit() { CLEANUPS+=("$1"); }
run_cleanups() {  # keeps the test's exit status: a failing cleanup step is reported, not the verdict
  local rc=$? i
  set +e
  for ((i = ${#CLEANUPS[@]} - 1; i >= 0; i--)); do eval "${CLEANUPS[$i]}"; done
  # Mounts a daemon may have left under $T (dockerd's exec-root netns), innermost first.
  awk -v t="$T/" 'index($2, t) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$T" || echo "warning: could not remove $T"
  exit "$rc"
}
trap run_cleanups EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}
# need TOOL PACKAGE: a tool the test cannot do without; missing is a failure, not a skip.
need() { command -v "$1" >/dev/null || fail "$1 not found: install $2 (scripts/setup.sh does)"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
