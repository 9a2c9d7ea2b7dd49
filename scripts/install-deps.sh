#!/usr/bin/env bash
# Installs what the build needs on a fresh Debian machine: libclang for
# librocksdb-sys's bindgen, and cargo-nextest for `make test`. Quiet and quick
# when everything is already there.
set -euo pipefail
missing=()
# Not `grep -q`: it exits at the first match, ldconfig dies of SIGPIPE, and under pipefail
# the pipeline then fails, which read as "missing" and ran apt-get again on a machine that had it.
if ! ldconfig -p | grep 'libclang\(-[0-9.]*\)\?\.so' >/dev/null; then missing+=(libclang-dev); fi
if ! command -v g++ >/dev/null; then missing+=(g++); fi
# dig, for the DNS test that runs the built server (registry-server/tests/dns.rs).
if ! command -v dig >/dev/null; then missing+=(dnsutils); fi
# curl, for the HTTPS test that runs the built server (registry-server/tests/tls_binary.rs).
if ! command -v curl >/dev/null; then missing+=(curl); fi
# Chromium and its WebDriver, for the web UI's browser test (registry-server/tests/ui.rs).
if [[ ! -x /usr/bin/chromium ]]; then missing+=(chromium); fi
if [[ ! -x /usr/bin/chromedriver ]]; then missing+=(chromium-driver); fi
if ((${#missing[@]})); then
  echo "installing ${missing[*]} with apt-get..." >&2
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest..." >&2
  cargo install --locked cargo-nextest >&2
fi
