#!/bin/sh
# Measures Client.Save against `etcdctl snapshot save`, Client.Census of
# 20,000 secrets, and the decryption drill against `etcdutl snapshot
# status`, on a dedicated etcd on 127.0.0.1 (see measure_test.go and
# measure_drill_test.go). Needs Debian's etcd-server and etcd-client; builds
# etcdutl once (tools/build.sh etcdutl). Sizes and rounds:
#   ATREST_MEASURE_SIZES_MB=128,512 ATREST_MEASURE_DRILL_MB=100,500 ATREST_MEASURE_ROUNDS=3 ./measure.sh
# Only the drill: ATREST_MEASURE_RUN='^TestMeasureDrill$' ./measure.sh
set -eu
cd "$(dirname "$0")"
ATREST_ETCDUTL=${ATREST_ETCDUTL:-$(../tools/build.sh etcdutl)}
export ATREST_ETCDUTL
go test -tags measure -run "${ATREST_MEASURE_RUN:-^TestMeasure(Drill)?\$}" -count=1 -v -timeout 90m .
