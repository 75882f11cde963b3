#!/usr/bin/env bash
# Run README.md's command blocks exactly as printed, so the README cannot drift from what
# works. A block is marked by an HTML comment on the line before its ```sh fence:
#
#   <!-- ci: NAME (free text) -->
#   ```sh
#   ...
#   ```
#
#   hack/readme-blocks.sh list          the marked blocks' names
#   hack/readme-blocks.sh print NAME    the block's text, as a user would copy it
#   hack/readme-blocks.sh run NAME...   run each block from the repository root, as one bash
#                                       script (errexit, pipefail), in its own process group
#
# `run` bounds each block (README_BLOCK_TIMEOUT seconds, default 900), and afterwards stops
# whatever the block left running in its process group (e.g. `make start &` when a later line
# failed) and, if the block started the e2e environment, brings that down too.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
README="$ROOT/README.md"

log() { echo "readme-blocks: $*" >&2; }
die() { echo "readme-blocks: FAILED: $*" >&2; exit 1; }

# The text of block NAME (empty if there is none).
extract() {
  awk -v name="$1" '
    !inside && $0 ~ "^<!-- ci: " name "( |-->)" { armed = 1; next }
    armed && /^```/ { inside = 1; armed = 0; next }
    armed && !/^[[:space:]]*$/ { armed = 0 }
    inside && /^```[[:space:]]*$/ { exit }
    inside { print }
  ' "$README"
}

case "${1:-}" in
  list)
    sed -nE 's/^<!-- ci: ([A-Za-z0-9_-]+).*/\1/p' "$README"
    ;;
  print)
    [[ -n "${2:-}" ]] || die "usage: $0 print NAME"
    text="$(extract "$2")"
    [[ -n "$text" ]] || die "no block marked '<!-- ci: $2' in README.md"
    printf '%s\n' "$text"
    ;;
  run)
    shift
    [[ $# -gt 0 ]] || die "usage: $0 run NAME..."
    for name in "$@"; do
      text="$(extract "$name")"
      [[ -n "$text" ]] || die "no block marked '<!-- ci: $name' in README.md"
      log "---- $name ----"
      sed 's/^/    /' <<<"$text" >&2
      rc=0
      cd "$ROOT"
      pgid_file="$(mktemp)"
      # setsid: the block and everything it starts share a new process group (the bash's
      # pid), so what it leaves running can be stopped afterwards.
      timeout --foreground --kill-after=10 "${README_BLOCK_TIMEOUT:-900}" \
        setsid bash -c 'echo $$ >"$2"; set -eo pipefail; eval "$1"' readme-block "$text" "$pgid_file" \
        || rc=$?
      pgid="$(cat "$pgid_file" 2>/dev/null || true)"
      rm -f "$pgid_file"
      if [[ -n "$pgid" ]]; then kill -TERM -- "-$pgid" 2>/dev/null || true; fi
      if [[ "$text" == *"e2e-up"* ]] && "$ROOT/hack/e2e-env.sh" status >/dev/null 2>&1; then
        log "$name left the e2e environment up; bringing it down"
        "$ROOT/hack/e2e-env.sh" down >/dev/null 2>&1 || true
      fi
      [[ $rc == 0 ]] || die "README block '$name' exited $rc"
      log "ok: $name"
    done
    ;;
  *)
    die "usage: $0 list | print NAME | run NAME..."
    ;;
esac
