#!/usr/bin/env bash
# The provider logic must stay transport-free (design §2): no tonic, kube, reqwest or axum
# under src/provider/. Fails listing the offending lines.
set -euo pipefail
cd "$(dirname "$0")/.."
if grep -rnE '\b(tonic|kube|reqwest|axum|hyper)::' src/provider/; then
  echo "check-layering: src/provider/ must not use transport crates (see design §2)" >&2
  exit 1
fi
echo "check-layering: ok"
