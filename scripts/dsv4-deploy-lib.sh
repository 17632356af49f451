# shellcheck shell=bash
# Shared by scripts/start-dsv4.sh and scripts/stop-dsv4.sh (sourced): the settings file, running commands on
# a node (the head locally, the worker over ssh), and the per-node start / alive / log / stop steps of both
# modes. Every per-node file is named by rank (dsv4-rank1.log ...), so nodes that share a filesystem (an NFS
# home, or CI's two network namespaces on one machine) do not overwrite each other's.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENV_FILE=$ROOT/deploy/.env
SETTINGS=()  # KEY=value lines of the settings file, in order

die() { echo "error: $*" >&2; exit 1; }
say() { echo "[dsv4] $*"; }

parse_args() {
  while (($#)); do
    case "$1" in
      --env) ENV_FILE=${2:?--env FILE}; shift 2 ;;
      -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | cut -c3-; exit 0 ;;
      *) die "unknown argument $1 (see --help)" ;;
    esac
  done
}

# The settings file is KEY=value lines (Compose's .env format): read, never sourced, so a value is data.
load_env() {
  [ -f "$ENV_FILE" ] || die "settings file $ENV_FILE not found: cp deploy/.env.example deploy/.env and edit it"
  local line key
  while IFS= read -r line || [ -n "$line" ]; do
    case "$line" in ''|'#'*) continue ;; esac
    key=${line%%=*}
    [[ "$key" =~ ^[A-Z_][A-Z0-9_]*$ && "$line" == *=* ]] || die "$ENV_FILE: not KEY=value: $line"
    SETTINGS+=("$line")
    # A node's rank and role are the start script's to decide (0 here, 1 on the worker), whatever the file says;
    # exported, they would override the per-node values docker-compose reads from its env file.
    case "$key" in NODE_RANK|HEADLESS) continue ;; esac
    export "$key=${line#*=}"
  done <"$ENV_FILE"
  DSV4_MODE=${DSV4_MODE:-container}
  case "$DSV4_MODE" in container|native) ;; *) die "DSV4_MODE=$DSV4_MODE: container or native" ;; esac
  NNODES=${NNODES:-1}
  STATE_DIR=${STATE_DIR:-/tmp/dsv4}
  PORT=${PORT:-8000}
  MASTER_PORT=${MASTER_PORT:-29500}
  read -r -a SSH_ARGS <<<"${SSH_OPTS:-}"
  SSH_ARGS=(-o BatchMode=yes -o ConnectTimeout=10 "${SSH_ARGS[@]}")
  if [ "$NNODES" = 1 ]; then WORKER_SSH=""; fi
  [ "$NNODES" = 1 ] || [ "$NNODES" = 2 ] || die "NNODES=$NNODES: this script drives 1 or 2 nodes"
  if [ "$NNODES" = 2 ]; then
    [ -n "${WORKER_SSH:-}" ] || die "NNODES=2 needs WORKER_SSH (the worker's ssh destination) in $ENV_FILE"
  fi
}

node_name() { if [ "$1" = 0 ]; then echo "head (this host)"; else echo "worker ($WORKER_SSH)"; fi; }
ranks() { if [ -n "$WORKER_SSH" ]; then echo "1 0"; else echo 0; fi; }  # start order: worker first

# on_node RANK SCRIPT [STDIN-FILE]: runs a bash script on the head (rank 0) or over ssh on the worker (rank 1).
on_node() {
  local rank=$1 script=$2 input=${3:-/dev/null}
  if [ "$rank" = 0 ]; then
    bash -c "$script" <"$input"
  else
    # shellcheck disable=SC2029  # expanded here on purpose: the script is built locally, %q-quoted
    ssh "${SSH_ARGS[@]}" "$WORKER_SSH" "bash -c $(printf '%q' "$script")" <"$input"
  fi
}
q() { printf '%q' "$1"; }

# The settings file's lines for a node, without what the start script decides per node (appended by stage_node).
node_settings() {  # node_settings shell|compose
  local line
  for line in "${SETTINGS[@]}"; do
    case "${line%%=*}" in NODE_RANK|HEADLESS|MODEL_PATH) continue ;; esac
    if [ "$1" = shell ]; then printf '%s=%q\n' "${line%%=*}" "${line#*=}"; else printf '%s\n' "$line"; fi
  done
}

# Copies the files a node needs into its STATE_DIR (mode 600: the settings hold the API key).
stage_node() {  # stage_node RANK
  local rank=$1 d tmp
  d=$(q "$STATE_DIR")
  # Ours alone (it holds the launcher that runs and the settings with the API key): a STATE_DIR in /tmp that
  # someone else created first is refused, not used.
  on_node "$rank" "mkdir -p $d && [ -O $d ] && chmod 700 $d" ||
    die "$(node_name "$rank"): STATE_DIR $STATE_DIR cannot be created or belongs to another user: choose another"
  tmp=$(mktemp)
  if [ "$DSV4_MODE" = native ]; then
    node_settings shell >"$tmp"
    printf 'NODE_RANK=%s\nHEADLESS=%s\nMODEL_PATH=%q\nDSV4_BIN=%q\n' "$rank" "$([ "$rank" = 0 ] && echo 0 || echo 1)" \
      "$MODEL_DIR" "$DSV4_BIN" >>"$tmp"
    on_node "$rank" "mkdir -p $d && umask 077 && cat > $d/dsv4-rank$rank.env" "$tmp"
    on_node "$rank" "cat > $d/dsv4-launch.sh && chmod 755 $d/dsv4-launch.sh" "$ROOT/deploy/dsv4-launch.sh"
  else
    node_settings compose >"$tmp"
    printf 'NODE_RANK=%s\nHEADLESS=%s\n' "$rank" "$([ "$rank" = 0 ] && echo 0 || echo 1)" >>"$tmp"
    on_node "$rank" "mkdir -p $d && umask 077 && cat > $d/dsv4-rank$rank.compose.env" "$tmp"
    on_node "$rank" "cat > $d/docker-compose.yml" "$ROOT/${DSV4_COMPOSE_FILE:-deploy/docker-compose.yml}"
  fi
  rm -f "$tmp"
}

compose_cmd() {  # the docker-compose invocation for RANK, as a shell string for on_node
  local d
  d=$(q "$STATE_DIR")
  echo "docker-compose -p dsv4-rank$1 --env-file $d/dsv4-rank$1.compose.env -f $d/docker-compose.yml"
}

start_node() {  # start_node RANK
  local rank=$1 d
  d=$(q "$STATE_DIR")
  if [ "$DSV4_MODE" = native ]; then
    # setsid + nohup: the server outlives the ssh session; the pid is dsv4's own (the launcher execs it).
    # Only the launcher goes to the background (a backgrounded && list would be a subshell, and $! its pid).
    on_node "$rank" "cd $d || exit 1; set -a; . ./dsv4-rank$rank.env || exit 1; set +a
      setsid nohup ./dsv4-launch.sh >dsv4-rank$rank.log 2>&1 </dev/null & echo \$! > dsv4-rank$rank.pid"
  else
    on_node "$rank" "$(compose_cmd "$rank") up -d"
  fi
}

node_alive() {  # node_alive RANK: exit 0 while its server runs
  local rank=$1 d
  d=$(q "$STATE_DIR")
  if [ "$DSV4_MODE" = native ]; then
    on_node "$rank" "p=\$(cat $d/dsv4-rank$rank.pid 2>/dev/null) && kill -0 \"\$p\" 2>/dev/null"
  else
    on_node "$rank" "[ \"\$(docker inspect -f '{{.State.Running}}' dsv4-rank$rank 2>/dev/null)\" = true ]"
  fi
}

node_log_tail() {  # node_log_tail RANK [LINES]
  local rank=$1 n=${2:-40} d
  d=$(q "$STATE_DIR")
  echo "----- last $n lines of the $(node_name "$rank") log -----"
  if [ "$DSV4_MODE" = native ]; then
    on_node "$rank" "tail -n $n $d/dsv4-rank$rank.log 2>&1" || true
  else
    on_node "$rank" "docker logs --tail $n dsv4-rank$rank 2>&1" || true
  fi
  echo "-----"
}

stop_node() {  # stop_node RANK: SIGTERM (requests drain for the shutdown grace), SIGKILL after 75 s
  local rank=$1 d
  d=$(q "$STATE_DIR")
  if [ "$DSV4_MODE" = native ]; then
    on_node "$rank" "f=$d/dsv4-rank$rank.pid; [ -f \"\$f\" ] || exit 0; p=\$(cat \"\$f\")
      if kill -TERM \"\$p\" 2>/dev/null; then
        for _ in \$(seq 1 150); do kill -0 \"\$p\" 2>/dev/null || break; sleep 0.5; done
        kill -KILL \"\$p\" 2>/dev/null && echo 'killed after 75 s' || true
      fi
      rm -f \"\$f\""
  else
    on_node "$rank" "[ -f $d/dsv4-rank$rank.compose.env ] || exit 0; $(compose_cmd "$rank") down -t 75"
  fi
}
