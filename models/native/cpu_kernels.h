// What bench's CPU kernels (lstm_cpu.cc, cells_cpu.cc, conv_cpu.cc) share: vectorisable
// float math, the activations with their derivatives, OpenBLAS products, operand checks and
// spreading a call's tasks over XLA's threads. Everything is inside an anonymous namespace:
// each kernel's translation unit gets its own copy, and nothing here is exported from the
// libraries.

#pragma once

#include <cblas.h>  // scipy-openblas32: its symbols carry the prefix scipy_

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <initializer_list>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

// Weak: an OpenBLAS without it (older than the batch interface) leaves it null, and work
// that would be spread over threads then runs on one (`blas_threads`).
extern "C" __attribute__((weak)) void scipy_cblas_sgemm_batch_strided(
    OPENBLAS_CONST enum CBLAS_ORDER, OPENBLAS_CONST enum CBLAS_TRANSPOSE,
    OPENBLAS_CONST enum CBLAS_TRANSPOSE, OPENBLAS_CONST blasint, OPENBLAS_CONST blasint,
    OPENBLAS_CONST blasint, OPENBLAS_CONST float, OPENBLAS_CONST float*, OPENBLAS_CONST blasint,
    OPENBLAS_CONST blasint, OPENBLAS_CONST float*, OPENBLAS_CONST blasint, OPENBLAS_CONST blasint,
    OPENBLAS_CONST float, float*, OPENBLAS_CONST blasint, OPENBLAS_CONST blasint,
    OPENBLAS_CONST blasint);

namespace {

#define INLINE inline __attribute__((always_inline))

// ---- vectorisable float math (GCC turns each loop below into AVX code) --------------
// libm's expf/logf calls would keep the loops scalar. These are Cephes' single-precision
// polynomials (about 2 ulp); every function lets NaN through, so a diverging trial still
// ends with a NaN loss.

INLINE float as_float(uint32_t bits) { float f; std::memcpy(&f, &bits, 4); return f; }
INLINE uint32_t as_bits(float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; }

INLINE float fast_exp(float x) {
  float a = x == x ? x : 0.0f;  // NaN is restored at the end
  a = a > 88.3762626647949f ? 88.3762626647949f : a;
  a = a < -87.3365447504f ? -87.3365447504f : a;
  // round(a / ln 2) by the 1.5 * 2^23 trick: std::floor stays scalar unless -fno-trapping-math
  float n = (a * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = a - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  float scale = as_float(static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23);
  return x == x ? p * scale : x;
}

// log(v) for v >= 1 (all that softplus needs).
INLINE float fast_log_ge1(float v) {
  uint32_t bits = as_bits(v);
  float e = static_cast<float>(static_cast<int32_t>((bits >> 23) & 0xff) - 126);
  float m = as_float((bits & 0x807fffffu) | 0x3f000000u);  // v = m * 2^e, m in [0.5, 1)
  bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z - 2.12194440e-4f * e - 0.5f * z;
  return m + y + 0.693359375f * e;
}

INLINE float sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

INLINE float fast_tanh(float x) {
  float z = x * x;  // small |x|: odd polynomial, accurate near 0
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  float near_zero = p * z * x + x;
  float far = 1.0f - 2.0f / (fast_exp(2.0f * x) + 1.0f);
  return std::fabs(x) < 0.625f ? near_zero : far;
}

// ---- activations: value and derivative, as jax.nn defines them ---------------------
// `with_activation` maps models/native_kernels.py's ACTIVATION_IDS to these.

struct Linear { static INLINE void eval(float x, float& y, float& d) { y = x; d = 1.0f; } };
struct Relu {  // jax.nn.relu: max(x, 0), gradient 0 at 0
  static INLINE void eval(float x, float& y, float& d) { y = x < 0.0f ? 0.0f : x; d = x > 0.0f ? 1.0f : 0.0f; }
};
struct Sigmoid {
  static INLINE void eval(float x, float& y, float& d) { y = sigmoid(x); d = y * (1.0f - y); }
};
struct Tanh {
  static INLINE void eval(float x, float& y, float& d) { y = fast_tanh(x); d = 1.0f - y * y; }
};
struct Gelu {  // jax.nn.gelu(approximate=True)
  static INLINE void eval(float x, float& y, float& d) {
    const float k = 0.7978845608028654f, c = 0.044715f;
    float t = fast_tanh(k * (x + c * x * x * x));
    y = 0.5f * x * (1.0f + t);
    d = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * c * x * x);
  }
};
struct Silu {
  static INLINE void eval(float x, float& y, float& d) {
    float s = sigmoid(x);
    y = x * s;
    d = s * (1.0f + x * (1.0f - s));
  }
};
template <int kSelu>
struct EluLike {  // elu (alpha 1) and selu
  static INLINE void eval(float x, float& y, float& d) {
    const float scale = kSelu ? 1.0507009873554804934f : 1.0f;
    const float alpha = kSelu ? 1.6732632423543772848f : 1.0f;
    float e = fast_exp(x > 0.0f ? 0.0f : x);
    y = scale * (x > 0.0f ? x : alpha * (e - 1.0f));
    d = scale * (x > 0.0f ? 1.0f : alpha * e);
  }
};
struct LeakyRelu {  // jax.nn.leaky_relu, negative_slope 0.01
  static INLINE void eval(float x, float& y, float& d) {
    y = x >= 0.0f ? x : 0.01f * x;
    d = x >= 0.0f ? 1.0f : 0.01f;
  }
};
struct Softplus {  // log(1 + e^x) = max(x, 0) + log(1 + e^-|x|)
  static INLINE void eval(float x, float& y, float& d) {
    y = (x > 0.0f ? x : 0.0f) + fast_log_ge1(1.0f + fast_exp(-std::fabs(x)));
    y = x == x ? y : x;
    d = sigmoid(x);
  }
};
struct Relu6 {  // jax.nn.relu6: gradient 0 at 0 and at 6
  static INLINE void eval(float x, float& y, float& d) {
    y = x < 0.0f ? 0.0f : (x > 6.0f ? 6.0f : x);
    d = ((x > 0.0f) & (x < 6.0f)) ? 1.0f : 0.0f;
  }
};
struct Mish {  // x tanh(softplus(x)); with u = e^x, tanh(softplus(x)) = (u^2 + 2u) / (u^2 + 2u + 2)
  static INLINE void eval(float x, float& y, float& d) {
    float u = fast_exp(x < 20.0f ? x : 20.0f);
    float n = u * u + 2.0f * u;
    float t = x < 20.0f ? n / (n + 2.0f) : 1.0f;
    t = x == x ? t : x;
    y = x * t;
    d = t + x * (1.0f - t * t) * sigmoid(x);
  }
};

constexpr int64_t kActivations = 12;  // the cases of with_activation

// Calls `f(Act{})` with the activation of models/native_kernels.py's ACTIVATION_IDS `id`
// (checked by the caller against kActivations first).
template <class F>
void with_activation(int64_t id, F&& f) {
  switch (id) {
    case 0: f(Linear{}); return;
    case 1: f(Relu{}); return;
    case 2: f(Sigmoid{}); return;
    case 3: f(Tanh{}); return;
    case 4: f(Gelu{}); return;
    case 5: f(Silu{}); return;
    case 6: f(EluLike<0>{}); return;
    case 7: f(LeakyRelu{}); return;
    case 8: f(Softplus{}); return;
    case 9: f(EluLike<1>{}); return;
    case 10: f(Relu6{}); return;
    case 11: f(Mish{}); return;
    default: return;
  }
}

// ---- matrix products ------------------------------------------------------------------

// C = op(A) op(B) + beta C, row-major (sizes checked by check_sizes to fit the 32-bit BLAS).
struct Gemm {
  // On the calling thread only, for a thread that runs one task (a member, a slice, a
  // tile) while others run the rest: as a batch of one product. OpenBLAS computes each
  // product of a batch on a single thread and a batch of one on the caller's
  // (driver/level3/gemm_batch_thread.c), whereas plain sgemms from several threads at once
  // would queue for OpenBLAS's threads. False: a plain sgemm, split over OpenBLAS's threads.
  bool alone = false;

  void operator()(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t m, int64_t n, int64_t k,
                  const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                  int64_t ldc) const {
    // No element of C: nothing to compute, and not left to OpenBLAS's batch code, whose
    // source skips filling in such a product's entry but still runs the batch.
    if (m == 0 || n == 0) return;
    if (alone)
      scipy_cblas_sgemm_batch_strided(CblasRowMajor, ta, tb, m, n, k, 1.0f, a, lda, 0, b, ldb, 0,
                                      beta, c, ldc, 0, 1);
    else
      scipy_cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
  }
};

using F32 = ffi::Buffer<ffi::F32>;
using F32Out = ffi::ResultBuffer<ffi::F32>;
using Dims = ffi::Span<const int64_t>;

// [begin, end): a part of a range of rows or columns.
struct Range {
  int64_t begin, end;
  int64_t size() const { return end - begin; }
};

// Part `i` of `parts` near-equal parts of `n` items, inner boundaries on multiples of `align`.
inline Range part(int64_t i, int64_t parts, int64_t n, int64_t align = 1) {
  auto edge = [&](int64_t k) {
    return k == parts ? n : std::min(n, n * k / parts / align * align);
  };
  return Range{edge(i), edge(i + 1)};
}

// Columns `cols` of d kernel = [h_{t-1}, x_t]^T d z summed over all `rows` (steps x batch),
// as one product; and of d bias, the sum of d z's rows. hx is (rows, K), d_z (rows, G);
// threads that take disjoint columns need no sum of their parts.
inline void kernel_gradient(const Gemm& gemm, int64_t rows, int64_t K, int64_t G,
                            const float* hx, const float* d_z, float* d_kernel, float* d_bias,
                            Range cols) {
  const int64_t c0 = cols.begin, n = cols.size();
  if (n <= 0) return;
  if (rows == 0) {  // nothing to sum; not left to how a BLAS treats an empty inner dimension
    for (int64_t k = 0; k < K; ++k) std::memset(d_kernel + k * G + c0, 0, n * sizeof(float));
  } else {
    gemm(CblasTrans, CblasNoTrans, K, n, rows, hx, K, d_z + c0, G, 0.0f, d_kernel + c0, G);
  }
  std::memset(d_bias + c0, 0, n * sizeof(float));
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = d_z + r * G + c0;
    float* out = d_bias + c0;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) out[j] += row[j];
  }
}

// ---- operand checks -------------------------------------------------------------------

template <class Ints>
std::string shape_text(const Ints& dims) {
  std::string text = "(";
  for (int64_t n : dims) text += (text.size() > 1 ? ", " : "") + std::to_string(n);
  return text + ")";
}

// The first failed check, or success.
inline ffi::Error first_error(std::initializer_list<ffi::Error> checks) {
  for (const ffi::Error& check : checks)
    if (check.failure()) return check;
  return ffi::Error::Success();
}

// `error` with the handler's name in front, so that Python's exception says which call failed.
inline ffi::Error in(const char* handler, const ffi::Error& error) {
  if (error.success()) return error;
  return ffi::Error::InvalidArgument(std::string(handler) + ": " + error.message());
}

inline void copy_floats(float* to, const float* from, int64_t count) {
  if (count > 0) std::memcpy(to, from, count * sizeof(float));  // an empty buffer may be null
}


// ---- populations (leading dimensions under jax.vmap) -------------------------------

// The population's leading dimensions (none outside jax.vmap), shared by every operand and
// result of one call, and the number of members they hold.
struct Population {
  std::vector<int64_t> dims;
  int64_t members = 1;

  // The leading dimensions of `operand`, which has `rank` dimensions per member.
  static Population of(Dims operand, size_t rank) {
    Population p;
    p.dims.assign(operand.begin(), operand.end() - rank);  // callers check size() >= rank
    for (int64_t n : p.dims) p.members = n == 0 || p.members == 0 ? 0 : p.members * n;
    return p;
  }

  // `per_member` (names of a member's dimensions) behind the leading dimensions, for errors.
  std::string text(const char* per_member) const {
    std::string lead = shape_text(dims);
    lead.pop_back();
    return lead + (dims.empty() ? "" : ", ") + per_member + ")";
  }
};

// An error naming `operand` unless its dimensions are the population's, then `want`.
inline ffi::Error expect(const char* operand, Dims got, const Population& p,
                  std::initializer_list<int64_t> want) {
  std::vector<int64_t> full(p.dims);
  full.insert(full.end(), want.begin(), want.end());
  if (got.size() == full.size() && std::equal(full.begin(), full.end(), got.begin()))
    return ffi::Error::Success();
  return ffi::Error::InvalidArgument(std::string(operand) + " must be " + shape_text(full) +
                                     ", got " + shape_text(got));
}

// An error naming `operand` unless it has the population's dimensions and `rank` more.
inline ffi::Error expect_rank(const char* operand, Dims got, const Population& p, size_t rank,
                       const char* per_member) {
  if (got.size() == p.dims.size() + rank) return ffi::Error::Success();
  return ffi::Error::InvalidArgument(std::string(operand) + " must be " + p.text(per_member) +
                                     ", got " + shape_text(got));
}


// ---- threads ----------------------------------------------------------------------------

// Runs `run(task, thread, gemm)` for tasks 0 .. tasks - 1 on up to `threads` threads: the
// calling thread (thread 0) and helpers 1 .. threads - 1 scheduled on XLA's own intra-op
// thread pool; each takes the next task not yet taken until none is left. Tasks write
// disjoint slices, or per-thread scratch indexed by `thread`; never a sum per thread, since
// which tasks a thread takes changes from call to call, and the sums' rounding with it.
//
// Why XLA's pool rather than threads of our own: while a kernel runs, XLA's idle workers
// keep spinning for a while before they sleep, and a thread of ours would share a core with
// one of them (docs/measurements.md, "The kernels on XLA's own threads"). A helper of the
// pool is that worker, put to use.
//
// The calling thread takes tasks too and, once none is left, waits only for those a helper
// has begun; a helper that starts late finds none and returns touching nothing but `Shared`,
// which it co-owns. So a pool busy elsewhere costs time, never a deadlock, and the call
// never waits on a helper that has not started. An exception (std::bad_alloc from a task's
// scratch) must not leave a thread, which would end the process: it becomes the handler's
// error once every task is done; the tasks after it are skipped.
template <class Run>
ffi::Error for_each_task(const char* handler, ffi::ThreadPool& pool, int64_t tasks,
                         int64_t threads, const Run& run) {
  struct Shared {
    std::atomic<int64_t> next{0}, finished{0};
    std::atomic<bool> failed{false};
    int64_t tasks = 0;
  };
  // No more helpers than the pool has other workers (the calling thread is one of them).
  threads = std::max<int64_t>(1, std::min(threads, pool.num_threads()));
  auto shared = std::make_shared<Shared>();
  shared->tasks = tasks;
  std::vector<std::exception_ptr> errors(threads);  // one slot per thread: no lock
  const Gemm gemm{threads > 1};
  auto work = [shared, &run, &errors, gemm](int64_t thread) noexcept {
    for (int64_t task; (task = shared->next.fetch_add(1)) < shared->tasks;) {
      if (!shared->failed.load()) {
        try {
          run(task, thread, gemm);
        } catch (...) {
          errors[thread] = std::current_exception();
          shared->failed.store(true);
        }
      }
      shared->finished.fetch_add(1);  // the last access to anything but `shared`
    }
  };
  for (int64_t helper = 1; helper < threads; ++helper) {
    try {
      pool.Schedule([work, helper] { work(helper); });
    } catch (...) {  // no memory to schedule more: this thread takes the remaining tasks
      break;
    }
  }
  work(0);
  while (shared->finished.load() < tasks) std::this_thread::yield();
  for (const std::exception_ptr& error : errors) {
    if (!error) continue;
    std::string what = "unknown exception";
    try {
      std::rethrow_exception(error);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    return ffi::Error::Internal(std::string(handler) + ": " + what);
  }
  return ffi::Error::Success();
}

// ---- how a call's work is spread over threads -------------------------------------------

// The threads a call may use: OpenBLAS's thread count, which models/native_kernels.py caps
// to the cores XLA runs on; one where a product could not be kept on its thread (an
// OpenBLAS without the batch interface), its products then on OpenBLAS's threads.
inline int64_t blas_threads() {
  if (scipy_cblas_sgemm_batch_strided == nullptr) return 1;
  return std::max(1, scipy_openblas_get_num_threads());
}

// Threads for `tasks` independent tasks, each with its products on its own thread: one per
// task up to `blas_threads`. Several tasks on several threads measured faster than one
// task at a time with multithreaded products (docs/measurements.md, "Populations" and the
// CNN's kernel): a task's products are small, and its elementwise passes use one thread.
inline int64_t task_threads(int64_t tasks) {
  return tasks < 2 ? 1 : std::min(tasks, blas_threads());
}

// The row slices each member of a population of `members` is cut into, for a recurrent
// kernel whose batch has `rows` rows: rows are independent through the whole sequence, so a
// slice of them runs its own time loop. Enough slices that every thread gets a task when
// the members alone are fewer than the threads, none thinner than kMinSliceRows.
constexpr int64_t kMinSliceRows = 16;
inline int64_t slices_per_member(int64_t members, int64_t rows) {
  const int64_t threads = blas_threads();
  if (members < 1 || members >= threads) return 1;
  const int64_t want = (threads + members - 1) / members;
  return std::max<int64_t>(1, std::min(want, rows / kMinSliceRows));
}

// Runs `run(member, slice, gemm)` for every slice 0 .. slices - 1 of every member
// 0 .. members - 1, spread over `task_threads` threads.
template <class Run>
ffi::Error for_each_slice(const char* handler, ffi::ThreadPool& pool, int64_t members,
                          int64_t slices, const Run& run) {
  const int64_t tasks = members * slices;
  return for_each_task(handler, pool, tasks, task_threads(tasks),
                       [&](int64_t task, int64_t, const Gemm& gemm) {
                         run(task / slices, task % slices, gemm);
                       });
}

// `kernel_gradient` for every member of a recurrent kernel's backward pass, each member's
// columns cut into `slices` blocks (as its time loop was cut into row slices, so that each
// thread again has a task). Operands are the members' stacked (rows, K), (rows, G), (K, G)
// and (G) arrays.
inline ffi::Error kernel_gradients(const char* handler, ffi::ThreadPool& pool,
                                   int64_t members, int64_t slices, int64_t rows, int64_t K,
                                   int64_t G, const float* hx, const float* d_z,
                                   float* d_kernel, float* d_bias) {
  constexpr int64_t kColumnAlign = 16;  // a block starts on a 64-byte boundary of its row
  return for_each_slice(handler, pool, members, slices,
                        [&](int64_t m, int64_t i, const Gemm& gemm) {
                          kernel_gradient(gemm, rows, K, G, hx + m * rows * K,
                                          d_z + m * rows * G, d_kernel + m * K * G,
                                          d_bias + m * G, part(i, slices, G, kColumnAlign));
                        });
}

}  // namespace
