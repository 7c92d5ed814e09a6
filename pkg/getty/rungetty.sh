#!/bin/sh
# A getty on every console of the kernel command line whose device exists (others are skipped,
# as LinuxKit's getty does). INSECURE=true logs root in without a password; otherwise
# /etc/getty.shadow (bound or added by `files:`) becomes /etc/shadow for login.
if [ -f /etc/getty.shadow ]; then
	cp /etc/getty.shadow /etc/shadow && chmod 0600 /etc/shadow
fi
respawn() {
	while true; do "$@"; sleep 1; done
}
seen=" "
for opt in $(cat /proc/cmdline); do
	case "$opt" in
	console=*) ;;
	*) continue ;;
	esac
	tty=${opt#console=}
	tty=${tty%%,*}
	case "$seen" in *" $tty "*) continue ;; esac
	seen="$seen$tty "
	if [ ! -c "/dev/$tty" ]; then
		echo "getty: console $tty has no /dev/$tty: skipped"
		continue
	fi
	echo "getty: starting on $tty"
	if [ "$INSECURE" = true ]; then
		respawn getty -n -l /bin/sh -L 115200 "$tty" vt100 &
	else
		respawn getty -L 115200 "$tty" vt100 &
	fi
done
wait
