#!/usr/bin/env bash
# Regenerates cmi/*.pb.go (committed, so building the oracle needs only Go) from the
# project's own proto/cmi/v1/cmi.proto. Run it after changing that proto.
#
#   hack/mcm-oracle/gen.sh
#
# Needs protoc (Debian: apt-get install protobuf-compiler); the two Go plugins are built from
# the Go module proxy at the versions below into a temporary directory.
set -euo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$DIR/../.." && pwd)"
PROTOC_GEN_GO=google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.8
PROTOC_GEN_GO_GRPC=google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
PKG=metal-driver.local/hack/mcm-oracle/cmi

command -v protoc >/dev/null || { echo "gen.sh: protoc not found (apt-get install protobuf-compiler)" >&2; exit 1; }
bin="$(mktemp -d)"
trap 'rm -rf "$bin"' EXIT
GOBIN="$bin" GOWORK=off go install "$PROTOC_GEN_GO"
GOBIN="$bin" GOWORK=off go install "$PROTOC_GEN_GO_GRPC"
# The proto's go_package ("cmi") is not an import path; M maps the file to ours.
PATH="$bin:$PATH" protoc -I "$ROOT/proto/cmi/v1" \
  --go_out="$DIR/cmi" --go_opt=paths=source_relative --go_opt="Mcmi.proto=$PKG" \
  --go-grpc_out="$DIR/cmi" --go-grpc_opt=paths=source_relative --go-grpc_opt="Mcmi.proto=$PKG" \
  cmi.proto
echo "gen.sh: wrote $DIR/cmi/cmi.pb.go and cmi_grpc.pb.go from proto/cmi/v1/cmi.proto" >&2
