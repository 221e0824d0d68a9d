#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Runs inside the kernel-matrix guest as root (copied by matrix/run to
# <results>/job.sh next to job.env). Writes everything to /results, which is
# a directory on the host: kernel log, doctor JSON, pytest log + JUnit XML,
# per-phase timings and the exit codes.
set -u
# shellcheck source=/dev/null
. /results/job.env
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 TERM=dumb
R=/results
now() { date +%s.%N; }
phase() { echo "$1 $2 $3" >> $R/timings; }   # name start end

uname -r > $R/kernel-release
# A foreign guest's venv (matrix/run's rootfs) takes bpfscope from the checkout.
if [ "$VENV" != "$REPO/.venv" ]; then
    echo "$REPO/src" > "$(echo "$VENV"/lib/python3*/site-packages)/bpfscope-checkout.pth"
fi
dmesg --follow --nopager > $R/dmesg.txt 2>&1 &
dmesg_pid=$!
trap 'kill $dmesg_pid 2>/dev/null; wait $dmesg_pid 2>/dev/null; sync' EXIT
ip link set lo up
hostname "matrix-$(uname -r | sed "s/[^A-Za-z0-9.-]/-/g")"  # 6.12.x+deb13: no "+"

echo "== bpfscope doctor ($(uname -r))"
t0=$(now)
"$VENV/bin/bpfscope" doctor --json > $R/doctor.json 2> $R/doctor.stderr
echo $? > $R/doctor.rc
phase doctor "$t0" "$(now)"
"$VENV/bin/python" -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(d.get("summary", ""))' $R/doctor.json 2>/dev/null || cat $R/doctor.stderr

if [ -n "${EXEC:-}" ]; then
    echo "== exec: $EXEC"
    t0=$(now)
    (cd "$REPO" && PATH="$REPO/.venv/bin:$PATH" timeout -k 10 "$PYTEST_TIMEOUT" bash -c "$EXEC") 2>&1 | tee $R/exec.log
    echo "${PIPESTATUS[0]}" > $R/exec.rc
    phase exec "$t0" "$(now)"
fi
if [ -z "${PYTEST_TARGETS}" ]; then
    echo 0 > $R/pytest.rc
    exit 0
fi

echo "== pytest ${PYTEST_TARGETS}"
cd "$REPO" || exit 1
t0=$(now)
# shellcheck disable=SC2086  # targets and options are word lists on purpose
BPFSCOPE_REQUIRE_KERNEL_TESTS=1 timeout -k 10 "$PYTEST_TIMEOUT" \
    "$VENV/bin/pytest" -p no:cacheprovider -q -rfEs --color=no \
    --junitxml=$R/junit.xml -o junit_family=xunit2 \
    $PYTEST_ARGS $PYTEST_TARGETS 2>&1 | tee $R/pytest.log
echo "${PIPESTATUS[0]}" > $R/pytest.rc
phase pytest "$t0" "$(now)"
