# The boards shequ-chat is built for, sourced by scripts/cross.sh, scripts/deb.sh and
# .ci/emulated. `board ARCH` sets, for amd64, aarch64 (arm64), aarch64-musl (static) or armv7
# (armhf):
#   triple    the Rust target
#   deb_arch  the Debian architecture
#   qemu      the command that runs one of its programs here (empty for amd64); the same as the
#             runner in .cargo/config.toml
# `need_board` then installs what building for it needs when it is missing: the Rust target, and
# Debian's cross linker, C library and qemu-user.

board() {
  case "$1" in
    amd64 | x86_64)
      triple=x86_64-unknown-linux-gnu deb_arch=amd64 qemu= packages=() ;;
    aarch64 | arm64)
      triple=aarch64-unknown-linux-gnu deb_arch=arm64 qemu="qemu-aarch64 -L /usr/aarch64-linux-gnu"
      packages=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user) ;;
    aarch64-musl)
      # Static: runs on any 64-bit ARM Linux, whatever its C library.
      triple=aarch64-unknown-linux-musl deb_arch=arm64 qemu=qemu-aarch64
      packages=(gcc-aarch64-linux-gnu qemu-user) ;;
    armv7 | armhf)
      triple=armv7-unknown-linux-gnueabihf deb_arch=armhf qemu="qemu-arm -L /usr/arm-linux-gnueabihf"
      packages=(gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user) ;;
    *)
      echo "unknown board architecture '$1': amd64, aarch64, aarch64-musl or armv7" >&2
      return 1 ;;
  esac
}

# Whether this machine builds for the board itself (no --target, no cross tools).
native_board() {
  [ "$(rustc -vV | sed -n 's/^host: //p')" = "$triple" ]
}

need_board() {
  native_board && return 0
  if ! rustup target list --installed | grep -qx "$triple"; then
    rustup target add "$triple"
  fi
  local missing=() p
  for p in "${packages[@]}"; do
    dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}
