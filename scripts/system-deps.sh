#!/usr/bin/env bash
# Installs the Debian packages leanstack runs for real (storage tiers, interference), only if missing.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v memcached    >/dev/null 2>&1 || need+=(memcached)
command -v stress-ng    >/dev/null 2>&1 || need+=(stress-ng)
command -v prometheus   >/dev/null 2>&1 || need+=(prometheus)  # scrapes the workers' /metrics
# ChipExpert: the EDA tools and the offline documentation its knowledge base is built from.
command -v yosys        >/dev/null 2>&1 || need+=(yosys)
command -v iverilog     >/dev/null 2>&1 || need+=(iverilog)
command -v verilator    >/dev/null 2>&1 || need+=(verilator)
command -v ngspice      >/dev/null 2>&1 || need+=(ngspice)
command -v unshare      >/dev/null 2>&1 || need+=(util-linux)  # boxes the checkers' simulators
command -v pdftotext    >/dev/null 2>&1 || need+=(poppler-utils)
command -v groff        >/dev/null 2>&1 || need+=(groff-base)
[ -e /usr/share/doc/ngspice-doc/html/manual.html ] || need+=(ngspice-doc)
[ -e /usr/share/doc/yosys/manual.pdf ]             || need+=(yosys-doc)
# Browser tests of the web pages (driven by playwright, never downloading a browser).
command -v chromium     >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "leanstack: missing Debian packages: ${need[*]} — run 'sudo apt-get install ${need[*]}' and retry" >&2
  exit 1
fi
echo "leanstack: installing Debian packages: ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian packages start system-wide daemons; leanstack runs its own instances, so stop those.
for svc in redis-server memcached prometheus prometheus-node-exporter; do
  if command -v systemctl >/dev/null 2>&1; then systemctl stop "$svc" >/dev/null 2>&1 || true; fi
  service "$svc" stop >/dev/null 2>&1 || true
done
