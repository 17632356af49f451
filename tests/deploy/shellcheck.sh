#!/usr/bin/env bash
# deploy.shellcheck: shellcheck (warnings and errors) on every shell script of the repository (scripts/, deploy/,
# tests/, bench/; not the npm clients' node_modules).
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
need shellcheck shellcheck
cd "$SRC"
mapfile -t files < <(find scripts deploy tests bench -name node_modules -prune -o -name '*.sh' -print | sort)
((${#files[@]} >= 30)) || fail "only ${#files[@]} scripts found"
shellcheck -x -S warning "${files[@]}" || fail "shellcheck found problems (above)"
echo "shellcheck: ${#files[@]} scripts clean"
