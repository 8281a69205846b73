#!/usr/bin/env bash
# Builds the server for a board, from this x86-64 machine: a release build, stripped (the
# release profile strips). Installs the Rust target and Debian's cross linker when missing.
# Prints the binary's path.
#
# Usage: scripts/cross.sh aarch64|aarch64-musl|armv7|amd64 [cargo build options, e.g. --features redis]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/boards.sh
board "${1:?usage: scripts/cross.sh aarch64|aarch64-musl|armv7|amd64 [cargo build options]}"
shift
if native_board; then
  cargo build --quiet --release --bin shequ-chat "$@"
  echo target/release/shequ-chat
else
  need_board
  cargo build --quiet --release --bin shequ-chat --target "$triple" "$@"
  echo "target/$triple/release/shequ-chat"
fi
