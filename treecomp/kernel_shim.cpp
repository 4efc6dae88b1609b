// treecomp's kernel as an AOTInductor C shim: the function a compiled package calls for the
// custom operator treecomp::treecomp_forest_sums (treecomp/kernel_op.py), under the name
// AOTInductor gives such calls (aoti_torch_cpu_<operator>). Built with kernel.c into one
// static archive per machine, which AOTInductor links into the package: a package then
// needs only torch to load and run.
//
// The rows are split over OpenMP threads (the package's, as torch.set_num_threads sets
// them) as kernel.c's treecomp_slices splits any call's; each slice is one call of the
// kernel, which adds every row's trees in order whatever the slicing.
#include <cstdint>
#include <vector>

#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#ifdef _OPENMP
#include <omp.h>
#endif

extern "C" int treecomp_blob_walk(const void *blob, int64_t bytes, const void *x, int64_t n,
                                  void *out);
extern "C" int treecomp_blob_shape(const void *blob, int64_t bytes, int64_t *features,
                                   int64_t *outputs, int64_t *kinds);
extern "C" int64_t treecomp_slices(int64_t n, int64_t threads, int64_t *bounds);

namespace {

bool is_double(AtenTensorHandle t) {
  int32_t dtype = 0;
  aoti_torch_get_dtype(t, &dtype);
  return dtype == aoti_torch_dtype_float64();
}
}  // namespace

// x: the rows (n, features), contiguous, in the forest's compare type; tables: its kernel
// tables (one uint8 tensor); like: any tensor of one value per output, in the accumulation
// type. Returns the sums (n, outputs), each from its base score, trees added in order.
extern "C" AOTITorchError aoti_torch_cpu_treecomp_forest_sums(AtenTensorHandle x,
                                                              AtenTensorHandle tables,
                                                              AtenTensorHandle like,
                                                              AtenTensorHandle *ret) {
  int64_t dim = 0, bytes = 0, outputs = 0, features = 0, blob_outputs = 0, kinds = 0;
  int64_t *sizes = nullptr, *strides = nullptr;
  void *rows = nullptr, *blob = nullptr, *sums = nullptr;
  if (aoti_torch_get_dim(x, &dim) || dim != 2 || aoti_torch_get_sizes(x, &sizes) ||
      aoti_torch_get_strides(x, &strides) || aoti_torch_get_numel(tables, &bytes) ||
      aoti_torch_get_numel(like, &outputs) || aoti_torch_get_data_ptr(tables, &blob) ||
      aoti_torch_get_data_ptr(x, &rows))
    return AOTI_TORCH_FAILURE;
  const int64_t n = sizes[0], width = sizes[1];
  // The tables' own shape and types must be the call's: a package only ever passes its own.
  if (treecomp_blob_shape(blob, bytes, &features, &blob_outputs, &kinds) || features != width ||
      blob_outputs != outputs || ((kinds >> 1) & 1) != is_double(x) || (kinds & 1) != is_double(like) ||
      (n > 1 && (strides[1] != 1 || strides[0] != width)))
    return AOTI_TORCH_FAILURE;
  int32_t sum_type = 0;
  aoti_torch_get_dtype(like, &sum_type);
  int64_t out_sizes[2] = {n, outputs}, out_strides[2] = {outputs, 1};
  if (aoti_torch_empty_strided(2, out_sizes, out_strides, sum_type, aoti_torch_device_type_cpu(),
                               0, ret) ||
      aoti_torch_get_data_ptr(*ret, &sums))
    return AOTI_TORCH_FAILURE;
  const int64_t row_bytes = width * (is_double(x) ? 8 : 4);
  const int64_t sum_bytes = outputs * (is_double(like) ? 8 : 4);
  int64_t threads = 1;
#ifdef _OPENMP
  threads = omp_get_max_threads();
#endif
  std::vector<int64_t> bounds(threads + 1);
  const int64_t slices = treecomp_slices(n, threads, bounds.data());
  int failed = 0;
#pragma omp parallel for num_threads(slices) reduction(max : failed) if (slices > 1)
  for (int64_t i = 0; i < slices; i++) {
    const int64_t first = bounds[i], last = bounds[i + 1];
    int done = treecomp_blob_walk(blob, bytes, (const char *)rows + first * row_bytes, last - first,
                                  (char *)sums + first * sum_bytes);
    failed = done > failed ? done : failed;
  }
  if (failed) {
    aoti_torch_delete_tensor_object(*ret);
    *ret = nullptr;
    return AOTI_TORCH_FAILURE;
  }
  return AOTI_TORCH_SUCCESS;
}
