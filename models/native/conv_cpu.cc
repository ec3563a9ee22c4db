// A fused convolution block for XLA:CPU, called through the XLA FFI (models/fused_conv.py):
// avg_pool_2x2(act(conv(x, kernel) + bias)) for a SAME, stride-1 convolution, forward in one
// call and backward in another.
//
// Why: written in XLA (models/layers.py's PatchConv), the block makes one pass over memory
// per operation. The patch matrix of the CNN's second convolution (29 MB at batch 128) is
// written and read, its gradient (29 MB) written by one product and read back by the sum
// that folds it into the input gradient, and the first convolution's 12.8 MB output makes
// a pass each for the bias, the activation, the pooling and their gradients. Here the
// batch is cut into tiles of whole images, each small enough to stay in the core's L2
// cache, and a tile goes through every stage before the next: its patches, one sgemm
// (OpenBLAS), then bias, activation and pooling in one pass; backward, the pooling and
// activation gradients, the kernel gradient's product and the input gradient's product and
// fold. Only the pooled output, the activation's derivative and the gradients reach memory.
// Tiles are spread over threads (`task_threads`), each tile's products on its own thread.
// Backward, the kernel and bias gradients are summed over fixed runs of consecutive tiles,
// whichever thread takes a run, and the runs' sums added up in order at the end, so that a
// call's gradients do not depend on how its tiles fell to threads: the same inputs give
// the same bits on every call and on any number of threads.
//
// Layouts (row-major, float32): x (B, H, W, C); kernel (k, k, C, O), as nnx.Conv's; bias
// (O); y (B, H/2, W/2, O); slope (B, H, W, O), the activation's derivative at each
// pre-activation, saved by the forward pass so that the backward pass computes none. H and
// W must be even. Patches are laid out as models/layers.py's image_patches: one row per
// pixel, its k*k*C entries ordered (row offset, column offset, channel), the order of the
// kernel's rows; padding as XLA's SAME (an even kernel's extra row and column after).
//
// Under jax.vmap XLA calls the handlers once per member (vmap_method="sequential" in
// models/fused_conv.py), so every operand has exactly the ranks above; each handler checks
// them before touching memory (an error reaches Python as an exception).

#include "cpu_kernels.h"

namespace {

struct ConvShape {
  int64_t B, H, W, C, O, k;
  int64_t pixels() const { return H * W; }
  int64_t P() const { return k * k * C; }  // a patch's length: the kernel's rows
  int64_t pad() const { return (k - 1) / 2; }
};

// A tile's pixel rows: whole images, about this many rows (a conv2 tile of the MNIST CNN,
// 5 images of 14x14 with 288-entry patches, is 1.1 MB of patches).
constexpr int64_t kTileRows = 1024;

int64_t tile_images(const ConvShape& s) {
  return std::max<int64_t>(1, kTileRows / std::max<int64_t>(1, s.pixels()));
}

// ---- patches ---------------------------------------------------------------------------
// Two layouts. Several channels: one row per pixel, (pixels, P), as models/layers.py's
// image_patches. One channel (the first layer): transposed, one row per kernel offset,
// (P, pixels), each row a shifted copy of the image, copied a row of pixels at a time; the
// per-pixel layout would copy one float at a time there.

bool transposed(const ConvShape& s) { return s.C == 1; }

// The valid columns j of a row shifted by `shift` (source column j + shift): [j0, j1).
INLINE void valid_columns(int64_t W, int64_t shift, int64_t& j0, int64_t& j1) {
  j0 = std::min(W, std::max<int64_t>(0, -shift));
  j1 = std::max(j0, std::min(W, W - shift));
}

// The patches of `images` images starting at `x`, in `s`'s layout.
void im2col(const ConvShape& s, const float* x, int64_t images, float* patches) {
  const int64_t H = s.H, W = s.W, C = s.C, k = s.k, P = s.P(), pad = s.pad();
  const int64_t rows = images * H * W;
  for (int64_t n = 0; n < images; ++n) {
    const float* image = x + n * H * W * C;
    for (int64_t i = 0; i < H; ++i) {
      for (int64_t di = 0; di < k; ++di) {
        const int64_t si = i + di - pad;
        const bool inside = si >= 0 && si < H;
        for (int64_t dj = 0; dj < k; ++dj) {
          const int64_t offset = di * k + dj, shift = dj - pad;
          int64_t j0, j1;
          valid_columns(W, shift, j0, j1);
          if (!inside) j0 = j1 = 0;
          const float* src = image + (si * W + shift) * C;  // used for j in [j0, j1) only
          if (transposed(s)) {
            float* dst = patches + offset * rows + (n * H + i) * W;
            for (int64_t j = 0; j < j0; ++j) dst[j] = 0.0f;
            for (int64_t j = j0; j < j1; ++j) dst[j] = src[j];
            for (int64_t j = j1; j < W; ++j) dst[j] = 0.0f;
            continue;
          }
          float* dst = patches + (n * H + i) * W * P + offset * C;
          for (int64_t j = 0; j < j0; ++j) std::memset(dst + j * P, 0, C * sizeof(float));
          for (int64_t j = j0; j < j1; ++j) std::memcpy(dst + j * P, src + j * C, C * sizeof(float));
          for (int64_t j = j1; j < W; ++j) std::memset(dst + j * P, 0, C * sizeof(float));
        }
      }
    }
  }
}

// The transpose of im2col: adds each patch entry of `d_patches` to the input pixel it was
// copied from, into `d_x` (images, H, W, C), which it overwrites.
void col2im(const ConvShape& s, const float* d_patches, int64_t images, float* d_x) {
  const int64_t H = s.H, W = s.W, C = s.C, k = s.k, P = s.P(), pad = s.pad();
  const int64_t rows = images * H * W;
  std::memset(d_x, 0, images * H * W * C * sizeof(float));
  for (int64_t n = 0; n < images; ++n) {
    float* image = d_x + n * H * W * C;
    for (int64_t i = 0; i < H; ++i) {
      for (int64_t di = 0; di < k; ++di) {
        const int64_t si = i + di - pad;
        if (si < 0 || si >= H) continue;
        for (int64_t dj = 0; dj < k; ++dj) {
          const int64_t offset = di * k + dj, shift = dj - pad;
          int64_t j0, j1;
          valid_columns(W, shift, j0, j1);
          float* dst = image + (si * W + shift) * C;
          if (transposed(s)) {
            const float* src = d_patches + offset * rows + (n * H + i) * W;
#pragma omp simd
            for (int64_t j = j0; j < j1; ++j) dst[j] += src[j];
            continue;
          }
          const float* src = d_patches + (n * H + i) * W * P + offset * C;
          for (int64_t j = j0; j < j1; ++j) {
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) dst[j * C + c] += src[j * P + c];
          }
        }
      }
    }
  }
}

// z = patches @ kernel, (rows, O).
void patch_product(const Gemm& gemm, const ConvShape& s, const float* patches, int64_t rows,
                   const float* kernel, float* z) {
  const int64_t O = s.O, P = s.P();
  if (transposed(s))
    gemm(CblasTrans, CblasNoTrans, rows, O, P, patches, rows, kernel, O, 0.0f, z, O);
  else
    gemm(CblasNoTrans, CblasNoTrans, rows, O, P, patches, P, kernel, O, 0.0f, z, O);
}

// d_kernel += patches^T @ d_z, (P, O).
void add_kernel_gradient(const Gemm& gemm, const ConvShape& s, const float* patches,
                         int64_t rows, const float* d_z, float* d_kernel) {
  const int64_t O = s.O, P = s.P();
  if (transposed(s))
    gemm(CblasNoTrans, CblasNoTrans, P, O, rows, patches, rows, d_z, O, 1.0f, d_kernel, O);
  else
    gemm(CblasTrans, CblasNoTrans, P, O, rows, patches, P, d_z, O, 1.0f, d_kernel, O);
}

// d_patches = d_z @ kernel^T, in `s`'s layout.
void patch_gradient(const Gemm& gemm, const ConvShape& s, const float* d_z, int64_t rows,
                    const float* kernel, float* d_patches) {
  const int64_t O = s.O, P = s.P();
  if (transposed(s))
    gemm(CblasNoTrans, CblasTrans, P, rows, O, kernel, O, d_z, O, 0.0f, d_patches, rows);
  else
    gemm(CblasNoTrans, CblasTrans, rows, P, O, d_z, O, kernel, O, 0.0f, d_patches, P);
}

// One thread's scratch, sized for a whole tile.
struct Scratch {
  std::vector<float> patches, z, d_patches;
};

// A run of tiles' kernel and bias gradients, (P, O) and (O).
struct Sums {
  std::vector<float> d_kernel, d_bias;
};

// At most this many runs (each with its own sums): enough that threads take runs as they
// come free (a run is one tile where the batch has no more tiles than this), few enough
// that their sums stay small beside the tiles' products (32 x 73 KB for the MNIST CNN's
// second convolution).
constexpr int64_t kMaxRuns = 32;

// z = act(z + bias) in place, row by row; the activation's derivative into `slope` unless
// it is null.
template <class Act>
void activate(const ConvShape& s, int64_t rows, const float* bias, float* z, float* slope) {
  const int64_t O = s.O;
  for (int64_t r = 0; r < rows; ++r) {
    float* zr = z + r * O;
    float* sr = slope == nullptr ? nullptr : slope + r * O;
    float value, derivative;
    if (sr == nullptr) {
#pragma omp simd
      for (int64_t o = 0; o < O; ++o) {
        Act::eval(zr[o] + bias[o], value, derivative);
        zr[o] = value;
      }
    } else {
#pragma omp simd
      for (int64_t o = 0; o < O; ++o) {
        Act::eval(zr[o] + bias[o], value, derivative);
        zr[o] = value;
        sr[o] = derivative;
      }
    }
  }
}

// z = act'(z + bias) in place.
template <class Act>
void derive(const ConvShape& s, int64_t rows, const float* bias, float* z) {
  const int64_t O = s.O;
  for (int64_t r = 0; r < rows; ++r) {
    float* zr = z + r * O;
#pragma omp simd
    for (int64_t o = 0; o < O; ++o) {
      float value, derivative;
      Act::eval(zr[o] + bias[o], value, derivative);
      zr[o] = derivative;
    }
  }
}

// Forward for one tile of `n` images: patches, product, bias and activation, then the 2x2
// average into y. `slope` (the tile's slice) receives the derivatives, or is null when the
// backward pass recomputes them.
template <class Act>
void forward_tile(const Gemm& gemm, const ConvShape& s, Scratch& scratch, const float* x,
                  const float* kernel, const float* bias, int64_t n, float* y, float* slope) {
  const int64_t O = s.O, rows = n * s.pixels();
  float* z = scratch.z.data();
  im2col(s, x, n, scratch.patches.data());
  patch_product(gemm, s, scratch.patches.data(), rows, kernel, z);
  activate<Act>(s, rows, bias, z, slope);
  const int64_t H2 = s.H / 2, W2 = s.W / 2, W = s.W;
  for (int64_t m = 0; m < n * H2; ++m) {  // m: an output row (image, i2)
    const float* top = z + 2 * m * W * O;  // rows 2 i2 and 2 i2 + 1 of that image
    const float* bottom = top + W * O;
    for (int64_t j2 = 0; j2 < W2; ++j2) {
      float* out = y + (m * W2 + j2) * O;
      const float *a = top + 2 * j2 * O, *b = bottom + 2 * j2 * O;
#pragma omp simd
      for (int64_t o = 0; o < O; ++o) out[o] = 0.25f * (a[o] + a[O + o] + b[o] + b[O + o]);
    }
  }
}

// Backward for one tile: the pre-activation gradient (from the saved `slope`, or, where it
// is null, from the tile's pre-activations computed again), then the kernel and bias
// gradients added to its run's `sums`, and the input gradient when `d_x` is not null.
template <class Act>
void backward_tile(const Gemm& gemm, const ConvShape& s, Scratch& scratch, Sums& sums,
                   const float* x, const float* kernel, const float* bias, const float* slope,
                   const float* d_y, int64_t n, float* d_x) {
  const int64_t O = s.O, W = s.W, H2 = s.H / 2, W2 = s.W / 2;
  const int64_t rows = n * s.pixels();
  float* d_z = scratch.z.data();
  float* d_bias = sums.d_bias.data();
  im2col(s, x, n, scratch.patches.data());
  const float* derivative = slope;
  if (slope == nullptr) {  // d_z holds the derivatives until the loop below scales them
    patch_product(gemm, s, scratch.patches.data(), rows, kernel, d_z);
    derive<Act>(s, rows, bias, d_z);
    derivative = d_z;
  }
  for (int64_t r = 0; r < rows; ++r) {  // r = (image, i, j); its pooled cell (image, i/2, j/2)
    const int64_t image = r / s.pixels(), i = (r / W) % s.H, j = r % W;
    const float* g = d_y + ((image * H2 + i / 2) * W2 + j / 2) * O;
    const float* sr = derivative + r * O;  // d_z's own row where recomputed
    float* dr = d_z + r * O;
#pragma omp simd
    for (int64_t o = 0; o < O; ++o) {
      dr[o] = 0.25f * g[o] * sr[o];
      d_bias[o] += dr[o];
    }
  }
  add_kernel_gradient(gemm, s, scratch.patches.data(), rows, d_z, sums.d_kernel.data());
  if (d_x == nullptr) return;
  patch_gradient(gemm, s, d_z, rows, kernel, scratch.d_patches.data());
  col2im(s, scratch.d_patches.data(), n, d_x);
}

// ---- operand checks -------------------------------------------------------------------

ffi::Error expect(const char* operand, Dims got, std::initializer_list<int64_t> want) {
  if (got.size() == want.size() && std::equal(want.begin(), want.end(), got.begin()))
    return ffi::Error::Success();
  return ffi::Error::InvalidArgument(std::string(operand) + " must be " + shape_text(want) +
                                     ", got " + shape_text(got));
}

// The shape from x and the kernel, once both have the ranks and sizes the loops can take.
ffi::Error shape_of(F32 x, F32 kernel, ConvShape& s) {
  Dims d = x.dimensions(), k = kernel.dimensions();
  if (d.size() != 4)
    return ffi::Error::InvalidArgument("x must be (batch, height, width, channels), got " +
                                       shape_text(d));
  if (k.size() != 4 || k[0] != k[1] || k[0] < 1 || k[2] != d[3] || k[3] < 1)
    return ffi::Error::InvalidArgument("kernel must be (k, k, " + std::to_string(d[3]) +
                                       ", out), got " + shape_text(k));
  s = ConvShape{d[0], d[1], d[2], d[3], k[3], k[0]};
  if (s.H % 2 != 0 || s.W % 2 != 0 || s.C < 1)
    return ffi::Error::InvalidArgument("x must have even height and width and a channel, got " +
                                       shape_text(d));
  constexpr int64_t kBlasMax = std::numeric_limits<int>::max();
  if (s.P() > kBlasMax || s.O > kBlasMax || tile_images(s) * s.pixels() > kBlasMax)
    return ffi::Error::InvalidArgument("sizes exceed the 32-bit BLAS interface");
  return ffi::Error::Success();
}

int64_t tile_count(const ConvShape& s) {
  const int64_t per_tile = tile_images(s);
  return (s.B + per_tile - 1) / per_tile;
}

// Runs `run(first_image, images, gemm, scratch, run_index)` for every tile of the batch,
// the tiles cut into `runs` runs of consecutive tiles (at most one per tile): a thread
// takes a whole run and its tiles in order, with its own `scratch`.
template <class Run>
ffi::Error for_each_tile(const char* handler, ffi::ThreadPool& pool, const ConvShape& s,
                         bool input_gradient, int64_t runs, std::vector<Scratch>& scratch,
                         const Run& run) {
  const int64_t per_tile = tile_images(s), tiles = tile_count(s);
  const int64_t threads = task_threads(runs), rows = per_tile * s.pixels();
  try {
    scratch.resize(threads);
    for (Scratch& mine : scratch) {
      mine.patches.resize(rows * s.P());
      mine.z.resize(rows * s.O);
      mine.d_patches.resize(input_gradient ? rows * s.P() : 0);
    }
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal(std::string(handler) + ": out of memory for scratch");
  }
  return for_each_task(handler, pool, runs, threads,
                       [&](int64_t index, int64_t thread, const Gemm& gemm) {
                         const Range part{index * tiles / runs, (index + 1) * tiles / runs};
                         for (int64_t tile = part.begin; tile < part.end; ++tile) {
                           const int64_t first = tile * per_tile;
                           run(first, std::min(per_tile, s.B - first), gemm, scratch[thread],
                               index);
                         }
                       });
}

// A result or operand declared (0,) stands for one left out: `slope` when the backward pass
// computes the derivatives again, `d_x` when no input gradient is wanted (the first layer's
// input is the data).
ffi::Error expect_or_empty(const char* operand, Dims got, std::initializer_list<int64_t> want,
                           bool& present) {
  present = !(got.size() == 1 && got[0] == 0);
  return present ? expect(operand, got, want) : ffi::Error::Success();
}

ffi::Error check_activation(int64_t activation) {
  if (activation >= 0 && activation < kActivations) return ffi::Error::Success();
  return ffi::Error::InvalidArgument("unknown activation id " + std::to_string(activation));
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, F32 x, F32 kernel, F32 bias,
                       int64_t activation, F32Out y, F32Out slope) {
  constexpr const char* kName = "bench_conv_block_forward";
  ConvShape s{};
  bool save_slope = false;
  if (auto error = shape_of(x, kernel, s); error.failure()) return in(kName, error);
  if (auto error = first_error(
          {expect("bias", bias.dimensions(), {s.O}),
           expect("y", y->dimensions(), {s.B, s.H / 2, s.W / 2, s.O}),
           expect_or_empty("slope", slope->dimensions(), {s.B, s.H, s.W, s.O}, save_slope),
           check_activation(activation)});
      error.failure())
    return in(kName, error);
  if (s.B == 0) return ffi::Error::Success();
  std::vector<Scratch> scratch;
  ffi::Error result = ffi::Error::Success();
  with_activation(activation, [&](auto act) {
    using Act = decltype(act);
    auto run = [&](int64_t first, int64_t n, const Gemm& gemm, Scratch& mine, int64_t) {
      forward_tile<Act>(gemm, s, mine, x.typed_data() + first * s.pixels() * s.C,
                        kernel.typed_data(), bias.typed_data(), n,
                        y->typed_data() + first * (s.pixels() / 4) * s.O,
                        save_slope ? slope->typed_data() + first * s.pixels() * s.O : nullptr);
    };
    result = for_each_tile(kName, pool, s, false, tile_count(s), scratch, run);
  });
  return result;
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, F32 x, F32 kernel, F32 bias, F32 slope,
                        F32 d_y, int64_t activation, F32Out d_x, F32Out d_kernel,
                        F32Out d_bias) {
  constexpr const char* kName = "bench_conv_block_backward";
  ConvShape s{};
  bool saved_slope = false, input_gradient = false;
  if (auto error = shape_of(x, kernel, s); error.failure()) return in(kName, error);
  if (auto error = first_error(
          {expect("bias", bias.dimensions(), {s.O}),
           expect_or_empty("slope", slope.dimensions(), {s.B, s.H, s.W, s.O}, saved_slope),
           expect("d_y", d_y.dimensions(), {s.B, s.H / 2, s.W / 2, s.O}),
           expect_or_empty("d_x", d_x->dimensions(), {s.B, s.H, s.W, s.C}, input_gradient),
           expect("d_kernel", d_kernel->dimensions(), {s.k, s.k, s.C, s.O}),
           expect("d_bias", d_bias->dimensions(), {s.O}), check_activation(activation)});
      error.failure())
    return in(kName, error);
  // The runs' sums (none for an empty batch: the gradients are zero).
  const int64_t runs = std::min(tile_count(s), kMaxRuns);
  std::vector<Sums> sums;
  try {
    sums.resize(runs);
    for (Sums& run : sums) {
      run.d_kernel.assign(s.P() * s.O, 0.0f);
      run.d_bias.assign(s.O, 0.0f);
    }
  } catch (const std::bad_alloc&) {
    return ffi::Error::Internal(std::string(kName) + ": out of memory for scratch");
  }
  std::vector<Scratch> scratch;
  ffi::Error result = ffi::Error::Success();
  if (runs > 0) {
    with_activation(activation, [&](auto act) {
      using Act = decltype(act);
      auto run = [&](int64_t first, int64_t n, const Gemm& gemm, Scratch& mine,
                     int64_t index) {
        backward_tile<Act>(
            gemm, s, mine, sums[index], x.typed_data() + first * s.pixels() * s.C,
            kernel.typed_data(), bias.typed_data(),
            saved_slope ? slope.typed_data() + first * s.pixels() * s.O : nullptr,
            d_y.typed_data() + first * (s.pixels() / 4) * s.O, n,
            input_gradient ? d_x->typed_data() + first * s.pixels() * s.C : nullptr);
      };
      result = for_each_tile(kName, pool, s, input_gradient, runs, scratch, run);
    });
  }
  if (result.failure()) return result;
  float* dk = d_kernel->typed_data();  // the runs' sums added up, in order
  float* db = d_bias->typed_data();
  std::memset(dk, 0, s.P() * s.O * sizeof(float));
  std::memset(db, 0, s.O * sizeof(float));
  for (const Sums& run : sums) {
    for (int64_t e = 0; e < s.P() * s.O; ++e) dk[e] += run.d_kernel[e];
    for (int64_t o = 0; o < s.O; ++o) db[o] += run.d_bias[o];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchConvBlockForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // x
                                  .Arg<F32>()  // kernel
                                  .Arg<F32>()  // bias
                                  .Attr<int64_t>("activation")
                                  .Ret<F32>()  // y
                                  .Ret<F32>());  // slope, or (0,)

XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchConvBlockBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // x
                                  .Arg<F32>()  // kernel
                                  .Arg<F32>()  // bias
                                  .Arg<F32>()  // slope, or (0,)
                                  .Arg<F32>()  // d_y
                                  .Attr<int64_t>("activation")
                                  .Ret<F32>()  // d_x, or (0,)
                                  .Ret<F32>()  // d_kernel
                                  .Ret<F32>());  // d_bias
