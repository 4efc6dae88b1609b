/* treecomp's walk kernel: folded trees walked over blocks of rows, leaves summed in tree order.
 *
 * Compiled once per machine by treecomp/kernel.py (cc -O3 -march=native); every
 * model then only lays out its arrays (no per-model compile). The forest arrives folded
 * (treecomp.passes.fold_missing): every node sends a row left iff x' < s, where x' is one
 * of the "used" columns: an input column, its negation, or 0 (NaN where the input is NaN).
 * NaN fails every test and goes right, which is the folded forest's missing-value rule.
 *
 * Layout of a tree t (see treecomp/kernel_layout.py): its top perfect_levels[t] levels as a
 * complete binary tree in heap order (node i has children 2i+1, 2i+2), at perfect_base[t]
 * in pfeature/pthreshold; a position reached below them names a node of the forest through
 * entry[entry_base[t] + position]. A node of the forest is node[i], whole: its threshold,
 * column and children (a leaf's children are itself), one cache line a step; from the
 * entry, rest_levels[t] levels walk them, and rows walked alone (blocks of under
 * SCALAR_ROWS rows) walk them from the tree's root, node[node_base[t]]. A leaf's values sit at
 * values[value_base[node]], width[t] of them, added to outputs out_index[t]... in tree
 * order; a tree perfect throughout (slot_base[t] >= 0) has them by slot instead, width[t] a
 * slot from slot_values[slot_base[t]], which saves two dependent loads a row and tree.
 *
 * One call walks its rows on the calling thread (treecomp/kernel.py splits a large batch
 * over threads, calling in parallel: the kernel keeps no state), except that a few rows of
 * a large forest share their trees with one helper thread (see share()). Rows are walked
 * BLOCK at a time, level by level across the block's rows: the rows' walks are independent,
 * so their loads overlap (a walk row by row waits on each level's load in turn: 107 ms
 * against 44 ms for 500 trees of depth 8, 10 000 rows, 1 thread), and the loop over rows
 * vectorises with gathers on AVX2 and AVX-512 alike. The block's used columns are first
 * copied column by column (xt[u * BLOCK + r]), so the root's test reads contiguous values.
 * Up to SUPER_BLOCKS blocks walk a chunk of trees (about CHUNK_BYTES of their tables)
 * before the next chunk, so a chunk's tables are read from the cache SUPER_BLOCKS times
 * (RandomForest, 100 trees of depth 12, 10 000 rows, 1 thread: 31 ms a block at a time,
 * 25-29 ms 8 blocks at a time; no change on XGBoost's 500 trees of depth 8; AMD EPYC Zen 4,
 * other work running).
 *
 * Exactness: no fast-math; every comparison is x' < s in the comparison type; every output
 * starts from its base score (or 0 for averaging forests, whose division the caller does)
 * and adds its leaves one by one in tree order in the accumulation type, as the native
 * libraries do. The vector steps below compute the same comparison, lane by lane.
 */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#define BLOCK 64
#define BLOCK_SHIFT 6
#define SUPER_BLOCKS 8
#define CHUNK_BYTES (128 * 1024)
/* Blocks of fewer rows walk row by row, GROUP trees side by side (see NAME##_row). */
#define SCALAR_ROWS 4
/* Columns (log 2 of their rows) of the rows the helper shares (see NAME##_shared): a row's
   used columns then fill a few cache lines that move to the helper's core, not one line a
   column (HistGradientBoosting's 200 trees, one row, 2 threads: 4.9 us against 7.4). */
#define SHARED_SHIFT 2
_Static_assert((1 << SHARED_SHIFT) >= SCALAR_ROWS - 1, "the shared rows' columns overlap");
#ifndef GROUP
#define GROUP 16
#endif

/* Which column a used column is: 0 the input column, 1 its negation, 2 zero or NaN. */
#define KIND_VALUE 0
#define KIND_NEGATED 1
#define KIND_NAN 2

/* Level d's node features (as column offsets in a block) and thresholds, into the arrays
 * a permuting step loads into registers (they are sized, and zeroed, past the level). */
#define LEVEL_TABLES(pf, pt, d, features, thresholds)                                          \
  for (int32_t q = 0, first_ = (1 << (d)) - 1; q < (1 << (d)); q++) {                          \
    (features)[q] = (pf)[first_ + q] << BLOCK_SHIFT;                                          \
    (thresholds)[q] = (pt)[first_ + q];                                                       \
  }

/* One perfect level d >= 2 of a tree for a block's first mb rows (mb a multiple of 8):
 * at[r] = 2 at[r] + 1 + !(x' < s) at the row's node at[r], whose feature and threshold are
 * pf[at[r]] and pt[at[r]].
 *
 * The rows of a block stand at different nodes, so in general the node's feature and
 * threshold are gathered, then the row's value: three gathers a row and level, which bound
 * the walk (the gathers took most of the kernel's cycles under perf). A level of at most
 * 32 nodes (AVX-512: a two-table permute) or 16 (AVX2: two one-table permutes and a blend)
 * fits in registers: there a permute by the node's offset in the level replaces the two
 * table gathers. XGBoost, 500 trees of depth 8, 10 000 rows, 1 thread (AMD EPYC Zen 4):
 * 43 ms gathering every level, 29 ms with the permutes (-march=native, AVX-512); 34 and 27
 * ms built for AVX2 (-march=x86-64-v3). Other levels, and builds for other ISAs, take the
 * plain loop, which the compiler vectorises with gathers where it can. */
static inline void step_f32(const float *xt, const int32_t *pf, const float *pt, int d,
                            int32_t *at, int32_t mb) {
  int32_t first = (1 << d) - 1; /* the level's first node */
#if defined(__AVX512F__)
  if (d <= 5) {
    __mmask16 head = d >= 4 ? (__mmask16)0xFFFF : (__mmask16)((1u << (1 << d)) - 1);
    __m512i f0 = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(head, pf + first), BLOCK_SHIFT);
    __m512 s0 = _mm512_maskz_loadu_ps(head, pt + first);
    __m512i f1 = f0;
    __m512 s1 = s0;
    if (d == 5) {
      f1 = _mm512_slli_epi32(_mm512_loadu_si512(pf + first + 16), BLOCK_SHIFT);
      s1 = _mm512_loadu_ps(pt + first + 16);
    }
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i one = _mm512_set1_epi32(1), offset = _mm512_set1_epi32(first);
    for (int32_t r = 0; r < mb; r += 16) {
      __mmask16 k = mb - r >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (mb - r)) - 1);
      __m512i i = _mm512_maskz_loadu_epi32(k, at + r);
      __m512i j = _mm512_sub_epi32(i, offset);
      __m512i column = _mm512_permutex2var_epi32(f0, j, f1);
      __m512 s = _mm512_permutex2var_ps(s0, j, s1);
      __m512i where = _mm512_add_epi32(column, _mm512_add_epi32(lane, _mm512_set1_epi32(r)));
      __m512 x = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, where, xt, 4);
      __mmask16 right = _mm512_cmp_ps_mask(x, s, _CMP_NLT_UQ); /* !(x < s): NaN is true */
      __m512i next = _mm512_add_epi32(_mm512_add_epi32(i, i), one);
      _mm512_mask_storeu_epi32(at + r, k, _mm512_mask_add_epi32(next, right, next, one));
    }
    return;
  }
#elif defined(__AVX2__)
  if (d <= 4) {
    int32_t features[16] = {0};
    float thresholds[16] = {0};
    LEVEL_TABLES(pf, pt, d, features, thresholds);
    __m256i f0 = _mm256_loadu_si256((const __m256i *)features);
    __m256i f1 = _mm256_loadu_si256((const __m256i *)(features + 8));
    __m256 s0 = _mm256_loadu_ps(thresholds), s1 = _mm256_loadu_ps(thresholds + 8);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i one = _mm256_set1_epi32(1), offset = _mm256_set1_epi32(first);
    for (int32_t r = 0; r < mb; r += 8) {
      __m256i i = _mm256_loadu_si256((const __m256i *)(at + r));
      __m256i j = _mm256_sub_epi32(i, offset);
      __m256 upper = _mm256_castsi256_ps(_mm256_slli_epi32(j, 28)); /* offset >= 8 */
      __m256i column = _mm256_castps_si256(
          _mm256_blendv_ps(_mm256_castsi256_ps(_mm256_permutevar8x32_epi32(f0, j)),
                           _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(f1, j)), upper));
      __m256 s = _mm256_blendv_ps(_mm256_permutevar8x32_ps(s0, j),
                                  _mm256_permutevar8x32_ps(s1, j), upper);
      __m256i where = _mm256_add_epi32(column, _mm256_add_epi32(lane, _mm256_set1_epi32(r)));
      __m256 x = _mm256_i32gather_ps(xt, where, 4);
      /* !(x < s), all ones (-1) where true, NaN included */
      __m256i right = _mm256_castps_si256(_mm256_cmp_ps(x, s, _CMP_NLT_UQ));
      __m256i next = _mm256_add_epi32(_mm256_add_epi32(i, i), one);
      _mm256_storeu_si256((__m256i *)(at + r), _mm256_sub_epi32(next, right));
    }
    return;
  }
#endif
  for (int32_t r = 0; r < mb; r++) {
    int32_t i = at[r];
    at[r] = 2 * i + 1 + !(xt[pf[i] * BLOCK + r] < pt[i]);
  }
}

/* The same for double comparisons. With AVX-512 (VL), a level of at most 16 nodes permutes
 * its features and thresholds by the node's offset in the level, 8 rows at a time (a
 * double's vector holds 8); with AVX2, a level of at most 8 nodes, 4 rows at a time, a
 * threshold moved as its two 32-bit halves; other levels and ISAs take the plain loop. */
static inline void step_f64(const double *xt, const int32_t *pf, const double *pt, int d,
                            int32_t *at, int32_t mb) {
#if defined(__AVX512F__) && defined(__AVX512VL__)
  if (d <= 4) {
    int32_t first = (1 << d) - 1, features[16] = {0};
    double thresholds[16] = {0};
    LEVEL_TABLES(pf, pt, d, features, thresholds);
    __m512i f = _mm512_loadu_si512(features);
    __m512d s0 = _mm512_loadu_pd(thresholds), s1 = _mm512_loadu_pd(thresholds + 8);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i one = _mm256_set1_epi32(1), offset = _mm256_set1_epi32(first);
    for (int32_t r = 0; r < mb; r += 8) {
      __m256i i = _mm256_loadu_si256((const __m256i *)(at + r));
      __m256i j = _mm256_sub_epi32(i, offset);
      __m256i column =
          _mm512_castsi512_si256(_mm512_permutexvar_epi32(_mm512_castsi256_si512(j), f));
      __m512d s = _mm512_permutex2var_pd(s0, _mm512_cvtepi32_epi64(j), s1);
      __m256i where = _mm256_add_epi32(column, _mm256_add_epi32(lane, _mm256_set1_epi32(r)));
      __m512d x = _mm512_i32gather_pd(where, xt, 8);
      __mmask8 right = _mm512_cmp_pd_mask(x, s, _CMP_NLT_UQ); /* !(x < s): NaN is true */
      __m256i next = _mm256_add_epi32(_mm256_add_epi32(i, i), one);
      _mm256_storeu_si256((__m256i *)(at + r), _mm256_mask_add_epi32(next, right, next, one));
    }
    return;
  }
#elif defined(__AVX2__)
  if (d <= 3) {
    int32_t first = (1 << d) - 1, features[8] = {0};
    double thresholds[8] = {0};
    LEVEL_TABLES(pf, pt, d, features, thresholds);
    __m256i f = _mm256_loadu_si256((const __m256i *)features);
    __m256 s0 = _mm256_castpd_ps(_mm256_loadu_pd(thresholds));
    __m256 s1 = _mm256_castpd_ps(_mm256_loadu_pd(thresholds + 4));
    const __m128i lane = _mm_setr_epi32(0, 1, 2, 3), offset = _mm_set1_epi32(first);
    const __m128i one = _mm_set1_epi32(1), three = _mm_set1_epi32(3);
    const __m256i halves = _mm256_setr_epi32(0, 1, 0, 1, 0, 1, 0, 1);
    const __m256i low = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    for (int32_t r = 0; r < mb; r += 4) {
      __m128i i = _mm_loadu_si128((const __m128i *)(at + r));
      __m128i j = _mm_sub_epi32(i, offset);
      __m128i column = _mm256_castsi256_si128(
          _mm256_permutevar8x32_epi32(f, _mm256_castsi128_si256(j)));
      /* threshold j of 8: halves 2(j & 3), 2(j & 3) + 1 of table j >> 2 */
      __m256i jj = _mm256_cvtepu32_epi64(_mm_and_si128(j, three)); /* j & 3, 0, ... */
      __m256i pair = _mm256_add_epi32(
          _mm256_slli_epi32(_mm256_or_si256(jj, _mm256_slli_epi64(jj, 32)), 1), halves);
      __m256d upper = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_cmpgt_epi32(j, three)));
      __m256d s = _mm256_blendv_pd(_mm256_castps_pd(_mm256_permutevar8x32_ps(s0, pair)),
                                   _mm256_castps_pd(_mm256_permutevar8x32_ps(s1, pair)), upper);
      __m128i where = _mm_add_epi32(column, _mm_add_epi32(lane, _mm_set1_epi32(r)));
      __m256d x = _mm256_i32gather_pd(xt, where, 8);
      /* !(x < s), all ones where true (NaN included), one 32-bit lane a row */
      __m256i wide = _mm256_castpd_si256(_mm256_cmp_pd(x, s, _CMP_NLT_UQ));
      __m128i right = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(wide, low));
      __m128i next = _mm_add_epi32(_mm_add_epi32(i, i), one);
      _mm_storeu_si128((__m128i *)(at + r), _mm_sub_epi32(next, right));
    }
    return;
  }
#else
  (void)d;
#endif
  for (int32_t r = 0; r < mb; r++) {
    int32_t i = at[r];
    at[r] = 2 * i + 1 + !(xt[pf[i] * BLOCK + r] < pt[i]);
  }
}

/* A helper thread for small batches (fewer than SCALAR_ROWS rows) of large forests: the
 * calling thread and the helper take the trees in SHARE_PIECES pieces from a shared
 * counter, each writing the leaves its trees reach; the caller then adds them in tree
 * order, so the sums are those of one thread. A thread handed over by Python costs tens
 * of microseconds; this one waits SPIN_NS spinning after its last job (then sleeps on a
 * condition variable), as ONNX Runtime's pool does for the one-row walks it splits over
 * threads.
 *
 * The caller never waits for the helper to wake: it walks pieces until none are left, then
 * withdraws the job if the helper has not taken it, else waits for the helper's last
 * piece. Few and large pieces: each one taken moves the counter's cache line between the
 * cores, and a core walks the trees it walked last call from its own cache (one row, 2
 * threads, us, pieces of 16 trees / 4 pieces: XGBoost 500 trees 10.8-11.9 / 7.5-8.1,
 * 10 classes 19.3-19.7 / 11.1-12.5, LightGBM 12.1-12.8 / 8.7-10.4). One caller at a
 * time posts (`busy`); others walk alone. A forked child starts with no helper and makes
 * its own. */
#define SPIN_NS 50000
#define PARALLEL_TREES 64
#define SHARE_PIECES 4

enum { JOB_NONE, JOB_POSTED, JOB_RUNNING, JOB_DONE };

typedef struct {
  void (*run)(void *context, int64_t t0, int64_t t1); /* trees t0..t1 */
  void *context;
  atomic_llong next; /* the first tree nobody has taken */
  int64_t end, step;
} shared_job;

static struct {
  pthread_mutex_t lock;
  pthread_cond_t wake;
  atomic_int state, sleeping;
  atomic_flag busy;
  int started; /* by the thread holding busy */
  shared_job *job;
} helper = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, JOB_NONE, 0,
            ATOMIC_FLAG_INIT, 0, NULL};

static void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void work(shared_job *job) {
  for (;;) {
    int64_t t0 = atomic_fetch_add(&job->next, job->step);
    if (t0 >= job->end) return;
    job->run(job->context, t0, t0 + job->step < job->end ? t0 + job->step : job->end);
  }
}

static void *helper_main(void *unused) {
  (void)unused;
  for (;;) {
    uint64_t until = now_ns() + SPIN_NS;
    for (int spins = 1; atomic_load(&helper.state) != JOB_POSTED; spins++) {
      relax();
      if (spins % 256 == 0 && now_ns() > until) {
        pthread_mutex_lock(&helper.lock);
        atomic_store(&helper.sleeping, 1);
        while (atomic_load(&helper.state) != JOB_POSTED)
          pthread_cond_wait(&helper.wake, &helper.lock);
        atomic_store(&helper.sleeping, 0);
        pthread_mutex_unlock(&helper.lock);
      }
    }
    int posted = JOB_POSTED; /* the caller may withdraw it first */
    if (atomic_compare_exchange_strong(&helper.state, &posted, JOB_RUNNING)) {
      work(helper.job);
      atomic_store(&helper.state, JOB_DONE);
    }
  }
  return NULL;
}

static void helper_forked(void) { /* in a forked child: no helper thread, nothing posted */
  pthread_mutex_init(&helper.lock, NULL);
  pthread_cond_init(&helper.wake, NULL);
  atomic_store(&helper.state, JOB_NONE);
  atomic_store(&helper.sleeping, 0);
  atomic_flag_clear(&helper.busy);
  helper.started = 0;
}

static void helper_register(void) { pthread_atfork(NULL, NULL, helper_forked); }

/* The job walked by this thread and, where it is free, the helper. */
static void share(shared_job *job) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  if (atomic_flag_test_and_set(&helper.busy)) {
    work(job);
    return;
  }
  if (!helper.started) {
    pthread_once(&once, helper_register);
    pthread_t thread;
    pthread_attr_t attributes;
    sigset_t all, old;
    sigfillset(&all); /* signals stay with Python's threads */
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_attr_init(&attributes);
    pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
    helper.started = pthread_create(&thread, &attributes, helper_main, NULL) == 0;
    pthread_attr_destroy(&attributes);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (!helper.started) {
      atomic_flag_clear(&helper.busy);
      work(job);
      return;
    }
  }
  helper.job = job;
  atomic_store(&helper.state, JOB_POSTED);
  if (atomic_load(&helper.sleeping)) {
    pthread_mutex_lock(&helper.lock);
    pthread_cond_signal(&helper.wake);
    pthread_mutex_unlock(&helper.lock);
  }
  work(job);
  int posted = JOB_POSTED;
  if (!atomic_compare_exchange_strong(&helper.state, &posted, JOB_NONE)) {
    while (atomic_load(&helper.state) != JOB_DONE) relax(); /* its last trees */
    atomic_store(&helper.state, JOB_NONE);
  }
  atomic_flag_clear(&helper.busy);
}

/* The kernel for comparisons in CMP and sums in ACC, perfect levels stepped by STEP. */
#define DEFINE_WALK(NAME, CMP, ACC, STEP)                                                      \
  /* A node whole, for rows walked alone: its test x' < s on used column f, then its       \
     children; a leaf's children are itself (treecomp/kernel.py's NODE dtype). */            \
  typedef struct {                                                                           \
    CMP s;                                                                                   \
    int32_t f;                                                                               \
    int32_t child[2];                                                                        \
  } NAME##_node;                                                                             \
                                                                                             \
  typedef struct {                                                                           \
    int64_t n_features, n_used, n_trees, n_outputs, n_helpers;                               \
    const int32_t *used_column;                                                              \
    const int8_t *used_kind;                                                                 \
    const int32_t *perfect_levels, *rest_levels;                                             \
    const int64_t *perfect_base, *entry_base;                                                \
    const int32_t *out_index, *width, *pfeature;                                             \
    const CMP *pthreshold;                                                                   \
    const int32_t *entry;                                                                    \
    const int64_t *value_base;                                                               \
    const ACC *values, *base;                                                                \
    const int64_t *slot_base;                                                                \
    const ACC *slot_values;                                                                  \
    const NAME##_node *node;                                                                 \
    const int64_t *node_base; /* tree t's root is node[node_base[t]] */                      \
  } NAME##_forest; /* the layout's tables, in treecomp/kernel.py's Tables order */           \
                                                                                             \
  /* The used columns of rows x[0..m) into xt, column u at xt + (u << shift); rows m..mb   \
     repeat the last (walked, never written out). */                                         \
  static void NAME##_columns(const NAME##_forest *f, const CMP *x, int64_t m, int32_t mb,   \
                             int shift, CMP *xt) {                                           \
    for (int64_t u = 0; u < f->n_used; u++) {                                                \
      CMP *column = xt + (u << shift);                                                       \
      const CMP *source = x + f->used_column[u];                                             \
      int kind = f->used_kind[u];                                                            \
      for (int32_t r = 0; r < mb; r++) {                                                     \
        CMP v = source[(r < m ? r : m - 1) * f->n_features];                                 \
        column[r] = kind == KIND_VALUE ? v : kind == KIND_NEGATED ? -v                       \
                    : (isnan(v) ? v : (CMP)0);                                               \
      }                                                                                      \
    }                                                                                        \
  }                                                                                          \
                                                                                             \
  /* Trees t0..t1 for row r alone (a block of 1 to 3 rows wastes no vector lanes on rows it  \
     does not have; column u of the rows at xt + (u << shift): a block's, or the packed      \
     columns of rows shared with the helper), GROUP trees side by side: one tree's levels    \
     form a chain of dependent loads, mostly from L2 and L3 for a large forest, which GROUP  \
     independent chains overlap. Each step reads one node whole (test and children: one      \
     cache line) from the tree's root down: the perfect levels' feature, threshold and       \
     entry tables cost three lines a level. A tree whose walk ends takes no other's place:   \
     a branch on the loaded node, mispredicted once a tree, cancels every walk in flight     \
     (XGBoost's 500 trees, one row: 18 us against 13). Leaves are added, or written, in      \
     tree order. */                                                                          \
  static void NAME##_row(const NAME##_forest *f, int64_t t0, int64_t t1, const CMP *xt,     \
                         int shift, int32_t r, ACC *acc, int32_t *leaves) {                  \
    const NAME##_node *node = f->node;                                                       \
    for (int64_t g = t0; g < t1; g += GROUP) {                                               \
      int n = t1 - g < GROUP ? (int)(t1 - g) : GROUP, depth = 0;                             \
      int32_t i[GROUP];                                                                      \
      for (int k = 0; k < n; k++) {                                                          \
        int levels = f->perfect_levels[g + k] + f->rest_levels[g + k];                       \
        i[k] = (int32_t)f->node_base[g + k];                                                 \
        depth = levels > depth ? levels : depth;                                             \
      }                                                                                      \
      /* a leaf's children are itself: stepping a tree past its leaf changes nothing, and  \
         the group stops once none moved (the row's paths, not the trees' depth) */          \
      for (int d = 0, moved = 1; d < depth && moved; d++) {                                  \
        moved = 0;                                                                           \
        for (int k = 0; k < n; k++) {                                                        \
          const NAME##_node *p = node + i[k];                                                \
          int32_t next = p->child[!(xt[((int64_t)p->f << shift) + r] < p->s)];               \
          moved |= next != i[k];                                                             \
          i[k] = next;                                                                       \
        }                                                                                    \
      }                                                                                      \
      for (int k = 0; k < n; k++) {                                                          \
        if (leaves != NULL) {                                                                \
          leaves[r * f->n_trees + g + k] = i[k];                                             \
          continue;                                                                          \
        }                                                                                    \
        ACC *a = acc + (int64_t)f->out_index[g + k] * BLOCK + r;                             \
        for (int32_t w = 0; w < f->width[g + k]; w++)                                        \
          a[w * BLOCK] += f->values[f->value_base[i[k]] + w];                                \
      }                                                                                      \
    }                                                                                        \
  }                                                                                          \
                                                                                             \
  /* Tree t over a block's mb rows (columns xt): adds its leaves to acc, or writes the      \
     nodes reached of its first m rows to leaves[r * n_trees + t]. */                        \
  static void NAME##_tree(const NAME##_forest *f, int64_t t, const CMP *xt, int32_t mb,     \
                          int64_t m, ACC *acc, int32_t *leaves) {                            \
    int32_t at[BLOCK];                                                                       \
    int32_t width = f->width[t];                                                             \
    ACC *a = acc + (int64_t)f->out_index[t] * BLOCK;                                         \
    const int32_t *pf = f->pfeature + f->perfect_base[t];                                    \
    const CMP *pt = f->pthreshold + f->perfect_base[t];                                      \
    int levels = f->perfect_levels[t];                                                       \
    if (levels == 0) {                                                                       \
      for (int32_t r = 0; r < mb; r++) at[r] = 0;                                            \
    } else {                                                                                 \
      /* the root: one column for every row */                                               \
      const CMP *c0 = xt + pf[0] * BLOCK;                                                    \
      CMP s0 = pt[0];                                                                        \
      if (levels == 1) {                                                                     \
        for (int32_t r = 0; r < mb; r++) at[r] = 1 + !(c0[r] < s0);                          \
      } else {                                                                               \
        /* level 1: two nodes, both columns read whole */                                    \
        const CMP *c1 = xt + pf[1] * BLOCK, *c2 = xt + pf[2] * BLOCK;                        \
        CMP s1 = pt[1], s2 = pt[2];                                                          \
        for (int32_t r = 0; r < mb; r++) {                                                   \
          int32_t right = !(c0[r] < s0);                                                     \
          CMP v = right ? c2[r] : c1[r];                                                     \
          CMP s = right ? s2 : s1;                                                           \
          at[r] = 2 * (1 + right) + 1 + !(v < s);                                            \
        }                                                                                    \
      }                                                                                      \
      for (int d = 2; d < levels; d++) STEP(xt, pf, pt, d, at, mb);                          \
    }                                                                                        \
    if (f->slot_base[t] >= 0 && leaves == NULL) {                                            \
      /* a tree perfect throughout: its leaves' values by slot, no node in between */        \
      const ACC *sv = f->slot_values + f->slot_base[t] - ((int64_t)(1 << levels) - 1) * width; \
      if (width == 1)                                                                        \
        for (int32_t r = 0; r < mb; r++) a[r] += sv[at[r]];                                  \
      else                                                                                   \
        for (int32_t w = 0; w < width; w++)                                                  \
          for (int32_t r = 0; r < mb; r++) a[w * BLOCK + r] += sv[at[r] * width + w];        \
      return;                                                                                \
    }                                                                                        \
    const int32_t *e = f->entry + f->entry_base[t] - ((1 << levels) - 1);                    \
    for (int32_t r = 0; r < mb; r++) at[r] = e[at[r]];                                       \
    if (f->rest_levels[t] > 0) {                                                             \
      /* child pointers: only rows still moving step on (rows of leaf-wise trees stop at   \
         very different depths), kept in order in `live` */                                 \
      int32_t live[BLOCK];                                                                   \
      int32_t n_live = 0;                                                                    \
      for (int32_t r = 0; r < mb; r++) live[n_live++] = r;                                   \
      for (int d = 0; d < f->rest_levels[t] && n_live > 0; d++) {                            \
        int32_t kept = 0;                                                                    \
        for (int32_t j = 0; j < n_live; j++) {                                               \
          int32_t r = live[j], i = at[r];                                                    \
          const NAME##_node *p = f->node + i; /* one line: test and children */              \
          int32_t next = p->child[!(xt[p->f * BLOCK + r] < p->s)];                           \
          at[r] = next;                                                                      \
          live[kept] = r;                                                                    \
          kept += next != i;                                                                 \
        }                                                                                    \
        n_live = kept;                                                                       \
      }                                                                                      \
    }                                                                                        \
    if (leaves != NULL) {                                                                    \
      for (int64_t r = 0; r < m; r++) leaves[r * f->n_trees + t] = at[r];                    \
      return;                                                                                \
    }                                                                                        \
    for (int32_t w = 0; w < width; w++)                                                      \
      for (int32_t r = 0; r < mb; r++) a[w * BLOCK + r] += f->values[f->value_base[at[r]] + w]; \
  }                                                                                          \
                                                                                             \
  /* A few rows' walk of trees t0..t1, as a shared_job's run: leaves into reached, and    \
     where value is given, each one-value leaf's value (loaded by the walking thread: the   \
     caller's sum then reads its cache). */                                                  \
  typedef struct {                                                                           \
    const NAME##_forest *f;                                                                  \
    const CMP *xt;                                                                           \
    int64_t m;                                                                               \
    int32_t *reached;                                                                        \
    ACC *value;                                                                              \
  } NAME##_few;                                                                              \
  static void NAME##_few_trees(void *context, int64_t t0, int64_t t1) {                      \
    NAME##_few *few = (NAME##_few *)context;                                                 \
    const NAME##_forest *f = few->f;                                                         \
    for (int32_t r = 0; r < few->m; r++) {                                                   \
      NAME##_row(f, t0, t1, few->xt, SHARED_SHIFT, r, NULL, few->reached);                   \
      if (few->value != NULL)                                                                \
        for (int64_t t = t0; t < t1; t++)                                                    \
          if (f->width[t] == 1)                                                              \
            few->value[r * f->n_trees + t] =                                                 \
                f->values[f->value_base[few->reached[r * f->n_trees + t]]];                  \
    }                                                                                        \
  }                                                                                          \
                                                                                             \
  /* Rows x[0..m), m < SCALAR_ROWS, walked by this thread and the helper (see share):      \
     leaves into leaves, or sums into out, added in tree order. 0, or 1 where its buffer   \
     could not be allocated. */                                                              \
  static int NAME##_shared(const CMP *x, int64_t m, const NAME##_forest *f, ACC *out,       \
                           int32_t *leaves) {                                                \
    size_t columns = sizeof(CMP) * (size_t)((f->n_used > 0 ? f->n_used : 1) << SHARED_SHIFT); \
    size_t values = sizeof(ACC) * (size_t)(m * f->n_trees);                                  \
    CMP *xt = (CMP *)malloc(columns + values + sizeof(int32_t) * (size_t)(m * f->n_trees));  \
    if (xt == NULL) return 1;                                                                \
    ACC *value = out != NULL ? (ACC *)((char *)xt + columns) : NULL;                         \
    int32_t *reached = leaves != NULL ? leaves : (int32_t *)((char *)xt + columns + values); \
    NAME##_columns(f, x, m, (int32_t)m, SHARED_SHIFT, xt);                                   \
    NAME##_few few = {f, xt, m, reached, value};                                             \
    int64_t step = (f->n_trees + SHARE_PIECES * GROUP - 1) / (SHARE_PIECES * GROUP) * GROUP;  \
    shared_job job = {NAME##_few_trees, &few, 0, f->n_trees, step};                          \
    share(&job);                                                                             \
    if (out != NULL) {                                                                       \
      for (int64_t r = 0; r < m; r++) {                                                      \
        ACC *sums = out + r * f->n_outputs;                                                  \
        const int32_t *row = reached + r * f->n_trees;                                       \
        const ACC *one = value + r * f->n_trees;                                             \
        for (int64_t k = 0; k < f->n_outputs; k++) sums[k] = f->base[k];                     \
        for (int64_t t = 0; t < f->n_trees; t++)                                             \
          if (f->width[t] == 1)                                                              \
            sums[f->out_index[t]] += one[t];                                                 \
          else                                                                               \
            for (int32_t w = 0; w < f->width[t]; w++)                                        \
              sums[f->out_index[t] + w] += f->values[f->value_base[row[t]] + w];             \
      }                                                                                      \
    }                                                                                        \
    free(xt);                                                                                \
    return 0;                                                                                \
  }                                                                                          \
                                                                                             \
  /* Rows x (n of them, row-major) through the forest's tables f: their sums into out     \\
     (n_outputs a row), or the nodes reached into leaves (n_trees a row). 0, or 1 where the \
     row block buffers could not be allocated. */                                            \
  int NAME(const CMP *x, int64_t n, const NAME##_forest *f, ACC *out, int32_t *leaves) {    \
    if (n > 0 && n < SCALAR_ROWS && f->n_helpers > 0 && f->n_trees >= PARALLEL_TREES)       \
      return NAME##_shared(x, n, f, out, leaves);                                            \
    int64_t n_features = f->n_features, n_used = f->n_used, n_trees = f->n_trees;            \
    int64_t n_outputs = f->n_outputs;                                                        \
    int64_t used = n_used > 0 ? n_used : 1, outputs = n_outputs > 0 ? n_outputs : 1;         \
    /* at most SUPER_BLOCKS blocks at once, and no more blocks than the rows fill: a few     \
       rows' buffers stay small (large ones are mapped and unmapped at every call) */         \
    int64_t rows_at_once = (int64_t)BLOCK * SUPER_BLOCKS;                                    \
    if (n < rows_at_once) rows_at_once = (n + BLOCK - 1) / BLOCK * BLOCK;                    \
    if (rows_at_once == 0) rows_at_once = BLOCK;                                             \
    CMP *xt = (CMP *)malloc(sizeof(CMP) * (size_t)(used * rows_at_once));                    \
    ACC *acc = (ACC *)malloc(sizeof(ACC) * (size_t)(outputs * rows_at_once));                \
    if (xt == NULL || acc == NULL) {                                                         \
      free(xt);                                                                              \
      free(acc);                                                                             \
      return 1;                                                                              \
    }                                                                                        \
    for (int64_t first = 0; first < n; first += rows_at_once) {                              \
      int64_t rows = n - first < rows_at_once ? n - first : rows_at_once;                    \
      int64_t blocks = (rows + BLOCK - 1) / BLOCK;                                           \
      for (int64_t b = 0; b < blocks; b++) {                                                 \
        int64_t m = rows - b * BLOCK < BLOCK ? rows - b * BLOCK : BLOCK;                     \
        /* rows walked: m rounded up to a vector's lanes */                                  \
        int32_t mb = m < BLOCK ? (int32_t)((m + 7) / 8 * 8) : BLOCK;                         \
        NAME##_columns(f, x + (first + b * BLOCK) * n_features, m, mb, BLOCK_SHIFT,          \
                       xt + b * used * BLOCK);                                               \
        for (int64_t k = 0; k < n_outputs; k++)                                              \
          for (int32_t r = 0; r < BLOCK; r++) acc[(b * outputs + k) * BLOCK + r] = f->base[k];  \
      }                                                                                      \
      /* trees t0..t1 (about CHUNK_BYTES of tables) over every block, then the next ones: \
         each row still adds its trees in order. One block takes all trees at once (chunks \
         of one deep tree kept a row's walk to one tree at a time: RandomForest's depth-12 \
         trees, one row, 70 us against 10-13). */                                            \
      for (int64_t t0 = 0, t1; t0 < n_trees; t0 = t1) {                                      \
        int64_t bytes = 0;                                                                   \
        for (t1 = t0; t1 < n_trees && (t1 == t0 || blocks == 1 || bytes < CHUNK_BYTES); t1++) \
          bytes += ((int64_t)1 << f->perfect_levels[t1]) *                                      \
                   (int64_t)(4 + sizeof(CMP) + sizeof(ACC) * (size_t)f->width[t1]);             \
        for (int64_t b = 0; b < blocks; b++) {                                               \
          int64_t m = rows - b * BLOCK < BLOCK ? rows - b * BLOCK : BLOCK;                   \
          int32_t mb = m < BLOCK ? (int32_t)((m + 7) / 8 * 8) : BLOCK;                       \
          const CMP *columns = xt + b * used * BLOCK;                                        \
          ACC *sums = acc + b * outputs * BLOCK;                                             \
          int32_t *reached = leaves == NULL ? NULL : leaves + (first + b * BLOCK) * n_trees; \
          if (m < SCALAR_ROWS)                                                               \
            for (int32_t r = 0; r < m; r++)                                                  \
              NAME##_row(f, t0, t1, columns, BLOCK_SHIFT, r, sums, reached);                 \
          else                                                                               \
            for (int64_t t = t0; t < t1; t++) NAME##_tree(f, t, columns, mb, m, sums, reached); \
        }                                                                                    \
      }                                                                                      \
      if (out != NULL)                                                                       \
        for (int64_t r = 0; r < rows; r++)                                                   \
          for (int64_t k = 0; k < n_outputs; k++)                                            \
            out[(first + r) * n_outputs + k] =                                               \
                acc[((r / BLOCK) * outputs + k) * BLOCK + r % BLOCK];                        \
    }                                                                                        \
    free(xt);                                                                                \
    free(acc);                                                                               \
    return 0;                                                                                \
  }

DEFINE_WALK(treecomp_walk_f32_f32, float, float, step_f32)
DEFINE_WALK(treecomp_walk_f32_f64, float, double, step_f32)
DEFINE_WALK(treecomp_walk_f64_f32, double, float, step_f64)
DEFINE_WALK(treecomp_walk_f64_f64, double, double, step_f64)

/* The C library's exp of each of n doubles: the float64 links' exp as the native libraries
   call it (treecomp.reference.libm_exp), at C speed. Built without fast-math, so each call
   stays the library's scalar exp. */
void treecomp_exp(const double *x, double *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = exp(x[i]);
}

/* The C library's expf of each of n floats: XGBoost's float32 links call it, and it is not
   the correctly rounded exp (treecomp.reference.libm_expf). */
void treecomp_expf(const float *x, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = expf(x[i]);
}

/* Links, each value as treecomp.reference.link computes it (the oracle; see there for the
   native libraries' formulas), from n rows of k raw sums to their float64 results: one
   call where the NumPy form is a dozen (8 us of a one-row call). Kinds as
   treecomp/kernel.py's LINKS; in float32, XGBoost's (src/common/math.h), in float64, the
   one-formula links (SciPy's expit, LightGBM's sigmoid, exp). */
#define LINK_SIGMOID 1
#define LINK_EXP 2
#define LINK_SOFTMAX 3

void treecomp_link_f32(int kind, double scale, const float *raw, double *out, int64_t n,
                       int64_t k) {
  float s = (float)scale;
  for (int64_t r = 0; r < n; r++) {
    const float *x = raw + r * k;
    double *o = out + r * k;
    if (kind == LINK_SOFTMAX) { /* expf(x - max), summed in double, / that sum in float */
      float top = x[0], e[k > 0 ? k : 1];
      for (int64_t j = 1; j < k; j++) top = x[j] > top ? x[j] : top;
      double total = 0;
      for (int64_t j = 0; j < k; j++) total += (double)(e[j] = expf(x[j] - top));
      for (int64_t j = 0; j < k; j++) o[j] = (double)(e[j] / (float)total);
      continue;
    }
    for (int64_t j = 0; j < k; j++) {
      if (kind == LINK_SIGMOID) { /* 1 / (expf(min(-x, 88.7)) + 1) */
        float z = -(x[j] * s);
        o[j] = (double)(1.0f / (expf(z > 88.7f ? 88.7f : z) + 1.0f)); /* NaN stays */
      } else {
        o[j] = (double)expf(x[j]);
      }
    }
  }
}

void treecomp_link_f64(int kind, double scale, const double *raw, double *out, int64_t n,
                       int64_t k) {
  for (int64_t i = 0; i < n * k; i++)
    out[i] = kind == LINK_SIGMOID ? 1.0 / (1.0 + exp(-(scale * raw[i]))) : exp(raw[i]);
}

/* A small batch in one call: the walk of n rows, then the link where link > 0, through
   the buffers of one thread and engine, set once in this struct (treecomp/kernel.py's
   _SmallCall). A ctypes call converts each argument, 80-100 ns apiece here: a one-row
   call of a linked forest passed 11 in two calls (about 1.1 us), 2 in this one. kinds:
   bit 1 the rows (and tests) in double, bit 0 the sums. */
typedef struct {
  const void *x;
  void *raw;
  double *out;
  const void *forest;
  int64_t width;
  int32_t kinds, link;
  double scale;
} treecomp_small_call;

/* The walk of n rows for a forest's tables f (any NAME##_forest: they share one layout),
   by kinds: bit 1 the rows (and tests) in double, bit 0 the sums. */
static int walk_kinds(int kinds, const void *x, int64_t n, const void *f, void *out,
                      int32_t *leaves) {
  switch (kinds) {
    case 0:
      return treecomp_walk_f32_f32((const float *)x, n, (const treecomp_walk_f32_f32_forest *)f,
                                   (float *)out, leaves);
    case 1:
      return treecomp_walk_f32_f64((const float *)x, n, (const treecomp_walk_f32_f64_forest *)f,
                                   (double *)out, leaves);
    case 2:
      return treecomp_walk_f64_f32((const double *)x, n,
                                   (const treecomp_walk_f64_f32_forest *)f, (float *)out, leaves);
    default:
      return treecomp_walk_f64_f64((const double *)x, n,
                                   (const treecomp_walk_f64_f64_forest *)f, (double *)out, leaves);
  }
}

int treecomp_small(const treecomp_small_call *c, int64_t n) {
  int failed = walk_kinds(c->kinds, c->x, n, c->forest, c->raw, NULL);
  if (failed || c->link == 0) return failed;
  if (c->kinds & 1)
    treecomp_link_f64(c->link, c->scale, (const double *)c->raw, c->out, n, c->width);
  else
    treecomp_link_f32(c->link, c->scale, (const float *)c->raw, c->out, n, c->width);
  return 0;
}

/* Rows 0..n of one call split over at most `threads` threads, as both callers of the walk
   split them (treecomp/kernel.py's engine, over Python's threads; kernel_shim.cpp, over a
   package's OpenMP threads): slices of at least MIN_THREAD_ROWS rows (below that a thread's
   start costs more than it saves), each starting on a whole block. Writes the slices'
   bounds to bounds[0..slices] (threads + 1 of room) and returns the number of slices. */
#define MIN_THREAD_ROWS 256
int64_t treecomp_slices(int64_t n, int64_t threads, int64_t *bounds) {
  int64_t slices = n / MIN_THREAD_ROWS < threads ? n / MIN_THREAD_ROWS : threads;
  if (slices < 1) slices = 1;
  for (int64_t i = 0; i < slices; i++) bounds[i] = n * i / slices / BLOCK * BLOCK;
  bounds[slices] = n;
  return slices;
}

#define ABI 10

/* A forest's tables in one buffer, as compiled packages carry them (pack, in
   treecomp/kernel_layout.py): BLOB_COUNTS int64 numbers, then the byte offset from the
   buffer's start of each of the forest struct's BLOB_ARRAYS arrays, in its order, then the
   arrays (8-byte aligned). */
#define BLOB_MAGIC 0x706d6f6365657274LL /* "treecomp", little-endian */
#define BLOB_ARRAYS 18
enum { BLOB_MAGIC_AT, BLOB_ABI_AT, BLOB_KINDS_AT, BLOB_FEATURES_AT, BLOB_USED_AT, BLOB_TREES_AT,
       BLOB_OUTPUTS_AT, BLOB_COUNTS };

/* Every NAME##_forest: five counts, then the arrays' addresses. */
typedef struct {
  int64_t counts[5];
  const void *arrays[BLOB_ARRAYS];
} any_forest;

/* A blob's shape: its input features, its outputs and its kinds (as walk_kinds'); 0, or 2
   for a blob this kernel does not read. */
int treecomp_blob_shape(const void *blob, int64_t bytes, int64_t *features, int64_t *outputs,
                        int64_t *kinds) {
  const int64_t *h = (const int64_t *)blob;
  if (bytes < (int64_t)sizeof(int64_t) * BLOB_COUNTS || h[BLOB_MAGIC_AT] != BLOB_MAGIC ||
      h[BLOB_ABI_AT] != ABI)
    return 2;
  *features = h[BLOB_FEATURES_AT];
  *outputs = h[BLOB_OUTPUTS_AT];
  *kinds = h[BLOB_KINDS_AT];
  return 0;
}

/* The sums of rows x[0..n) (row-major, of the blob's compare type) into out (n_outputs a
   row, of its accumulation type), on the calling thread, for a blob of the given size. 0;
   1 where the row block buffers could not be allocated; 2 for a blob this kernel does not
   read (another calling convention, an offset outside it). */
int treecomp_blob_walk(const void *blob, int64_t bytes, const void *x, int64_t n, void *out) {
  const int64_t *h = (const int64_t *)blob;
  int64_t header = (int64_t)sizeof(int64_t) * (BLOB_COUNTS + BLOB_ARRAYS);
  if (bytes < header || h[BLOB_MAGIC_AT] != BLOB_MAGIC || h[BLOB_ABI_AT] != ABI ||
      h[BLOB_KINDS_AT] < 0 || h[BLOB_KINDS_AT] > 3)
    return 2;
  any_forest f = {{h[BLOB_FEATURES_AT], h[BLOB_USED_AT], h[BLOB_TREES_AT], h[BLOB_OUTPUTS_AT], 0},
                  {0}};
  for (int i = 0; i < BLOB_ARRAYS; i++) {
    int64_t at = h[BLOB_COUNTS + i];
    if (at < header || at > bytes || at % 8 != 0) return 2;
    f.arrays[i] = (const char *)blob + at;
  }
  return walk_kinds((int)h[BLOB_KINDS_AT], x, n, &f, out, NULL);
}

/* The version of this kernel's calling convention, checked by treecomp/kernel.py. */
int treecomp_kernel_abi(void) { return ABI; }
