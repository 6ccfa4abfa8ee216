# shellcheck shell=bash
# Helpers shared by the benchmark scripts (sourced). Expects $here (the
# bench directory) and a script name in $bench_name for messages.

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '%s: %s\n' "${bench_name:-bench}" "$*" >&2; exit 1; }

us_now() { local t=$EPOCHREALTIME; printf '%s' "${t/./}"; }   # microseconds
fdiv() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print ""; else printf "%.6f", a / b }'; }
fmt() {   # fmt PRINTF-FMT NUMBER-OR-EMPTY
    if [[ -z $2 ]]; then printf 'n/a'; else awk -v f="$1" -v x="$2" 'BEGIN { printf f, x }'; fi
}
median() {   # median VALUES... (empty when none)
    [[ $# -gt 0 ]] || return 0
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.6f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
status_le() { [[ -z $1 ]] && { echo "n/a"; return; }; awk -v x="$1" -v t="$2" 'BEGIN { print (x <= t) ? "PASS" : "MISS" }'; }
status_ge() { [[ -z $1 ]] && { echo "n/a"; return; }; awk -v x="$1" -v t="$2" 'BEGIN { print (x >= t) ? "PASS" : "MISS" }'; }
jstr() { local s=$1; s=${s//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\t'/ }; s=${s//$'\n'/\\n}; printf '"%s"' "$s"; }
jnum() { if [[ -z ${1:-} ]]; then printf 'null'; else printf '%s' "$1"; fi; }

# smoke_corpus DIR LOGFILE: fetches hello, jq and libonig5 (the versions apt
# offers) with fetch-corpus.sh into DIR (DIR/corpus, DIR/corpus-all.list).
smoke_corpus() {
    local dir=$1 logfile=$2 lock p v
    mkdir -p "$dir"
    lock="$dir/packages.lock"
    : > "$lock"
    for p in hello jq libonig5; do
        v=$({ apt-cache policy "$p" 2>/dev/null || true; } | awk '/Candidate:/ { print $2 }')
        if [[ -z $v || $v == "(none)" ]]; then
            apt-get update -qq >&2 || true
            v=$({ apt-cache policy "$p" 2>/dev/null || true; } | awk '/Candidate:/ { print $2 }')
        fi
        [[ -n $v && $v != "(none)" ]] || die "apt-cache knows no version of $p"
        printf '%s=%s\n' "$p" "$v" >> "$lock"
    done
    NEXUS_BENCH_DIR="$dir" "${here:?}/fetch-corpus.sh" --lock "$lock" > "$logfile" 2>&1 ||
        { tail -20 "$logfile" >&2; die "fetching the smoke corpus failed"; }
    [[ ! -s $dir/skipped.txt ]] || { cat "$dir/skipped.txt" >&2; die "smoke packages could not be fetched"; }
}
