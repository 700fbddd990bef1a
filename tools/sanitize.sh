#!/usr/bin/env bash
# Build sparseft._core with AddressSanitizer + UndefinedBehaviorSanitizer and run the fuzz suite and
# the kernel tests against it (the fuzz children inherit the sanitizer through LD_PRELOAD), then
# rebuild the normal extension. Usage: tools/sanitize.sh [pytest args...] (given arguments replace
# the default targets, e.g. tools/sanitize.sh tests for the whole suite)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
san="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
rm -rf build
CFLAGS="$san -O1 -g" LDFLAGS="$san" "$python" setup.py build_ext --inplace --force >/dev/null
preload="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
# Python itself is not built with ASan: leaks at exit are CPython's, so leak checking is off; a huge
# allocation returns NULL (a MemoryError, as without ASan) instead of aborting the process.
targets=(tests/fuzz tests/test_core.py tests/test_gemm.py)
[ $# -gt 0 ] && targets=("$@")
status=0
LD_PRELOAD="$preload" ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1 \
    SPARSEFT_SANITIZE=1 PYTHONPATH="$PWD" "$python" -m pytest -q -p no:cacheprovider \
    "${targets[@]}" || status=$?
rm -rf build
"$python" setup.py build_ext --inplace --force >/dev/null
exit $status
