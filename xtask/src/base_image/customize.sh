#!/bin/sh
# Written by `cargo xtask base-image`; runs once per cached root filesystem.
set -eu
R="$1"
export DEBIAN_FRONTEND=noninteractive
mkdir -p "$R/etc/initramfs-tools/conf.d" "$R/boot/firmware"
cat > "$R/etc/initramfs-tools/conf.d/iot-base.conf" <<'EOF'
MODULES=list
COMPRESS=gzip
EOF
cat > "$R/etc/initramfs-tools/modules" <<'EOF'
@MODULES@
EOF
cat > "$R/etc/default/raspi-firmware" <<'EOF'
ROOTPART=LABEL=@ROOT_LABEL@
CONSOLES="serial0,115200 tty1"
EOF
chroot "$R" apt-get install -y --no-install-recommends @APT_OPTS@@LATE_PACKAGES@
cat > "$R/etc/fstab" <<'EOF'
LABEL=@ROOT_LABEL@  /              ext4  defaults,noatime  0 1
LABEL=@BOOT_LABEL@  /boot/firmware vfat  defaults,nofail,noatime,umask=0077  0 2
EOF
mkdir -p "$R/etc/systemd/network"
cat > "$R/etc/systemd/network/20-wired.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF
echo iot-board > "$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tiot-board\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$R/etc/hosts"
chroot "$R" systemctl enable systemd-networkd.service podman.socket
# The agent alone starts and updates containers (from its cache at boot):
# no Podman auto-update (registry polling) and no podman-restart racing it.
chroot "$R" systemctl disable podman-auto-update.timer podman-auto-update.service \
    podman-restart.service
# The agent waits for network-online; a board without a cable must still boot.
mkdir -p "$R/etc/systemd/system/systemd-networkd-wait-online.service.d"
cat > "$R/etc/systemd/system/systemd-networkd-wait-online.service.d/timeout.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30
EOF
# Each board gets its own machine id at first boot.
: > "$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
# dpkg on the board syncs its writes again (see the setup hook).
rm -f "$R@UNSAFE_IO_CONF@"
