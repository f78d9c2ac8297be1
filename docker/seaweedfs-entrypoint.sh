#!/bin/sh
# SeaweedFS container entry point: the S3 identity (the access key and secret of the
# INI file $S3_CREDENTIALS_FILE, as the dispatch server reads it) written where only
# this container sees it, then `weed mini` as PID 1 with the S3 API on :8333 and the
# bucket $S3_BUCKET created on first start.
set -eu
umask 077
python3 - "$S3_CREDENTIALS_FILE" /tmp/s3-identities.json <<'PY'
import configparser, json, sys
parser = configparser.ConfigParser()
parser.read(sys.argv[1])
section = parser["default"]
identity = {"name": "distconv", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            "credentials": [{"accessKey": section["aws_access_key_id"].strip(),
                             "secretKey": section["aws_secret_access_key"].strip()}]}
with open(sys.argv[2], "w") as handle:
    json.dump({"identities": [identity]}, handle)
PY
exec /opt/weed/bin/weed mini -dir=/data -s3.port=8333 -s3.config=/tmp/s3-identities.json \
    -bucket="$S3_BUCKET" -s3.autoCreateBucket=false -webdav=false -admin.ui=false \
    -s3.port.iceberg=0 -s3.port.lance=0 "$@"
