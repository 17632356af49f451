#!/usr/bin/env bash
# deploy.shellcheck: shellcheck (warnings and errors) on every script of the deployment: scripts/, deploy/ and
# tests/deploy/. (The older tests/server and bench scripts are not covered yet; they have known findings.)
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
need shellcheck shellcheck
cd "$SRC"
mapfile -t files < <(ls scripts/*.sh deploy/*.sh tests/deploy/*.sh)
((${#files[@]} >= 8)) || fail "only ${#files[@]} scripts found"
shellcheck -x -S warning "${files[@]}" || fail "shellcheck found problems (above)"
echo "shellcheck: ${#files[@]} scripts clean"
