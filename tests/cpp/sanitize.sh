#!/usr/bin/env bash
# Builds csrc/ and the C++ test drivers with sanitizers and runs the C++ tests under them:
# the replay buffer (tests/cpp/replay_test.cpp), the policy runtime (tests/cpp/runtime_test.cpp),
# the C++ update (tests/cpp/update_test.cpp) and the MuJoCo control loop (pydpg_control_loop on a
# trained policy). Any finding fails the run.
#
#   tests/cpp/sanitize.sh address     # AddressSanitizer + UndefinedBehaviorSanitizer (default)
#   tests/cpp/sanitize.sh thread      # ThreadSanitizer
#
# Uses the Python interpreter in $PYTHON (default: python3 on PATH) for torch, mujoco and the
# fixtures, so run it from the project's environment, e.g. PYTHON=.venv/bin/python. The build goes
# to build/sanitize-<kind>/ (reused, so a second run only recompiles what changed).
# libtorch, MKL and MuJoCo are not instrumented: the sanitizers check pydpg's own code and what it
# hands to those libraries.
set -euo pipefail

kind=${1:-address}
case "$kind" in
  address) flags="address,undefined" ;;
  thread) flags="thread" ;;
  *) echo "usage: $0 [address|thread]" >&2; exit 2 ;;
esac
root=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-python3}
py=$(command -v "$py") || { echo "no Python interpreter '$py'" >&2; exit 2; }
py=$(realpath -s "$py")  # absolute, but still the venv's link: its site-packages hold torch
build="$root/build/sanitize-$kind"
here="$root/tests/cpp"

gen=()
command -v ninja > /dev/null && gen=(-G Ninja)
start=$(date +%s)
mkdir -p "$build"
cmake -S "$root" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPython_EXECUTABLE="$py" \
  -DPYDPG_SANITIZE="$flags" -DPYDPG_BUILD_TESTS=ON > "$build.configure.log" 2>&1 \
  || { cat "$build.configure.log"; exit 1; }
# Only the drivers and what they link: the Python module is not run under the sanitizers, so
# compiling its bindings with them would be time spent for nothing.
drivers=(replay_test runtime_test update_test pydpg_control_loop)
cmake --build "$build" -j "$(nproc)" --target "${drivers[@]}" > "$build.build.log" 2>&1 \
  || { tail -50 "$build.build.log"; exit 1; }
built=$(date +%s)
for exe in "${drivers[@]}"; do
  [ -x "$build/$exe" ] || { echo "sanitize[$kind]: $exe was not built (is torch/mujoco importable by $py?)" >&2; exit 1; }
done
echo "sanitize[$kind]: built in $((built - start)) s"

fixtures="$build/fixtures"
cases=$("$py" "$here/make_fixtures.py" "$fixtures")  # set -e: a failure here stops the run
mapfile -t runtime_cases <<< "$cases"
[ "${#runtime_cases[@]}" -eq 3 ] || { echo "sanitize[$kind]: make_fixtures.py printed no test cases" >&2; exit 1; }

# Every finding is fatal (the drivers are also compiled with -fno-sanitize-recover=all). LeakSanitizer
# is left on for pydpg's code; what libtorch, MKL and OpenMP keep allocated until exit is suppressed
# by library (tests/cpp/lsan.supp; a leak whose stack passes through libtorch is hidden with them).
# Uninstrumented code (MKL, libtorch) is not checked: an overflow of a buffer pydpg hands to BLAS is
# seen only when pydpg's own code touches the bytes, which is why the runtime's scratch buffers are
# NaN-poisoned and their alignment slack ASan-poisoned in these builds.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=1:strict_init_order=1"
export LSAN_OPTIONS="suppressions=$here/lsan.supp:print_suppressions=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$here/tsan.supp"
export OMP_NUM_THREADS=1  # libgomp's pool is uninstrumented: TSan would report its barriers

run() {
  echo "sanitize[$kind]: $*"
  "$@"
}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
run "$build/replay_test" "$scratch"
run "$build/update_test"
for case_line in "${runtime_cases[@]}"; do
  IFS=$'\t' read -ra case_args <<< "$case_line"  # tab-separated: paths may hold spaces
  run "$build/runtime_test" "${case_args[@]}"
done
run "$build/pydpg_control_loop" "$fixtures/pendulum_30k.pt" --episodes 2 --max-steps 300 --no-sleep \
    --json "$scratch/loop.json" --quiet
"$py" - "$scratch/loop.json" <<'EOF'
import json, sys
out = json.load(open(sys.argv[1]))
assert out["lengths"] == [300, 300] and out["terminated"] == [False, False], out
print("sanitize: control loop balanced the pendulum for 2 x 300 steps")
EOF
# A policy whose metadata carries an observation spec (the pendulum's is the 0.1 slice layout).
run "$build/pydpg_control_loop" "$fixtures/cheetah.pt" --episodes 1 --max-steps 200 --no-sleep --quiet
# Bad input must end in a clean error (exit 1 with a message), never a sanitizer report.
for bad in "$fixtures/truncated.pt" "$fixtures/empty.pt"; do
  if "$build/pydpg_control_loop" "$bad" --max-steps 5 --no-sleep > "$scratch/bad.log" 2>&1; then
    echo "sanitize: the control loop accepted $bad" >&2; exit 1
  fi
  if grep -q "Sanitizer" "$scratch/bad.log"; then cat "$scratch/bad.log" >&2; exit 1; fi
done
echo "sanitize[$kind]: all C++ tests passed under $flags in $(( $(date +%s) - built )) s (build $((built - start)) s)"
