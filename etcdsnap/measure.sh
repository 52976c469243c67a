#!/bin/sh
# Measures Client.Save against `etcdctl snapshot save`, and Client.Census of
# 20,000 secrets, on a dedicated etcd on 127.0.0.1 (see measure_test.go).
# Needs Debian's etcd-server and etcd-client. Sizes and rounds:
#   ATREST_MEASURE_SIZES_MB=128,512 ATREST_MEASURE_ROUNDS=3 ./measure.sh
set -eu
cd "$(dirname "$0")"
go test -tags measure -run '^TestMeasure$' -count=1 -v -timeout 60m .
