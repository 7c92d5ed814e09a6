#!/bin/sh
# pkg/sshd's entry point (LinuxKit's /usr/bin/ssh.sh): host keys, then `sshd -D -e`.
#
# The host keys are made once and kept where they outlive the boot: $SSH_HOST_KEYS if set, else
# the first filesystem of a block device mounted at or below /var (the state disk that LinuxKit's
# `mount` package mounts there, bound into this container with /var), else /run (a new key per
# boot). They are linked to the paths sshd_config names.
set -e

keys=$SSH_HOST_KEYS
if [ -z "$keys" ]; then
	disk=$(awk '{
		for (i = 6; i <= NF; i++) if ($i == "-") break
		if (($5 == "/var" || index($5, "/var/") == 1) && index($(i + 2), "/dev/") == 1) { print $5; exit }
	}' /proc/self/mountinfo)
	if [ -n "$disk" ]; then
		keys=$disk/ssh-host-keys
	else
		keys=/run/ssh-host-keys
	fi
fi
mkdir -p "$keys"
chmod 0700 "$keys"
for type in ed25519 ecdsa; do
	key=$keys/ssh_host_${type}_key
	if [ ! -s "$key" ]; then
		rm -f "$key" "$key.pub"
		ssh-keygen -q -t "$type" -N '' -C "" -f "$key"
		echo "sshd: made host key $key"
	fi
	ln -sf "$key" "/etc/ssh/ssh_host_${type}_key"
	ln -sf "$key.pub" "/etc/ssh/ssh_host_${type}_key.pub"
done

# The privilege separation directory Debian's sshd is built with (owned by root, not writable
# by others).
mkdir -p /run/sshd
chmod 0755 /run/sshd

exec /usr/sbin/sshd -D -e "$@"
