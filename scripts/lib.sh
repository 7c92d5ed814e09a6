# Shared helpers of scripts/test, scripts/demo and scripts/bench. Source it; do not run it.

# Repository root, whatever the caller's working directory.
SLIPWAY_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SLIPWAY_ROOT

log() { printf '\n== %s\n' "$*" >&2; }

# Installs the Debian packages listed in scripts/debian-packages.txt that are missing.
# Idempotent: does nothing (and needs no network) when everything is there.
install_debian_packages() {
    local wanted=() missing=() pkg name
    while read -r pkg; do
        pkg="${pkg%%#*}"; pkg="${pkg//[[:space:]]/}"
        [ -n "$pkg" ] && wanted+=("$pkg")
    done < "$SLIPWAY_ROOT/scripts/debian-packages.txt"
    for pkg in "${wanted[@]}"; do
        name="${pkg%%/*}"
        dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -mmin -1440 2>/dev/null | head -1)" ]; then
        $sudo apt-get update -qq
    fi
    # --allow-downgrades: a `name/bookworm` line may pin Debian 12's version over a backport.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends --allow-downgrades "${wanted[@]}" >/dev/null
}

# The Rust target of the programs inside images (static musl): rustup installs it once.
install_rust_targets() {
    rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl && return 0
    log "installing the Rust target x86_64-unknown-linux-musl (the in-image programs; about a minute)"
    rustup target add x86_64-unknown-linux-musl >&2
}

# The slipway binary, built once (release: the demo and benchmarks measure the real thing).
# SLIPWAY_BIN names another build to use instead.
slipway_bin() {
    if [ -n "${SLIPWAY_BIN:-}" ]; then
        echo "$SLIPWAY_BIN"
        return
    fi
    log "building slipway (release; the first build takes several minutes, later ones seconds)"
    (cd "$SLIPWAY_ROOT" && cargo build --release -q -p slipway) >&2
    echo "$SLIPWAY_ROOT/target/release/slipway"
}
