/* Peak multiply-add rates of this x86 CPU: fp32 FMA and int8 u8 x s8 products (VNNI's VPDPBUSD where the CPU has
 * it, and the VPMADDUBSW + VPMADDWD + VPADDD sequence that AVX2 and AVX-512BW integer GEMMs use without VNNI), per
 * thread and for N threads at once.
 *
 * docs/CPU_SPEED.md compares clip-rt's INT8 GEMMs and eager PyTorch's fp32 GEMMs with these ceilings. No library
 * reports them: they are instruction throughputs at the clock the machine actually runs, so they are measured here
 * with 12 independent accumulator chains per thread (enough to hide FMA/VNNI latency on current x86 cores) and no
 * memory traffic.
 *
 *   make cpu-peak                     # builds build/cpu_peak and runs it on every CPU the process may use
 *   build/cpu_peak [threads] [seconds]
 *
 * One multiply-add = one fp32 FMA lane or one u8 x s8 product summed into an int32 lane: VPDPBUSD does 4 per lane in
 * one instruction; without VNNI, VPMADDUBSW multiplies u8 x s8 pairs into int16 pair sums (which saturate past
 * 32767: docs/CPU_SPEED.md), VPMADDWD by ones widens them to int32, VPADDD accumulates. Every rate
 * is the best of three runs, and the clock the best of ten: on a shared host other tenants only ever slow it down.
 */
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CHAINS 12

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* One kernel per instruction: `iters` rounds of CHAINS independent multiply-adds, returning a sum of every lane so
 * the compiler cannot drop the work. STEP(x) is one multiply-add into accumulator x. */
#define PEAK_KERNEL(NAME, TARGET, VEC, LANE, INIT, STEP)                                                   \
    __attribute__((target(TARGET))) static double NAME(long iters) {                                       \
        VEC acc[CHAINS];                                                                                    \
        for (int i = 0; i < CHAINS; i++) acc[i] = INIT(i);                                                  \
        for (long k = 0; k < iters; k++) {                                                                  \
            _Pragma("GCC unroll 12") for (int i = 0; i < CHAINS; i++) acc[i] = STEP(acc[i]);                \
        }                                                                                                   \
        double s = 0;                                                                                       \
        for (int i = 0; i < CHAINS; i++) {                                                                  \
            LANE lanes[sizeof(VEC) / sizeof(LANE)];                                                         \
            memcpy(lanes, &acc[i], sizeof lanes);                                                           \
            for (size_t j = 0; j < sizeof lanes / sizeof *lanes; j++) s += lanes[j];                        \
        }                                                                                                   \
        return s;                                                                                           \
    }

#define FMA512(x) _mm512_fmadd_ps(x, _mm512_set1_ps(1.0000001f), _mm512_set1_ps(1e-7f))
#define FMA256(x) _mm256_fmadd_ps(x, _mm256_set1_ps(1.0000001f), _mm256_set1_ps(1e-7f))
#define VNNI512(x) _mm512_dpbusd_epi32(x, _mm512_set1_epi8(3), _mm512_set1_epi8(-2))
#define VNNI256(x) _mm256_dpbusd_epi32(x, _mm256_set1_epi8(3), _mm256_set1_epi8(-2))
#define ONES512 _mm512_set1_epi16(1)
#define ONES256 _mm256_set1_epi16(1)
#define MADDUBS512(x) _mm512_add_epi32(x, _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_set1_epi8(3), \
                                                                            _mm512_set1_epi8(-2)), ONES512))
#define MADDUBS256(x) _mm256_add_epi32(x, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(3), \
                                                                            _mm256_set1_epi8(-2)), ONES256))
#define F512(i) _mm512_set1_ps((float)(i))
#define F256(i) _mm256_set1_ps((float)(i))
#define I512(i) _mm512_set1_epi32(i)
#define I256(i) _mm256_set1_epi32(i)

PEAK_KERNEL(fma_zmm, "avx512f", __m512, float, F512, FMA512)
PEAK_KERNEL(fma_ymm, "avx2,fma", __m256, float, F256, FMA256)
PEAK_KERNEL(vnni_zmm, "avx512f,avx512vnni", __m512i, int, I512, VNNI512)
PEAK_KERNEL(vnni_ymm, "avx512f,avx512vl,avx512vnni", __m256i, int, I256, VNNI256)
PEAK_KERNEL(maddubs_zmm, "avx512f,avx512bw", __m512i, int, I512, MADDUBS512)
PEAK_KERNEL(maddubs_ymm, "avx2", __m256i, int, I256, MADDUBS256)

enum Isa { AVX2, AVX2_FMA, AVX512F, AVX512BW, AVX512_VNNI };

static int supported(enum Isa isa) {
    switch (isa) {
    case AVX2: return __builtin_cpu_supports("avx2");
    case AVX2_FMA: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case AVX512BW: return __builtin_cpu_supports("avx512bw");
    case AVX512F: return __builtin_cpu_supports("avx512f");
    case AVX512_VNNI: return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
    }
    return 0;
}

typedef struct {
    const char *name;
    enum Isa isa;
    double (*run)(long);
    int macs_per_op; /* multiply-adds per instruction */
} Kernel;

static const Kernel KERNELS[] = {
    {"fp32 FMA, 512-bit", AVX512F, fma_zmm, 16},
    {"fp32 FMA, 256-bit", AVX2_FMA, fma_ymm, 8},
    {"int8 VNNI (u8 x s8), 512-bit", AVX512_VNNI, vnni_zmm, 64},
    {"int8 VNNI (u8 x s8), 256-bit", AVX512_VNNI, vnni_ymm, 32},
    {"int8 VPMADDUBSW (u8 x s8), 512-bit", AVX512BW, maddubs_zmm, 64},
    {"int8 VPMADDUBSW (u8 x s8), 256-bit", AVX2, maddubs_ymm, 32},
};

typedef struct {
    const Kernel *k;
    long iters;
    double seconds, sink;
    pthread_barrier_t *start;
} Job;

static void *worker(void *arg) {
    Job *j = arg;
    pthread_barrier_wait(j->start);
    double t = now();
    j->sink = j->k->run(j->iters);
    j->seconds = now() - t;
    return NULL;
}

/* Rate in G multiply-adds per second summed over `threads` threads running at once (each timed on its own; the
 * slowest sets the aggregate, as in a parallel GEMM). */
static double measure(const Kernel *k, int threads, long iters, double *sink) {
    pthread_t tid[256];
    Job jobs[256];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, threads);
    for (int i = 0; i < threads; i++) {
        jobs[i] = (Job){k, iters, 0, 0, &start};
        pthread_create(&tid[i], NULL, worker, &jobs[i]);
    }
    double slowest = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(tid[i], NULL);
        if (jobs[i].seconds > slowest) slowest = jobs[i].seconds;
        *sink += jobs[i].sink;
    }
    pthread_barrier_destroy(&start);
    return (double)threads * iters * CHAINS * k->macs_per_op / slowest / 1e9;
}

/* Clock estimate: a chain of dependent integer adds retires one per cycle on every x86 core of the last decade.
 * The best of several short runs: time stolen by other tenants of a shared host only ever lowers it. */
static double clock_ghz(double seconds) {
    long n = (long)(seconds * 2.5e7); /* 8 adds per round: the loop's own counter and branch hide behind them */
    double best = 0;
    for (int r = 0; r < 10; r++) {
        unsigned long v = 0;
        double t = now();
        for (long i = 0; i < n; i++)
            __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                             "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0"
                             : "+r"(v));
        double ghz = 8.0 * n / (now() - t) / 1e9;
        if (ghz > best) best = ghz;
    }
    return best;
}

int main(int argc, char **argv) {
    cpu_set_t cpus;
    sched_getaffinity(0, sizeof cpus, &cpus);
    int threads = argc > 1 ? atoi(argv[1]) : CPU_COUNT(&cpus);
    double seconds = argc > 2 ? atof(argv[2]) : 1.0;
    if (threads < 1 || threads > 256 || seconds <= 0) {
        fprintf(stderr, "usage: %s [threads 1..256] [seconds > 0]\n", argv[0]);
        return 2;
    }
    __builtin_cpu_init();
    double ghz = clock_ghz(seconds / 2), sink = 0;
    printf("clock (dependent-add chain): %.2f GHz; %d thread(s) at once\n", ghz, threads);
    printf("%-36s %12s %12s %16s\n", "instruction", "GMAC/s/thr", "GMAC/s all", "MAC/cycle/thr");
    for (size_t i = 0; i < sizeof KERNELS / sizeof *KERNELS; i++) {
        const Kernel *k = &KERNELS[i];
        if (!supported(k->isa)) {
            printf("%-36s not supported by this CPU\n", k->name);
            continue;
        }
        double probe = measure(k, 1, 1000000, &sink);                      /* ~1M rounds to size the real run */
        long iters = (long)(seconds * probe * 1e9 / (CHAINS * k->macs_per_op));
        double all = 0; /* best of three, for the same reason as the clock */
        for (int r = 0; r < 3; r++) {
            double rate = measure(k, threads, iters / 3, &sink);
            if (rate > all) all = rate;
        }
        printf("%-36s %12.1f %12.1f %16.1f\n", k->name, all / threads, all, all / threads / ghz);
    }
    return sink == 12345.678 ? 1 : 0; /* keeps the results live */
}
