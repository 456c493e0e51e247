# shellcheck shell=bash disable=SC2034  # settings below are used by the scripts that source this
# Shared code for infra/local/up and infra/local/down. Sourced, not executed.
#
# The local stack is four plain processes bound to 127.0.0.1:
#   postgres  - one cluster holding the databases prefect, mlflow and optuna
#   prefect   - `prefect server start` (API + UI), backed by the prefect database
#   mlflow    - `mlflow server` (tracking + proxied artifacts), backed by the mlflow database
#   worker    - `prefect worker start` polling a process work pool
# Everything they write lives in one state folder so that `rm -rf` of it is a full reset.

# ---------------------------------------------------------------- settings
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE_DIR="${MTL_INFRA_DIR:-$REPO_ROOT/.state/infra}"
VENV_DIR="${MTL_VENV:-$REPO_ROOT/.venv}"
VENV_BIN="$VENV_DIR/bin"

HOST=127.0.0.1                                   # never 0.0.0.0: this stack has no auth in front
PG_PORT="${MTL_PG_PORT:-55432}"                  # private port, so a system postgres on 5432 is untouched
PREFECT_PORT="${MTL_PREFECT_PORT:-4200}"
MLFLOW_PORT="${MTL_MLFLOW_PORT:-5000}"
WORK_POOL="${MTL_WORK_POOL:-mtl-process}"
WORKER_NAME="${MTL_WORKER_NAME:-mtl-local-worker}"
TIMEOUT="${MTL_INFRA_TIMEOUT:-120}"              # seconds to wait for each component to become healthy
MLFLOW_WORKERS="${MTL_MLFLOW_WORKERS:-2}"        # uvicorn workers; 4 (MLflow's default) is overkill locally

PG_ROLE=mtl                                      # owner of the three databases; password in $PASSWORD_FILE
PG_DATABASES=(prefect mlflow optuna)
PG_SYSUSER=postgres                              # OS user postgres runs as when we are root

LOG_DIR="$STATE_DIR/logs"
RUN_DIR="$STATE_DIR/run"                         # our PID files
PASSWORD_FILE="$STATE_DIR/pg-password"
ENV_FILE="$STATE_DIR/env.sh"
PREFECT_HOME_DIR="$STATE_DIR/prefect-home"
MLFLOW_ARTIFACTS_DIR="$STATE_DIR/mlartifacts"

PREFECT_API="http://$HOST:$PREFECT_PORT/api"
MLFLOW_URL="http://$HOST:$MLFLOW_PORT"

# Canonical start order; `down` walks it backwards: worker, prefect, mlflow, postgres.
ALL_COMPONENTS=(postgres mlflow prefect worker)

# ---------------------------------------------------------------- small helpers
log() { printf '[infra] %s\n' "$*" >&2; }
die() { printf '[infra] ERROR: %s\n' "$*" >&2; exit 1; }

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# A short stable hash of the state path, used to name fallback folders outside it.
state_hash() { printf '%s' "$STATE_DIR" | cksum | cut -d' ' -f1; }

# Exit with an error on a component name we do not know.
check_components() {
    local r c ok
    for r in "$@"; do
        ok=0
        for c in "${ALL_COMPONENTS[@]}"; do [[ "$r" == "$c" ]] && ok=1; done
        [[ $ok -eq 1 ]] || die "unknown component '$r' (known: ${ALL_COMPONENTS[*]})"
    done
}

# Print the given (already checked) component names once each, in canonical order, so that
# `down mlflow worker` still stops the worker first.
ordered_components() {
    local requested=("$@") c r
    for c in "${ALL_COMPONENTS[@]}"; do
        for r in "${requested[@]}"; do
            if [[ "$r" == "$c" ]]; then echo "$c"; break; fi
        done
    done
}

# True when something accepts TCP connections on 127.0.0.1:$1 (bash's /dev/tcp, no extra tools).
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# ---------------------------------------------------------------- PostgreSQL location
# Postgres refuses to run as root, so as root we run it as the `postgres` system user. That user
# must be able to reach the data folder; if the repo lives somewhere it cannot traverse (e.g. under
# /root, mode 700) we fall back to a folder under /var/lib, named after the state path.
pg_user_can_reach() { (cd / && runuser -u "$PG_SYSUSER" -- test -x "$1") 2>/dev/null; }

resolve_pg_dir() {
    PG_DIR="${MTL_PG_DIR:-$STATE_DIR/pg}"
    if [[ -z "${MTL_PG_DIR:-}" ]] && is_root && id "$PG_SYSUSER" >/dev/null 2>&1; then
        if [[ -d "$STATE_DIR" ]] && ! pg_user_can_reach "$STATE_DIR"; then
            PG_DIR="/var/lib/mtl-infra/pg-$(state_hash)"
        fi
    fi
    PGDATA_DIR="$PG_DIR/data"
    # The server log must be writable by the postgres user: keep it in logs/ when that folder is
    # reachable, next to the data otherwise (up then links it into logs/).
    if [[ "$PG_DIR" == "$STATE_DIR/pg" ]]; then PG_LOG="$LOG_DIR/postgres.log"; else PG_LOG="$PG_DIR/postgres.log"; fi
    PG_SOCKET_DIR="$PG_DIR/socket"
    # A unix socket path is limited to 107 bytes; deep pytest tmp folders can exceed it.
    if (( ${#PG_SOCKET_DIR} + ${#PG_PORT} + 10 > 100 )); then
        PG_SOCKET_DIR="/tmp/mtl-pg-$(state_hash)"
    fi
}

# Find initdb/pg_ctl/psql: PATH first, then the newest Debian versioned folder.
find_pg_bin() {
    PG_BIN=""
    if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
        PG_BIN="$(dirname "$(readlink -f "$(command -v pg_ctl)")")"
    else
        local d
        for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
            if [[ -x "$d/pg_ctl" && -x "$d/initdb" ]]; then PG_BIN="$d"; break; fi
        done
    fi
    [[ -n "$PG_BIN" ]]
}

# Run a postgres binary as the postgres system user when we are root (cd / so it does not
# complain about an unreadable current directory), as ourselves otherwise.
as_pg() {
    if is_root; then
        (cd / && runuser -u "$PG_SYSUSER" -- "$@")
    else
        "$@"
    fi
}

pg_running() {
    [[ -f "$PGDATA_DIR/PG_VERSION" ]] || return 1
    [[ -n "${PG_BIN:-}" ]] || find_pg_bin || return 1
    as_pg "$PG_BIN/pg_ctl" status -D "$PGDATA_DIR" >/dev/null 2>&1
}

pg_password() { cat "$PASSWORD_FILE"; }

# URLs handed to the servers and to clients. The password is hex, so it needs no URL-escaping.
pg_url() { # $1 = driver prefix (e.g. postgresql+asyncpg), $2 = database
    printf '%s://%s:%s@%s:%s/%s' "$1" "$PG_ROLE" "$(pg_password)" "$HOST" "$PG_PORT" "$2"
}

# ---------------------------------------------------------------- process bookkeeping
pid_file() { echo "$RUN_DIR/$1.pid"; }

# A component counts as running when its PID file names a live process whose command line still
# mentions the expected program (guards against a recycled PID after a reboot or crash).
proc_alive() { # $1 = component, $2 = word expected in its command line
    local f pid
    f="$(pid_file "$1")"
    [[ -f "$f" ]] || return 1
    pid="$(cat "$f")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Read into a variable rather than piping into `grep -q`: with pipefail, grep quitting early
    # can SIGPIPE the writer and turn a match into a failure.
    local cmdline
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *"$2"* ]]
}

# Start a long-running command in its own session (setsid) so that `down` can kill the whole
# process group, including the uvicorn/gunicorn children the servers spawn. stdin is closed and
# output appended to the component's log, so it survives the shell that started it.
# The subshell is not a process-group leader (scripts run without job control), so setsid(1)
# calls setsid() in place and exec()s: the PID we record is the session and group leader.
spawn() { # $1 = component, $2 = working directory, rest = command (use `env K=V ...` for env)
    local comp="$1" cwd="$2"; shift 2
    local logf="$LOG_DIR/$comp.log"
    log_marker "$comp" "$logf"
    (cd "$cwd" && exec setsid "$@" </dev/null >>"$logf" 2>&1) &
    echo $! >"$(pid_file "$comp")"
}

# HTTP GET that succeeds on a 2xx answer; curl when present, else the venv's Python.
http_ok() { # $1 = URL
    if command -v curl >/dev/null 2>&1; then
        curl -fsS -m 5 -o /dev/null "$1"
    else
        "$VENV_BIN/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)' "$1"
    fi
}

# PIDs of the process tree below $1, found through parent links. Collected before signalling,
# because a child that moved to its own session (Prefect can isolate flow-run processes that way)
# is outside the process group and would be orphaned, and so untraceable, once its parent dies.
descendants() {
    ps -eo pid=,ppid= | awk -v root="$1" '
        { parent[$1] = $2 }
        END {
            inset[root] = 1; changed = 1
            while (changed) {
                changed = 0
                for (p in parent) if (!(p in inset) && (parent[p] in inset)) { inset[p] = 1; changed = 1 }
            }
            for (p in inset) if (p != root) print p
        }'
}

# Which of the given PIDs, or members of process group $1, are still alive. Zombies do not
# count: an exited process waits for its reaper, which in a container's PID 1 can be slow.
still_alive() { # $1 = process group id (-1 for none), rest = PIDs
    local pgid="$1"; shift
    ps -eo pid=,pgid=,stat= | awk -v g="$pgid" -v list=" $* " \
        '$3 !~ /^Z/ && ($2 == g || index(list, " " $1 " ")) { print $1 }'
}

# Stop a component started by spawn(): SIGTERM its process group and process tree, wait up to
# 30 s for all of it to exit, then SIGKILL what is left. Removes the PID file.
stop_group() { # $1 = component, $2 = word expected in its command line
    local comp="$1" word="$2" f pid pgid i left tree
    f="$(pid_file "$comp")"
    if ! proc_alive "$comp" "$word"; then
        rm -f "$f"
        log "$comp: not running"
        return 0
    fi
    pid="$(cat "$f")"
    pgid="$(ps -o pgid= -p "$pid" | tr -d ' ')"
    # Signal the group only if the process really leads its own (it does when started by spawn);
    # otherwise we could hit an unrelated group, e.g. the shell that ran us.
    [[ "$pgid" == "$pid" ]] || pgid=-1
    mapfile -t tree < <(descendants "$pid")
    tree=("$pid" "${tree[@]}")
    log "$comp: stopping (pid $pid, ${#tree[@]} processes)"
    if [[ "$pgid" != -1 ]]; then kill -TERM -- "-$pgid" 2>/dev/null || true; fi
    kill -TERM "${tree[@]}" 2>/dev/null || true
    for ((i = 0; i < 30 * 5; i++)); do
        left="$(still_alive "$pgid" "${tree[@]}")"
        [[ -n "$left" ]] || break
        sleep 0.2
    done
    if [[ -n "$left" ]]; then
        log "$comp: still alive after 30 s, sending SIGKILL to: ${left//$'\n'/ }"
        # shellcheck disable=SC2086  # word splitting of the PID list is intended
        kill -KILL $left 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$f"
}

# Poll a check function until it succeeds, the process dies, or TIMEOUT seconds pass.
wait_for() { # $1 = component, $2 = word in cmdline ("" = no liveness check), rest = check command
    local comp="$1" word="$2"; shift 2
    local deadline=$((SECONDS + TIMEOUT))
    while ((SECONDS < deadline)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if [[ -n "$word" ]] && ! proc_alive "$comp" "$word"; then
            log "$comp: process exited during startup"
            return 1
        fi
        sleep 0.5
    done
    log "$comp: not healthy after ${TIMEOUT} s"
    return 1
}

# Show the end of a component's log, starting no earlier than its latest "===== ... starting"
# marker so output from earlier runs does not muddy the picture, then exit non-zero.
fail_with_log() { # $1 = component, $2 = log file
    log "$1 failed to start; last lines of $2:"
    { tac "$2" | sed '/^===== .* starting /q' | tac | tail -n 40; } >&2 2>/dev/null || true
    exit 1
}

# Append the same marker spawn() writes, for logs we do not own the writing of (postgres).
log_marker() { printf '\n===== %s starting %s =====\n' "$(date -Is)" "$1" >>"$2"; }
