#!/usr/bin/env bash
# The servers a team shares, started on this machine: PostgreSQL, an MLflow
# server on it with proxied artifacts (clients never touch the artifact store),
# and a ChromaDB server; each on localhost, its data and log under one folder,
# health-checked, stopped by its own PID.
#
#   bash scripts/services.sh up|down|status
#
# Folder: $DYAG_SERVICES (default .services); ports: $PG_PORT (55432),
# $MLFLOW_PORT (5050), $CHROMA_PORT (8060). `up` prints the variables that
# point dyag at them. Installs Debian's postgresql (as root) and psycopg2 in
# .venv if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"  # runuser, where a user's PATH leaves the system's tools out
DIR=$(realpath -m "${DYAG_SERVICES:-.services}")
PG_PORT=${PG_PORT:-55432}
MLFLOW_PORT=${MLFLOW_PORT:-5050}
CHROMA_PORT=${CHROMA_PORT:-8060}
MLFLOW_URL="http://127.0.0.1:$MLFLOW_PORT"
CHROMA_URL="http://127.0.0.1:$CHROMA_PORT"

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
# PostgreSQL refuses to run as root: as root, its commands run as user postgres.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
alive() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
serve() {  # NAME HEALTH_URL PORT COMMAND...: start NAME unless it answers, and wait until it does
  local name=$1 url=$2 port=$3 started="" held=0; shift 3
  for _ in $(seq 120); do
    if alive "$name"; then
      curl -sf "$url" >/dev/null && return 0
    elif [ -n "$started" ]; then
      echo "Error: $name stopped; see $DIR/logs/$name.log" >&2; tail -5 "$DIR/logs/$name.log" >&2; exit 1
    elif port_taken "$port"; then  # a server of ours that was stopped holds its port until its workers exit
      held=$((held + 1))
      if [ "$held" -gt 30 ]; then
        echo "Error: port $port for $name is taken by another process; choose another with ${name^^}_PORT" >&2; exit 1
      fi
    else
      "$@" >"$DIR/logs/$name.log" 2>&1 &
      echo $! >"$DIR/$name.pid"
      started=1
    fi
    sleep 1
  done
  echo "Error: $name does not answer at $url; see $DIR/logs/$name.log" >&2
  exit 1
}

up() {
  bash scripts/setup.sh >/dev/null
  if [ -z "$(pg_bin)" ] && [ "$(id -u)" = 0 ]; then
    apt-get install -y -q postgresql >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q postgresql >/dev/null 2>&1; } || true
  fi
  if [ -z "$(pg_bin)" ]; then
    echo "Error: PostgreSQL is not installed and could not be installed here: sudo apt-get install postgresql" >&2
    exit 2
  fi
  .venv/bin/python -c "import psycopg2" 2>/dev/null || .venv/bin/pip install -q "psycopg2-binary==2.9.13"
  mkdir -p "$DIR/pg" "$DIR/artifacts" "$DIR/chroma" "$DIR/logs"
  [ "$(id -u)" = 0 ] && chown postgres "$DIR/pg" "$DIR/logs" && chmod 700 "$DIR/pg"
  local bin; bin=$(pg_bin)
  if ! as_pg "$bin/pg_ctl" -D "$DIR/pg" status >/dev/null 2>&1; then
    [ -f "$DIR/pg/PG_VERSION" ] || as_pg "$bin/initdb" -D "$DIR/pg" -U mlflow --auth=trust >/dev/null
    as_pg "$bin/pg_ctl" -D "$DIR/pg" -l "$DIR/logs/postgres.log" -w \
      -o "-p $PG_PORT -h 127.0.0.1 -k /tmp" start >/dev/null
  fi
  as_pg "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U mlflow -d postgres -tAc "select 1 from pg_database where datname = 'mlflow'" | grep -q 1 \
    || as_pg "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U mlflow mlflow
  serve mlflow "$MLFLOW_URL/health" "$MLFLOW_PORT" \
    .venv/bin/mlflow server --backend-store-uri "postgresql+psycopg2://mlflow@127.0.0.1:$PG_PORT/mlflow" \
    --artifacts-destination "$DIR/artifacts" --host 127.0.0.1 --port "$MLFLOW_PORT"
  serve chroma "$CHROMA_URL/api/v2/heartbeat" "$CHROMA_PORT" \
    .venv/bin/chroma run --path "$DIR/chroma" --host 127.0.0.1 --port "$CHROMA_PORT"
  echo "export MLFLOW_TRACKING_URI=$MLFLOW_URL   # index-rag: --chroma-host 127.0.0.1:$CHROMA_PORT"
}

down() {
  for name in mlflow chroma; do
    if alive "$name"; then
      kill "$(cat "$DIR/$name.pid")"
      for _ in $(seq 60); do alive "$name" || break; sleep 0.5; done  # its workers finish their requests
    fi
    rm -f "$DIR/$name.pid"
  done
  local bin; bin=$(pg_bin)
  if [ -n "$bin" ] && [ -f "$DIR/pg/PG_VERSION" ]; then
    as_pg "$bin/pg_ctl" -D "$DIR/pg" -w stop >/dev/null 2>&1 || true
  fi
  echo "stopped (data kept in $DIR)"
}

status() {
  local bin; bin=$(pg_bin)
  if [ -n "$bin" ] && as_pg "$bin/pg_ctl" -D "$DIR/pg" status >/dev/null 2>&1; then echo "postgres  running  127.0.0.1:$PG_PORT"; else echo "postgres  stopped"; fi
  for name in mlflow chroma; do
    url=$([ "$name" = mlflow ] && echo "$MLFLOW_URL/health" || echo "$CHROMA_URL/api/v2/heartbeat")
    if alive "$name" && curl -sf "$url" >/dev/null; then echo "$name    running  ${url%/*}"; else echo "$name    stopped"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: bash scripts/services.sh up|down|status" >&2; exit 2 ;;
esac
