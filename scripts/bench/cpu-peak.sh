#!/usr/bin/env bash
# This machine's peak f32 arithmetic: fused multiply-adds on 12 independent register chains
# per thread (no memory traffic), with AVX-512 where the CPU has it, else AVX2 + FMA. It is the
# ceiling the matrix products of a CPU capture work against (docs/run.md, the run benchmark).
# Not a test.
#
#   scripts/bench/cpu-peak.sh [THREADS...]     (default: 1 and nproc)
set -euo pipefail
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if grep -qw avx512f /proc/cpuinfo; then
  flags="-mavx512f -mfma -DWIDE=1"
else
  flags="-mavx2 -mfma"
fi
cat > "$work/peak.c" <<'C'
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#ifdef WIDE
typedef __m512 vec;
#define LANES 16
#define SET(v) _mm512_set1_ps(v)
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define ADD(a, b) _mm512_add_ps(a, b)
#define FIRST(v) _mm512_cvtss_f32(v)
#else
typedef __m256 vec;
#define LANES 8
#define SET(v) _mm256_set1_ps(v)
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define ADD(a, b) _mm256_add_ps(a, b)
#define FIRST(v) _mm256_cvtss_f32(v)
#endif
#define ITERS 200000000L
static volatile float sink;
static void *chains(void *unused) {
  (void)unused;
  vec x = SET(0.999999f), y = SET(1e-7f);
  vec a0 = SET(0), a1 = SET(1), a2 = SET(2), a3 = SET(3), a4 = SET(4), a5 = SET(5),
      a6 = SET(6), a7 = SET(7), a8 = SET(8), a9 = SET(9), a10 = SET(10), a11 = SET(11);
  for (long n = 0; n < ITERS; n++) {
#define F(a) a = FMA(a, x, y);
    F(a0) F(a1) F(a2) F(a3) F(a4) F(a5) F(a6) F(a7) F(a8) F(a9) F(a10) F(a11)
  }
  vec s = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(ADD(a4, a5), ADD(a6, a7)), ADD(ADD(a8, a9), ADD(a10, a11))));
  sink = FIRST(s);
  return NULL;
}
int main(int argc, char **argv) {
  int threads = atoi(argv[1]);
  pthread_t t[256];
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, chains, NULL);
  for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double seconds = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
  double gflops = (double)threads * ITERS * 12 * LANES * 2 / seconds / 1e9;
  printf("%d thread(s), %d-bit FMA: %.1f GFLOP/s f32 (%.1f per thread)\n", threads, LANES * 32, gflops, gflops / threads);
  return 0;
}
C
# shellcheck disable=SC2086
gcc -O2 $flags -o "$work/peak" "$work/peak.c" -lpthread
threads=("$@")
[ ${#threads[@]} -eq 0 ] && threads=(1 "$(nproc)")
for n in "${threads[@]}"; do "$work/peak" "$n"; done
