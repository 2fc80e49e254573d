# scripts/common.sh — settings and helpers shared by the stack scripts.
# Sourced by scripts/stack and scripts/install-*; not meant to be run.
# Every path can be overridden from the environment.
# shellcheck shell=bash disable=SC2034

REBUILDER_STATE=${REBUILDER_STATE:-/var/lib/rebuilder}      # servers' data, logs, pid files
REBUILDER_CACHE=${REBUILDER_CACHE:-$HOME/.cache/rebuilder}  # downloads and the Python venv
REBUILDER_USER=${REBUILDER_USER:-rebuilder}                 # unprivileged user for OpenSearch

OPENSEARCH_VERSION=2.19.6
OPENSEARCH_HOME=$REBUILDER_STATE/opensearch-$OPENSEARCH_VERSION
SECANTUS_VERSION=0.7.0b3
VENV=$REBUILDER_CACHE/venv
TOXIPROXY_VERSION=2.12.0
TOXIPROXY_BIN=$REBUILDER_CACHE/bin/toxiproxy-server-$TOXIPROXY_VERSION
SCHEMATHESIS_VERSION=4.32.5
CARGO_AUDIT_VERSION=0.22.2
CARGO_DENY_VERSION=0.20.2
CARGO_TOOLS=$REBUILDER_CACHE/cargo-tools
SCHEMATHESIS_VENV=$REBUILDER_CACHE/venv-schemathesis

COMPONENT=${COMPONENT:-stack}

say() { printf '[%s] %s\n' "$COMPONENT" "$*"; }
die() { printf '[%s] ERROR: %s\n' "$COMPONENT" "$*" >&2; exit 1; }

# apt_install PKG...: install Debian packages (apt-get update once per call).
apt_install() {
    say "apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# java_home: the JDK/JRE directory of the `java` on PATH.
java_home() { dirname "$(dirname "$(readlink -f "$(command -v java)")")"; }
