#!/usr/bin/env bash
# Starts or stops a local Bazel HTTP cache (Debian's nginx with WebDAV PUT) on 127.0.0.1.
#
#   tools/remote_cache/cache.sh start [--port 9092] [--store DIR] [--run DIR]
#   tools/remote_cache/cache.sh stop  [--run DIR]
#   tools/remote_cache/cache.sh status [--run DIR]
#
# --store holds the cached blobs (default ~/.cache/m8b-remote-cache/store); --run holds the PID
# file, the logs and nginx's temporary files (default ~/.cache/m8b-remote-cache/run).
# Then build with: ./bazelw build --config=remote --remote_cache=http://127.0.0.1:<port> ...
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
command=${1:-}
shift || true
port=9092
base=${XDG_CACHE_HOME:-$HOME/.cache}/m8b-remote-cache
store=$base/store
run=$base/run
while [[ $# -gt 0 ]]; do
  case $1 in
    --port) port=$2; shift 2 ;;
    --store) store=$2; shift 2 ;;
    --run) run=$2; shift 2 ;;
    *) echo "cache.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

nginx_bin() {
  if command -v nginx >/dev/null 2>&1; then command -v nginx; return; fi
  if [[ -x /usr/sbin/nginx ]]; then echo /usr/sbin/nginx; return; fi
  if [[ $(uname -s) == Darwin ]]; then
    echo "cache.sh: nginx is missing; on macOS: brew install nginx" >&2
  else
    echo "cache.sh: nginx is missing; on Debian/Ubuntu: sudo apt-get install nginx-light" >&2
  fi
  exit 2
}

case $command in
  start)
    if [[ ! $port =~ ^[0-9]+$ ]]; then echo "cache.sh: --port must be a number, got $port" >&2; exit 2; fi
    mkdir -p "$store" "$run"
    store=$(cd "$store" && pwd); run=$(cd "$run" && pwd)
    sed -e "s|@USER@|$(id -un)|g" -e "s|@GROUP@|$(id -gn)|g" -e "s|@PORT@|$port|g" -e "s|@STORE@|$store|g" -e "s|@RUN@|$run|g" \
      "$here/nginx.conf.in" >"$run/nginx.conf"
    if [[ -s $run/nginx.pid ]] && kill -0 "$(cat "$run/nginx.pid")" 2>/dev/null; then
      echo "cache.sh: already running (pid $(cat "$run/nginx.pid"))"; exit 0
    fi
    "$(nginx_bin)" -c "$run/nginx.conf" -e "$run/error.log"
    for _ in $(seq 50); do
      if curl -sf -o /dev/null "http://127.0.0.1:$port/" || curl -s -o /dev/null -w '%{http_code}' \
        "http://127.0.0.1:$port/ac/none" | grep -q 404; then
        echo "cache.sh: serving http://127.0.0.1:$port from $store (pid $(cat "$run/nginx.pid"))"
        exit 0
      fi
      sleep 0.1
    done
    echo "cache.sh: nginx did not answer on port $port; see $run/error.log" >&2
    exit 1
    ;;
  stop)
    if [[ -s $run/nginx.pid ]]; then
      pid=$(cat "$run/nginx.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$run/nginx.pid"
      echo "cache.sh: stopped"
    else
      echo "cache.sh: not running"
    fi
    ;;
  status)
    if [[ -s $run/nginx.pid ]] && kill -0 "$(cat "$run/nginx.pid")" 2>/dev/null; then
      echo "cache.sh: running (pid $(cat "$run/nginx.pid"))"
    else
      echo "cache.sh: not running"; exit 1
    fi
    ;;
  *)
    echo "usage: cache.sh start|stop|status [--port N] [--store DIR] [--run DIR]" >&2
    exit 2
    ;;
esac
