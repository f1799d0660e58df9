#!/bin/sh
# Make the base image deploy/Containerfile builds on, from Debian's own packages: no registry needed.
# debootstrap lays down a minimal Debian bookworm (variant minbase: essential and required packages,
# apt) from the Debian mirror, and `podman import` turns the directory into an image.
#
#   deploy/image/base.sh [IMAGE]     (default localhost/trainyard-base:bookworm; needs root)
#
# Where a registry is reachable, `podman build --build-arg BASE=docker.io/library/debian:bookworm-slim`
# skips this: the Containerfile needs only Debian bookworm with apt.
set -eu

IMAGE=${1:-localhost/trainyard-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

command -v debootstrap >/dev/null || {
	echo "debootstrap is missing: apt-get install debootstrap" >&2
	exit 1
}
root=$(mktemp -d /var/tmp/trainyard-base.XXXXXX)
trap 'rm -rf "$root"' EXIT

debootstrap --variant=minbase bookworm "$root" "$MIRROR"

# Updates and security updates, as the official image has them.
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main
SOURCES
# No recommended packages, and no package caches left in layers.
cat >"$root/etc/apt/apt.conf.d/90trainyard" <<'APT'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
APT
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/* \
	"$root"/usr/share/doc/*/changelog* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/tmp/*

tar --numeric-owner -C "$root" -c . | podman import \
	--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
	--change 'CMD ["/bin/bash"]' \
	--message "Debian bookworm minbase (debootstrap, $MIRROR)" \
	- "$IMAGE"
echo "$IMAGE"
