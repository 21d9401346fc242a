#!/bin/bash
# Wait until the one-minute load average is below ${QUIET_LOAD:-1.0} (at most ${QUIET_MAX_S:-600}
# seconds), so that a training or timing run does not start in the tail of the previous one.
# Prints the load it starts at; the run itself records its own load at start and end.
max=${QUIET_MAX_S:-600} limit=${QUIET_LOAD:-1.0} waited=0
while true; do
  load=$(cut -d' ' -f1 /proc/loadavg)
  if awk -v l="$load" -v m="$limit" 'BEGIN { exit !(l < m) }'; then
    echo "quiet: load $load after ${waited}s"
    exit 0
  fi
  if (( waited >= max )); then
    echo "still busy after ${waited}s: load $load (the run will be marked busy)" >&2
    exit 0
  fi
  sleep 10
  waited=$((waited + 10))
done
