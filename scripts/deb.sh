#!/usr/bin/env bash
# Builds the Debian package for a board: the release binary in /usr/bin, the hardened unit
# (systemd/shequ-chat.service), configs/debian.json as the conffile
# /etc/shequ-chat/shequ-chat.json, README, and the maintainer scripts in scripts/deb/ (the JWT
# secret generated at first install, the service enabled and started, purge removing what
# install created). With `--features redis` the package has Redis support and its version says
# so (`0.1.0+redis`). Prints the package's path.
#
# Usage: scripts/deb.sh amd64|arm64|armhf [--features redis]
#        (aarch64 and armv7 are accepted for arm64 and armhf)
# Needs dpkg-deb and readelf (Debian's dpkg and binutils); cross builds as scripts/cross.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/boards.sh
board "${1:?usage: scripts/deb.sh amd64|arm64|armhf [--features redis]}"
shift
bin=$(scripts/cross.sh "$deb_arch" "$@" | tail -1)

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
[[ " $* " == *" redis "* ]] && version+="+redis"
# The newest glibc symbol version the binary needs is the oldest glibc it runs on.
glibc=$(readelf --dyn-syms -W "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | cut -d_ -f2 | sort -V |
  tail -1)

root=target/deb/$deb_arch/root
rm -rf "$root"
install -D -m 755 "$bin" "$root/usr/bin/shequ-chat"
install -d -m 755 "$root/lib/systemd/system" "$root/etc/shequ-chat"
sed 's#/usr/local/bin/#/usr/bin/#g' systemd/shequ-chat.service \
  > "$root/lib/systemd/system/shequ-chat.service"
install -m 644 configs/debian.json "$root/etc/shequ-chat/shequ-chat.json"
install -D -m 644 README.md "$root/usr/share/doc/shequ-chat/README.md"
install -d -m 755 "$root/DEBIAN"
install -m 755 scripts/deb/postinst scripts/deb/prerm scripts/deb/postrm "$root/DEBIAN/"
echo /etc/shequ-chat/shequ-chat.json > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/control" <<CONTROL
Package: shequ-chat
Version: $version
Architecture: $deb_arch
Maintainer: shequ-chat maintainers <maintainers@shequ-chat.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: libc6 (>= $glibc), init-system-helpers
Section: net
Priority: optional
Description: WebSocket chat server for self-hosted community sites
 One thread, a few KiB per connection: a chat room for a forum or a community
 site, authenticated by the JWTs the site's backend issues, with history and
 recovery on reconnect. Runs as a hardened systemd service.
CONTROL
deb=target/deb/shequ-chat_${version}_${deb_arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
