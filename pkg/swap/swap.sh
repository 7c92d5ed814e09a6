#!/bin/sh
# Makes a swap file of SIZE at PATH (below /var) unless one of that size is there, and enables
# it. Options as LinuxKit's swap package:
#   --path PATH             the swap file, under /var (required)
#   --size SIZE             bytes, or with a K, M or G suffix (required)
#   --condition part:DIR[:true]
#                           go on only if DIR is a mount point (else exit 0, or 1 with `true`)
#   --condition partsize:DIR:MIN[:true]
#                           go on only if the filesystem of DIR has at least MIN bytes (suffixes
#                           as --size)
#   --debug                 trace the commands
#   --encrypt               refused: this package has no cryptsetup
set -e

fail() {
	echo "swap: $*" >&2
	exit 1
}

# bytes SIZE: SIZE in bytes.
bytes() {
	case "$1" in
		*[!0-9KMG]* | "" | [KMG]*) fail "bad size '$1' (a number, optionally followed by K, M or G)" ;;
		*G) echo $(( ${1%G} * 1073741824 )) ;;
		*M) echo $(( ${1%M} * 1048576 )) ;;
		*K) echo $(( ${1%K} * 1024 )) ;;
		*) echo "$1" ;;
	esac
}

path=
size=
conditions=
while [ $# -gt 0 ]; do
	case "$1" in
		--debug) set -x ;;
		--path) [ $# -ge 2 ] || fail "--path needs a value"; path=$2; shift ;;
		--size) [ $# -ge 2 ] || fail "--size needs a value"; size=$2; shift ;;
		--condition) [ $# -ge 2 ] || fail "--condition needs a value"; conditions="$conditions $2"; shift ;;
		--encrypt) fail "--encrypt is not supported (this package has no cryptsetup)" ;;
		*) fail "unknown option '$1'" ;;
	esac
	shift
done

[ -n "$path" ] || fail "--path PATH is required"
case "$path" in
	/var/?*) ;;
	*) fail "--path must be a file under /var (got '$path')" ;;
esac
[ -n "$size" ] || fail "--size SIZE is required"
want=$(bytes "$size")
[ "$want" -gt 0 ] || fail "--size must be more than 0"

# A condition not met ends the container: with success, unless it is marked required.
unmet() {
	echo "swap: condition '$1' not met${2:+ (required)}" >&2
	[ "$2" = true ] && exit 1
	exit 0
}
for cond in $conditions; do
	IFS=: read -r kind a b c <<EOF2
$cond
EOF2
	case "$kind" in
		part)
			awk -v d="$a" '$2 == d { found = 1 } END { exit !found }' /proc/mounts || unmet "$cond" "$b"
			;;
		partsize)
			have=$(( $(df -k "$a" | awk 'NR == 2 { print $2 }') * 1024 ))
			[ "$have" -ge "$(bytes "$b")" ] || unmet "$cond" "$c"
			;;
		*) fail "unknown condition '$cond' (part:DIR[:true] or partsize:DIR:MIN[:true])" ;;
	esac
done

if [ ! -f "$path" ] || [ "$(stat -c %s "$path")" != "$want" ]; then
	mkdir -p "$(dirname "$path")"
	rm -f "$path"
	if [ $(( want % 1048576 )) -eq 0 ]; then
		dd if=/dev/zero of="$path" bs=1048576 count=$(( want / 1048576 )) 2>/dev/null
	else
		dd if=/dev/zero of="$path" bs=1024 count=$(( want / 1024 )) 2>/dev/null
	fi
	chmod 0600 "$path"
	mkswap "$path"
fi
swapon "$path"
echo "swap: $path ($size) enabled"
