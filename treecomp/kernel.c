/* treecomp's walk kernel: folded trees walked over blocks of rows, leaves summed in tree order.
 *
 * Compiled once per machine by treecomp/kernel.py (cc -O3 -march=native); every
 * model then only lays out its arrays (no per-model compile). The forest arrives folded
 * (treecomp.passes.fold_missing): every node sends a row left iff x' < s, where x' is one
 * of the "used" columns: an input column, its negation, or 0 (NaN where the input is NaN).
 * NaN fails every test and goes right, which is the folded forest's missing-value rule.
 *
 * Layout of a tree t (see treecomp/kernel.py): its top perfect_levels[t] levels as a complete
 * binary tree in heap order (node i has children 2i+1, 2i+2), at perfect_base[t] in
 * pfeature/pthreshold; a position reached below them names a node of the forest through
 * entry[entry_base[t] + position]; from there rest_levels[t] levels walk child pointers
 * (child[2 node + right], leaves pointing to themselves). A leaf's values sit at
 * values[value_base[node]], width[t] of them, added to outputs out_index[t]... in tree order;
 * a tree perfect throughout (slot_base[t] >= 0) has them by slot instead, width[t] a slot
 * from slot_values[slot_base[t]], which saves two dependent loads a row and tree.
 *
 * One call walks its rows on the calling thread (treecomp/kernel.py splits a large batch
 * over threads, calling in parallel: the kernel keeps no state). Rows are walked BLOCK at a time, level by level across the block's rows: the rows'
 * walks are independent, so their loads overlap (a walk row by row waits on each level's
 * load in turn: 107 ms against 44 ms for 500 trees of depth 8, 10 000 rows, 1 thread), and
 * the loop over rows vectorises with gathers on AVX2 and AVX-512 alike. The block's used
 * columns are first copied column by column (xt[u * BLOCK + r]), so the root's test reads
 * contiguous values.
 *
 * Exactness: no fast-math; every comparison is x' < s in the comparison type; every output
 * starts from its base score (or 0 for averaging forests, whose division the caller does)
 * and adds its leaves one by one in tree order in the accumulation type, as the native
 * libraries do.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 64
/* Blocks of fewer rows walk row by row (see below). */
#define SCALAR_ROWS 4

/* Which column a used column is: 0 the input column, 1 its negation, 2 zero or NaN. */
#define KIND_VALUE 0
#define KIND_NEGATED 1
#define KIND_NAN 2

#define DEFINE_WALK(NAME, CMP, ACC)                                                            \
  int NAME(const CMP *x, int64_t n, int64_t n_features, int64_t n_used,                       \
           const int32_t *used_column, const int8_t *used_kind, int64_t n_trees,              \
           const int32_t *perfect_levels, const int32_t *rest_levels,                         \
           const int64_t *perfect_base, const int64_t *entry_base, const int32_t *out_index,  \
           const int32_t *width, const int32_t *pfeature, const CMP *pthreshold,              \
           const int32_t *entry, const int32_t *nfeature, const CMP *nthreshold,              \
           const int32_t *child, const int64_t *value_base, const ACC *values,                \
           int64_t n_outputs, const ACC *base, const int64_t *slot_base,                      \
           const ACC *slot_values, ACC *out, int32_t *leaves) {                               \
    int64_t n_blocks = (n + BLOCK - 1) / BLOCK;                                               \
    int failed = 0;                                                                           \
    {                                                                                         \
      CMP *xt = (CMP *)malloc(sizeof(CMP) * (size_t)(n_used > 0 ? n_used : 1) * BLOCK);       \
      ACC *acc = (ACC *)malloc(sizeof(ACC) * (size_t)(n_outputs > 0 ? n_outputs : 1) * BLOCK); \
      if (xt == NULL || acc == NULL) {                                                        \
        failed = 1;                                                                           \
      } else {                                                                                \
        for (int64_t b = 0; b < n_blocks; b++) {                                              \
          int64_t first = b * BLOCK;                                                          \
          int64_t m = n - first < BLOCK ? n - first : BLOCK;                                  \
          /* rows walked: m rounded up to a vector's lanes (a lone row walks 8, not 64) */   \
          int64_t mb = m < BLOCK ? (m + 7) / 8 * 8 : BLOCK;                                   \
          int32_t at[BLOCK];                                                                  \
          for (int64_t u = 0; u < n_used; u++) {                                              \
            CMP *column = xt + u * BLOCK;                                                     \
            const CMP *source = x + first * n_features + used_column[u];                      \
            int kind = used_kind[u];                                                          \
            for (int64_t r = 0; r < mb; r++) {                                             \
              /* rows past the last repeat it: walked, never written out */                   \
              CMP v = source[(r < m ? r : m - 1) * n_features];                               \
              column[r] = kind == KIND_VALUE ? v : kind == KIND_NEGATED ? -v                  \
                          : (isnan(v) ? v : (CMP)0);                                          \
            }                                                                                 \
          }                                                                                   \
          for (int64_t k = 0; k < n_outputs; k++)                                             \
            for (int64_t r = 0; r < mb; r++) acc[k * BLOCK + r] = base[k];                 \
          if (m < SCALAR_ROWS) {                                                              \
            /* a few rows: each walks alone, its loads in a chain but no lane wasted */       \
            for (int64_t r = 0; r < m; r++) {                                                 \
              for (int64_t t = 0; t < n_trees; t++) {                                         \
                const int32_t *pf = pfeature + perfect_base[t];                               \
                const CMP *pt = pthreshold + perfect_base[t];                                 \
                int32_t i = 0;                                                                \
                for (int d = 0; d < perfect_levels[t]; d++)                                   \
                  i = 2 * i + 1 + !(xt[(int64_t)pf[i] * BLOCK + r] < pt[i]);                  \
                i = entry[entry_base[t] + i - ((1 << perfect_levels[t]) - 1)];                \
                for (int d = 0; d < rest_levels[t]; d++) {                                    \
                  int32_t next =                                                              \
                      child[2 * (int64_t)i + !(xt[(int64_t)nfeature[i] * BLOCK + r] < nthreshold[i])]; \
                  if (next == i) break;                                                       \
                  i = next;                                                                   \
                }                                                                             \
                if (leaves != NULL) leaves[(first + r) * n_trees + t] = i;                    \
                if (out != NULL)                                                              \
                  for (int32_t w = 0; w < width[t]; w++)                                      \
                    acc[(out_index[t] + w) * BLOCK + r] += values[value_base[i] + w];         \
              }                                                                               \
            }                                                                                 \
            mb = 0; /* the block walk below has nothing left to do */                         \
          }                                                                                   \
          for (int64_t t = 0; t < n_trees && mb > 0; t++) {                                   \
            const int32_t *pf = pfeature + perfect_base[t];                                   \
            const CMP *pt = pthreshold + perfect_base[t];                                     \
            int levels = perfect_levels[t];                                                   \
            if (levels == 0) {                                                                \
              for (int64_t r = 0; r < mb; r++) at[r] = 0;                                  \
            } else {                                                                          \
              /* the root: one column for every row */                                        \
              const CMP *c0 = xt + (int64_t)pf[0] * BLOCK;                                    \
              CMP s0 = pt[0];                                                                 \
              if (levels == 1) {                                                              \
                for (int64_t r = 0; r < mb; r++) at[r] = 1 + !(c0[r] < s0);                \
              } else {                                                                        \
                /* level 1: two nodes, both columns read whole */                             \
                const CMP *c1 = xt + (int64_t)pf[1] * BLOCK;                                  \
                const CMP *c2 = xt + (int64_t)pf[2] * BLOCK;                                  \
                CMP s1 = pt[1], s2 = pt[2];                                                   \
                for (int64_t r = 0; r < mb; r++) {                                         \
                  int32_t right = !(c0[r] < s0);                                              \
                  CMP v = right ? c2[r] : c1[r];                                              \
                  CMP s = right ? s2 : s1;                                                    \
                  at[r] = 2 * (1 + right) + 1 + !(v < s);                                     \
                }                                                                             \
              }                                                                               \
              for (int d = 2; d < levels; d++) {                                              \
                for (int64_t r = 0; r < mb; r++) {                                         \
                  int32_t i = at[r];                                                          \
                  at[r] = 2 * i + 1 + !(xt[(int64_t)pf[i] * BLOCK + r] < pt[i]);              \
                }                                                                             \
              }                                                                               \
            }                                                                                 \
            if (slot_base[t] >= 0 && leaves == NULL) {                                        \
              /* a tree perfect throughout: its leaves' values by slot, no node in between */ \
              const ACC *sv = slot_values + slot_base[t] - ((int64_t)(1 << levels) - 1) * width[t]; \
              ACC *a = acc + (int64_t)out_index[t] * BLOCK;                                   \
              if (width[t] == 1)                                                              \
                for (int64_t r = 0; r < mb; r++) a[r] += sv[at[r]];                           \
              else                                                                            \
                for (int32_t w = 0; w < width[t]; w++)                                        \
                  for (int64_t r = 0; r < mb; r++)                                            \
                    a[w * BLOCK + r] += sv[(int64_t)at[r] * width[t] + w];                    \
              continue;                                                                       \
            }                                                                                 \
            const int32_t *e = entry + entry_base[t] - ((1 << levels) - 1);                   \
            for (int64_t r = 0; r < mb; r++) at[r] = e[at[r]];                             \
            if (rest_levels[t] > 0) {                                                         \
              /* child pointers: only rows still moving step on (rows of leaf-wise trees   \
                 stop at very different depths), kept in order in `live` */                \
              int32_t live[BLOCK];                                                            \
              int64_t n_live = 0;                                                             \
              for (int64_t r = 0; r < mb; r++) live[n_live++] = (int32_t)r;                   \
              for (int d = 0; d < rest_levels[t] && n_live > 0; d++) {                        \
                int64_t kept = 0;                                                             \
                for (int64_t j = 0; j < n_live; j++) {                                        \
                  int32_t r = live[j], i = at[r];                                             \
                  int32_t next =                                                              \
                      child[2 * (int64_t)i + !(xt[(int64_t)nfeature[i] * BLOCK + r] < nthreshold[i])]; \
                  at[r] = next;                                                               \
                  live[kept] = r;                                                             \
                  kept += next != i;                                                          \
                }                                                                             \
                n_live = kept;                                                                \
              }                                                                               \
            }                                                                                 \
            if (leaves != NULL) {                                                             \
              for (int64_t r = 0; r < m; r++) leaves[(first + r) * n_trees + t] = at[r];      \
            }                                                                                 \
            if (out != NULL) {                                                                \
              ACC *a = acc + (int64_t)out_index[t] * BLOCK;                                   \
              for (int32_t w = 0; w < width[t]; w++)                                          \
                for (int64_t r = 0; r < mb; r++)                                           \
                  a[w * BLOCK + r] += values[value_base[at[r]] + w];                          \
            }                                                                                 \
          }                                                                                   \
          if (out != NULL)                                                                    \
            for (int64_t r = 0; r < m; r++)                                                   \
              for (int64_t k = 0; k < n_outputs; k++)                                         \
                out[(first + r) * n_outputs + k] = acc[k * BLOCK + r];                        \
        }                                                                                     \
      }                                                                                       \
      free(xt);                                                                               \
      free(acc);                                                                              \
    }                                                                                         \
    return failed;                                                                            \
  }

DEFINE_WALK(treecomp_walk_f32_f32, float, float)
DEFINE_WALK(treecomp_walk_f32_f64, float, double)
DEFINE_WALK(treecomp_walk_f64_f32, double, float)
DEFINE_WALK(treecomp_walk_f64_f64, double, double)

/* The version of this kernel's calling convention, checked by treecomp/kernel.py. */
int treecomp_kernel_abi(void) { return 4; }
