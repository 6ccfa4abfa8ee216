# shellcheck shell=bash
# Running cargo-fuzz targets for a set time, shared by graft/fuzz/run.sh,
# npk/fuzz/run.sh, virtiofs/fuzz/run.sh, remote/fuzz/run.sh,
# system/fuzz/run.sh, cli/fuzz/run.sh and store/fuzz/run.sh (sourced; run
# from the fuzz crate's directory).

# fuzz_targets SECONDS TARGET...: builds the targets, runs each for SECONDS
# on corpus/TARGET (crashes in artifacts/TARGET/) and prints, per target,
# the executions run, the coverage reached and the crash artifacts found.
fuzz_targets() {
    local seconds=$1 t log status runs cov crashes
    shift
    local -a summary=()
    cargo fuzz build --sanitizer none -O
    for t in "$@"; do
        mkdir -p "corpus/$t" "artifacts/$t"
        log=$(mktemp)
        set +e
        cargo fuzz run --sanitizer none -O "$t" "corpus/$t" -- \
            -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=20 \
            -artifact_prefix="artifacts/$t/" >"$log" 2>&1
        status=$?
        set -e
        runs=$(grep -o 'Done [0-9]* runs' "$log" | grep -o '[0-9]*' | tail -n1 || true)
        [[ -n $runs ]] || runs=$(grep -o '^#[0-9]*' "$log" | tr -d '#' | tail -n1 || true)
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1 || true)
        crashes=$(find "artifacts/$t" -type f | wc -l)
        summary+=("$t: ${runs:-?} executions in ${seconds} s (${cov:-cov: ?}), exit $status, ${crashes} crash/timeout artifacts")
        if [[ $status -ne 0 ]]; then tail -n 40 "$log"; fi
        rm -f "$log"
    done
    printf '%s\n' "${summary[@]}"
}
