#!/bin/sh
# backup-state.sh [DATA_DIR] DEST: a live, consistent copy of the dispatch state.
#
# The journal files are copied before the snapshot, and the copy is retried when a
# snapshot started or finished meanwhile (the set of files changed), so the copy is
# always a snapshot plus the journal that follows it. Stopping the service, or an
# atomic filesystem snapshot of the data folder, are the other safe ways.
set -eu
if [ "$#" -eq 1 ]; then data=/opt/distconv/server/data; dest=$1
elif [ "$#" -eq 2 ]; then data=$1; dest=$2
else echo "usage: $0 [DATA_DIR] DEST" >&2; exit 2
fi
dest=$(mkdir -p "$dest" && cd "$dest" && pwd)
cd "$data"
for attempt in 1 2 3 4 5; do
    before=$(ls -i server_state.json server_state.json.wal.* 2>/dev/null || true)
    rm -f "$dest"/server_state.json*
    if cp -p server_state.json.wal* "$dest"/ && { [ ! -e server_state.json ] ||
            cp -p server_state.json "$dest"/; }; then
        after=$(ls -i server_state.json server_state.json.wal.* 2>/dev/null || true)
        if [ "$before" = "$after" ]; then
            echo "backup-state: copied to $dest (attempt $attempt)"
            exit 0
        fi
    fi
    sleep 1
done
echo "backup-state: the state kept changing; try again, or stop the service" >&2
exit 1
