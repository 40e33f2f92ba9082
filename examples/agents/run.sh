#!/usr/bin/env bash
# The silo agents walkthrough: three agents on this machine (two hospitals and the aggregator),
# mutual TLS with a fresh federation CA, one horizontal job submitted through St Mary's agent.
#
#   examples/agents/run.sh            # uses `fedsilo` from PATH, or .venv/bin/fedsilo
#
# It (1) issues the certificates, (2) starts the three agents in the background, (3) waits until
# each answers its health check, (4) submits job.toml and prints the results, (5) shows St Mary's
# ledger and audit log, and stops the agents on exit (SIGTERM; a trap also kills them if this
# script fails). Everything it writes is under examples/agents/run/ (deleted at the start: a
# demo; a real operator keeps its ledger forever).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
if [ -n "${FEDSILO:-}" ]; then :; elif command -v fedsilo >/dev/null; then FEDSILO=fedsilo; else FEDSILO="$ROOT/.venv/bin/fedsilo"; fi
RUN="$HERE/run"
SILOS=(st_marys city_general aggregator)
PIDS=()

stop_agents() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap stop_agents EXIT

rm -rf "$RUN"
mkdir -p "$RUN"
[ -f "$HERE/st_marys.csv" ] || "$ROOT/.venv/bin/python" "$HERE/generate.py"

echo "== 1. certificates: one federation CA, one certificate + key per silo"
"$FEDSILO" certs init --federation hospitals --silos st_marys,city_general,aggregator --out "$RUN/pki"

echo "== 2. three silo agents (logs in $RUN/<silo>.log)"
for silo in "${SILOS[@]}"; do
  "$FEDSILO" silo start --config "$HERE/$silo.toml" >"$RUN/$silo.log" 2>&1 &
  PIDS+=($!)
done

echo "== 3. waiting for each agent's health check"
for silo in "${SILOS[@]}"; do
  for i in $(seq 1 120); do
    if "$FEDSILO" silo health --config "$HERE/$silo.toml" >/dev/null 2>&1; then echo "   $silo serving"; break; fi
    if [ "$i" = 120 ]; then echo "$silo did not start:"; cat "$RUN/$silo.log"; exit 1; fi
    sleep 0.5
  done
done

echo "== 4. the job, through St Mary's own agent"
"$FEDSILO" job submit "$HERE/job.toml" --silo-config "$HERE/st_marys.toml" --json "$RUN/results.json"
"$FEDSILO" job list --silo-config "$HERE/st_marys.toml"

echo "== 5. St Mary's ledger and the last lines of its audit log"
"$FEDSILO" privacy report --ledger "$RUN/st_marys/ledger.sqlite"
"$FEDSILO" privacy verify --ledger "$RUN/st_marys/ledger.sqlite"
tail -n 3 "$RUN/st_marys/audit.jsonl"
echo "results: $RUN/results.json"
