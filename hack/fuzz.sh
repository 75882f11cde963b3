#!/usr/bin/env bash
# Fuzz every decoder that sees outside input: providerSpec JSON, Secret maps,
# ProviderID strings, Metal API response bodies, CLI YAML.
#   hack/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: $FUZZ_SECONDS or 120, all targets
# Needs cargo-fuzz (`cargo install cargo-fuzz`, installed here if missing) and libFuzzer's
# C++ build (a C++ compiler). On the stable toolchain RUSTC_BOOTSTRAP=1 lets cargo-fuzz use
# the sanitizer flags. The committed seeds in fuzz/corpus/<target> are read-only inputs; new
# corpus entries go to fuzz/work/<target>, crashes to fuzz/artifacts/<target> (both ignored
# by git). An input that panics, runs over 10 s (a hang) or over 2 GiB fails the run.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-${FUZZ_SECONDS:-120}}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=(provider_spec secrets provider_id metal_response manifest)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  mkdir -p "work/$t" "artifacts/$t"
  printf '\n==> fuzz %s for %s s\n' "$t" "$seconds"
  cargo fuzz run "$t" "work/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1
done
echo "fuzz: ${#targets[@]} targets, ${seconds} s each, no crash"
