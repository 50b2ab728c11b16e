#!/usr/bin/env bash
# System packages the local stack needs: Java 17+ (Kafka), Maven (fetches Kafka's jars once) and
# PostgreSQL's server binaries (tests run the DB code against a real PostgreSQL too), and Debian's
# Chromium (the dashboard's browser test drives it headless; no browser is downloaded by a tool).
# Installs them with apt-get when missing and we are root; otherwise says what to install.
set -euo pipefail

missing=()
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
# PostgreSQL server binaries: the integration tests check that a PostgreSQL URL works unchanged.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${missing[*]} with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "error: missing ${missing[*]}" >&2
  echo "hint: install them with your package manager (e.g. sudo apt-get install ${missing[*]})" >&2
  exit 1
fi
