# shellcheck shell=bash
# Helpers for scripts/interop-matrix: build, cache, mount and unmount Debian chroots that carry
# a newer Erlang/OTP + Elixir. Sourced, not executed.
#
# Roots live OUTSIDE the repo under $KVNODE_OTP_CACHE (default /var/cache/kvnode-otp/<suite>).
# A root is good only when it has the marker file $ROOT/.kvnode-otp-root-ok, written as the
# last step of a successful build; builds go into a temp dir next to it and are renamed into
# place, so an interrupted build is never mistaken for a good root.

: "${KVNODE_OTP_CACHE:=/var/cache/kvnode-otp}"
OTP_ROOT_MARKER=.kvnode-otp-root-ok
OTP_ROOT_PACKAGES=erlang-nox,elixir

log() { printf '%s\n' "$*" >&2; }
die() { printf 'interop-matrix: ERROR: %s\n' "$*" >&2; exit 1; }

# The Debian mirror: $KVNODE_OTP_MIRROR, else the one the host uses (first deb.debian.org-style "debian" URI in its apt sources),
# falling back to Debian's default.
otp_root_mirror() {
    local m
    if [ -n "${KVNODE_OTP_MIRROR:-}" ]; then
        printf '%s\n' "$KVNODE_OTP_MIRROR"
        return
    fi
    m=$(
        cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
            2>/dev/null |
            grep -v '^[[:space:]]*#' |
            grep -oE '(https?|ftp)://[^[:space:]]+/debian/?([[:space:]]|$)' |
            head -n1 | tr -d '[:space:]'
    )
    printf '%s\n' "${m:-http://deb.debian.org/debian}"
}

# True when anything is mounted at or below $1.
otp_root_has_mounts() {
    local dir
    dir=$(readlink -f -- "$1" 2>/dev/null) || return 1
    [ -n "$dir" ] || return 1
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { found = 1 } END { exit !found }' /proc/self/mounts
}

# rm -rf a root directory, refusing loudly while anything (notably /dev or /proc) is mounted
# inside it.
otp_root_remove() {
    local dir=$1
    [ -e "$dir" ] || return 0
    case "$(readlink -f -- "$dir")" in
    "$KVNODE_OTP_CACHE"/?*) ;;
    *) die "refusing to delete $dir: not under $KVNODE_OTP_CACHE" ;;
    esac
    if otp_root_has_mounts "$dir"; then
        local d
        d=$(readlink -f -- "$dir")
        awk -v d="$d" '$2 == d || index($2, d "/") == 1 { print "   mounted: " $2 }' /proc/self/mounts >&2
        die "refusing to delete $dir: something is still mounted inside it (see above); unmount it first"
    fi
    rm -rf --one-file-system -- "$dir"
}

# Makes sure a good root for Debian suite $1 exists; prints its path. Builds it when missing or
# incomplete. Fails loudly (exit) when it cannot be built.
otp_root_ensure() {
    local suite=$1 root tmp mirror
    root=$KVNODE_OTP_CACHE/$suite
    if [ -f "$root/$OTP_ROOT_MARKER" ]; then
        printf '%s\n' "$root"
        return 0
    fi
    mkdir -p "$KVNODE_OTP_CACHE"
    # A lock so two matrix runs don't build the same root at once.
    exec {lockfd}>"$KVNODE_OTP_CACHE/.$suite.lock"
    flock "$lockfd"
    if [ -f "$root/$OTP_ROOT_MARKER" ]; then
        exec {lockfd}>&-
        printf '%s\n' "$root"
        return 0
    fi
    if [ -e "$root" ]; then
        log "   $root exists but has no $OTP_ROOT_MARKER (incomplete build): removing it"
        otp_root_remove "$root"
    fi
    # Leftovers of interrupted builds.
    local old
    for old in "$KVNODE_OTP_CACHE/.$suite.build."*; do
        [ -e "$old" ] && otp_root_remove "$old"
    done
    mirror=$(otp_root_mirror)
    tmp=$KVNODE_OTP_CACHE/.$suite.build.$$
    mkdir -p "$tmp"
    log "   debootstrap --variant=minbase --include=$OTP_ROOT_PACKAGES $suite $tmp $mirror"
    local logf=$KVNODE_OTP_CACHE/$suite.debootstrap.log
    if ! debootstrap --variant=minbase --include="$OTP_ROOT_PACKAGES" "$suite" "$tmp" "$mirror" \
        >"$logf" 2>&1; then
        tail -n 30 "$logf" >&2
        otp_root_remove "$tmp"
        exec {lockfd}>&-
        die "debootstrap of $suite failed (full log: $logf)"
    fi
    if [ ! -x "$tmp/usr/bin/elixir" ] || [ ! -x "$tmp/usr/bin/erl" ]; then
        otp_root_remove "$tmp"
        exec {lockfd}>&-
        die "debootstrap of $suite finished but the root has no erl/elixir (log: $logf)"
    fi
    # Only metadata we need later; nothing is mounted in $tmp at this point.
    printf 'suite=%s\nmirror=%s\nbuilt=%s\n' "$suite" "$mirror" "$(date -u +%FT%TZ)" \
        >"$tmp/$OTP_ROOT_MARKER.tmp"
    mv "$tmp" "$root"
    mv "$root/$OTP_ROOT_MARKER.tmp" "$root/$OTP_ROOT_MARKER"
    sync -f "$root/$OTP_ROOT_MARKER" 2>/dev/null || true
    exec {lockfd}>&-
    printf '%s\n' "$root"
}

# Mounts proc and /dev into a root (idempotent). Pair with otp_root_unmount (via a trap).
otp_root_mount() {
    local root=$1
    mountpoint -q "$root/proc" || mount -t proc proc "$root/proc" || die "mount proc in $root"
    mountpoint -q "$root/dev" || mount --bind /dev "$root/dev" || die "bind /dev in $root"
}

# Unmounts what otp_root_mount mounted. Never dies (used from traps); reports what it couldn't.
otp_root_unmount() {
    local root=$1 m ok=0
    for m in "$root/dev" "$root/proc"; do
        if mountpoint -q "$m"; then
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || {
                log "interop-matrix: WARNING: could not unmount $m"
                ok=1
            }
        fi
    done
    return $ok
}
