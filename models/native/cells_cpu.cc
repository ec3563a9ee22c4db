// The GRU and simple cells' time loops for XLA:CPU, called through the XLA FFI
// (models/fused_cells.py): lstm_cpu.cc's treatment for the two cells whose carry is h alone.
//
// Why: as for the LSTM, XLA:CPU runs each time step as many small kernels; here the whole
// forward pass is one call and the whole backward pass another, per step one sgemm
// (OpenBLAS) and one fused elementwise pass. The equations are models/recurrent.py's
// gru_update and simple_update (nnx.GRUCell's and nnx.SimpleCell's, with `activation` in
// place of tanh on the candidate or the state), over the step kernels it builds:
//   GRU: z = [h, x] @ kernel + bias in four blocks r, u (the update gate), xn, hn (the
//        candidate's x and h products apart: models/recurrent.py's gru_blocks);
//        n = act(xn + sigmoid(r) hn), h = (1 - sigmoid(u)) n + sigmoid(u) h_prev.
//   simple: one block; h = act(z).
//
// Layouts (row-major, float32): xs (T, B, F); kernel (H + F, G), rows for h first, G = 4H
// (GRU) or H (simple); bias (G). Residuals for the backward pass: hx (T, B, H + F), the
// step's [h_{t-1}, x_t]; coefs (T, B, C H), the factors of `GruCoef` or `SimpleCoef`.
// Under jax.vmap (vmap_method="broadcast_all") every operand and result has the
// population's leading dimensions in front, as in lstm_cpu.cc, and the work is spread over
// threads the same way: members, or row slices of a member's batch where the members are
// fewer than the threads, then the kernel gradient in column blocks. Each handler checks
// every operand's shape before touching memory (an error reaches Python as an exception).

#include "cpu_kernels.h"

namespace {

struct Shape {
  int64_t T, B, F, H, G;  // G: the step product's columns
  int64_t K() const { return H + F; }
};

// The factors the GRU's backward pass needs, per step and element (planes of H floats per
// batch row), so that it computes no activation:
enum GruCoef { kGruKeep, kGruDu, kGruDa, kGruR, kGruDr, kGruCoefs };
//   keep = s(u)     d u = dh (h_prev - n) s(u)(1 - s(u))     d a = dh (1 - s(u)) act'(a)
//   d xn = d a      d hn = d a s(r)      d r = d a hn s(r)(1 - s(r))
//   dh_prev = dh keep + d z @ kernel[:H]^T,   with a = xn + s(r) hn
struct Gru {
  static constexpr int64_t kGates = 4, kCoefs = kGruCoefs;

  template <class Act>
  static INLINE void forward(const float* z, const float* h_prev, float* h, float* k,
                             int64_t H) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      float r = sigmoid(z[j]), u = sigmoid(z[H + j]), hn = z[3 * H + j];
      float n, dn;
      Act::eval(z[2 * H + j] + r * hn, n, dn);
      float hp = h_prev[j];
      h[j] = (1.0f - u) * n + u * hp;
      k[kGruKeep * H + j] = u;
      k[kGruDu * H + j] = (hp - n) * u * (1.0f - u);
      k[kGruDa * H + j] = (1.0f - u) * dn;
      k[kGruR * H + j] = r;
      k[kGruDr * H + j] = hn * r * (1.0f - r);
    }
  }

  // d_z from dh; dh becomes the part of dh_prev that does not go through the product.
  static INLINE void backward(const float* k, float* dh, float* d_z, int64_t H) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      float g = dh[j];
      float da = g * k[kGruDa * H + j];
      d_z[j] = da * k[kGruDr * H + j];
      d_z[H + j] = g * k[kGruDu * H + j];
      d_z[2 * H + j] = da;
      d_z[3 * H + j] = da * k[kGruR * H + j];
      dh[j] = g * k[kGruKeep * H + j];
    }
  }
  static constexpr bool kDirectPath = true;  // h_prev reaches h without the product
};

enum SimpleCoef { kSimpleSlope, kSimpleCoefs };  // act'(z); d z = dh act'(z)
struct Simple {
  static constexpr int64_t kGates = 1, kCoefs = kSimpleCoefs;

  template <class Act>
  static INLINE void forward(const float* z, const float*, float* h, float* k, int64_t H) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) Act::eval(z[j], h[j], k[kSimpleSlope * H + j]);
  }

  static INLINE void backward(const float* k, float* dh, float* d_z, int64_t H) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) d_z[j] = dh[j] * k[kSimpleSlope * H + j];
  }
  static constexpr bool kDirectPath = false;
};

// The batch rows `rows` of every step (all of them, or a slice that runs on its own thread).
template <class Cell, class Act>
void forward(const Gemm& gemm, const Shape& s, Range rows, const float* xs, const float* kernel,
             const float* bias, const float* h0, float* hx, float* coefs, float* h_last) {
  const int64_t B = s.B, H = s.H, F = s.F, K = s.K(), G = s.G, r0 = rows.begin;
  std::vector<float> z(rows.size() * G);
  for (int64_t r = r0; r < rows.end; ++r) std::memcpy(hx + r * K, h0 + r * H, H * sizeof(float));
  for (int64_t t = 0; t < s.T; ++t) {
    float* hx_t = hx + t * B * K;
    for (int64_t r = r0; r < rows.end; ++r) {
      std::memcpy(hx_t + r * K + H, xs + (t * B + r) * F, F * sizeof(float));
      std::memcpy(z.data() + (r - r0) * G, bias, G * sizeof(float));
    }
    gemm(CblasNoTrans, CblasNoTrans, rows.size(), G, K, hx_t + r0 * K, K, kernel, G, 1.0f,
         z.data(), G);
    const bool last = t == s.T - 1;
    for (int64_t r = r0; r < rows.end; ++r) {
      float* h_out = last ? h_last + r * H : hx_t + B * K + r * K;  // next step's [h, x]
      Cell::template forward<Act>(z.data() + (r - r0) * G, hx_t + r * K, h_out,
                                  coefs + (t * B + r) * Cell::kCoefs * H, H);
    }
  }
}

// d_h: the loss gradient w.r.t. the last h on entry, w.r.t. h0 on exit; for the batch rows
// `rows` only.
template <class Cell>
void backward(const Gemm& gemm, const Shape& s, Range rows, const float* kernel,
              const float* coefs, float* d_h, float* d_z) {
  const int64_t B = s.B, H = s.H, G = s.G, r0 = rows.begin;
  for (int64_t t = s.T - 1; t >= 0; --t) {
    float* dz_t = d_z + t * B * G;
    for (int64_t r = r0; r < rows.end; ++r)
      Cell::backward(coefs + (t * B + r) * Cell::kCoefs * H, d_h + r * H, dz_t + r * G, H);
    // d h_{t-1} (+)= d z_t @ kernel[:H].T
    gemm(CblasNoTrans, CblasTrans, rows.size(), H, G, dz_t + r0 * G, G, kernel, G,
         Cell::kDirectPath ? 1.0f : 0.0f, d_h + r0 * H, H);
  }
}

// Calls `f(Cell{})` for models/fused_cells.py's CELL_IDS `id` (1: GRU, 2: simple).
template <class F>
bool with_cell(int64_t id, F&& f) {
  switch (id) {
    case 1: f(Gru{}); return true;
    case 2: f(Simple{}); return true;
    default: return false;
  }
}

ffi::Error check_sizes(const Shape& s, int64_t gates) {
  if (s.H < 1 || s.F < 0 || s.G != gates * s.H)
    return ffi::Error::InvalidArgument(
        "units must be positive and kernel must be (units + features, " +
        std::to_string(gates) + " * units), got units " + std::to_string(s.H) +
        ", kernel columns " + std::to_string(s.G));
  constexpr int64_t kBlasMax = std::numeric_limits<int>::max();
  if (s.B > kBlasMax || s.K() > kBlasMax || s.G > kBlasMax || s.T * s.B > kBlasMax)
    return ffi::Error::InvalidArgument("sizes exceed the 32-bit BLAS interface");
  return ffi::Error::Success();
}

ffi::Error unknown(const char* what, int64_t id) {
  return ffi::Error::InvalidArgument(std::string("unknown ") + what + " id " + std::to_string(id));
}

// ---- the handlers ---------------------------------------------------------------------

ffi::Error ForwardImpl(ffi::ThreadPool pool, F32 xs, F32 kernel, F32 bias, F32 h0,
                       int64_t cell, int64_t activation, F32Out h_last, F32Out hx,
                       F32Out coefs) {
  constexpr const char* kName = "bench_cell_forward";
  if (activation < 0 || activation >= kActivations)
    return in(kName, unknown("activation", activation));
  Dims d = xs.dimensions(), carry = h0.dimensions(), k = kernel.dimensions();
  if (d.size() < 3)
    return in(kName, ffi::Error::InvalidArgument("xs must be (time, batch, features), got " +
                                                 shape_text(d)));
  Population p = Population::of(d, 3);
  if (auto error = first_error({expect_rank("h0", carry, p, 2, "batch, units"),
                                expect_rank("kernel", k, p, 2, "units + features, gates * units")});
      error.failure())
    return in(kName, error);
  const size_t L = p.dims.size();
  Shape s{d[L], d[L + 1], d[L + 2], carry[L + 1], k[L + 1]};
  ffi::Error result = in(kName, unknown("cell", cell));
  with_cell(cell, [&](auto kind) {
    using Cell = decltype(kind);
    const int64_t T = s.T, B = s.B, H = s.H, K = s.K(), G = s.G, C = Cell::kCoefs;
    result = in(kName, first_error({
        check_sizes(s, Cell::kGates), expect("kernel", k, p, {K, G}),
        expect("bias", bias.dimensions(), p, {G}), expect("h0", carry, p, {B, H}),
        expect("h_last", h_last->dimensions(), p, {B, H}),
        expect("hx", hx->dimensions(), p, {T, B, K}),
        expect("coefs", coefs->dimensions(), p, {T, B, C * H})}));
    if (result.failure()) return;
    if (T == 0 || B == 0) {  // no step: h passes through, residuals are empty
      copy_floats(h_last->typed_data(), h0.typed_data(), p.members * B * H);
      return;
    }
    const int64_t slices = slices_per_member(p.members, B);
    with_activation(activation, [&](auto act) {
      // Slice i of member m: the member's part of every operand and result, its rows i.
      auto run = [&](int64_t m, int64_t i, const Gemm& gemm) {
        forward<Cell, decltype(act)>(
            gemm, s, part(i, slices, B), xs.typed_data() + m * T * B * s.F,
            kernel.typed_data() + m * K * G, bias.typed_data() + m * G,
            h0.typed_data() + m * B * H,
            hx->typed_data() + m * T * B * K, coefs->typed_data() + m * T * B * C * H,
            h_last->typed_data() + m * B * H);
      };
      result = for_each_slice(kName, pool, p.members, slices, run);
    });
  });
  return result;
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, F32 kernel, F32 coefs, F32 d_h_last, F32 hx,
                        int64_t cell, F32Out d_z, F32Out d_h0, F32Out d_kernel,
                        F32Out d_bias) {
  constexpr const char* kName = "bench_cell_backward";
  Dims k = kernel.dimensions(), x = hx.dimensions(), carry = d_h_last.dimensions();
  if (x.size() < 3)
    return in(kName, ffi::Error::InvalidArgument("hx must be (time, batch, units + features), "
                                                 "got " + shape_text(x)));
  Population p = Population::of(x, 3);
  if (auto error = first_error({expect_rank("d_h_last", carry, p, 2, "batch, units"),
                                expect_rank("kernel", k, p, 2, "units + features, gates * units")});
      error.failure())
    return in(kName, error);
  const size_t L = p.dims.size();
  const int64_t units = carry[L + 1];
  Shape s{x[L], x[L + 1], x[L + 2] - units, units, k[L + 1]};
  ffi::Error result = in(kName, unknown("cell", cell));
  with_cell(cell, [&](auto kind) {
    using Cell = decltype(kind);
    const int64_t T = s.T, B = s.B, H = s.H, K = s.K(), G = s.G, C = Cell::kCoefs;
    result = in(kName, first_error({
        check_sizes(s, Cell::kGates), expect("kernel", k, p, {K, G}),
        expect("coefs", coefs.dimensions(), p, {T, B, C * H}),
        expect("d_h_last", carry, p, {B, H}),
        expect("d_z", d_z->dimensions(), p, {T, B, G}),
        expect("d_h0", d_h0->dimensions(), p, {B, H}),
        expect("d_kernel", d_kernel->dimensions(), p, {K, G}),
        expect("d_bias", d_bias->dimensions(), p, {G})}));
    if (result.failure()) return;
    copy_floats(d_h0->typed_data(), d_h_last.typed_data(), p.members * B * H);
    // As in lstm_cpu.cc: the time loop over row slices, then the kernel gradient over
    // column blocks.
    const int64_t slices = slices_per_member(p.members, B);
    auto loop = [&](int64_t m, int64_t i, const Gemm& gemm) {
      backward<Cell>(gemm, s, part(i, slices, B), kernel.typed_data() + m * K * G,
                     coefs.typed_data() + m * T * B * C * H, d_h0->typed_data() + m * B * H,
                     d_z->typed_data() + m * T * B * G);
    };
    result = for_each_slice(kName, pool, p.members, slices, loop);
    if (result.success())
      result = kernel_gradients(kName, pool, p.members, slices, T * B, K, G, hx.typed_data(),
                                d_z->typed_data(), d_kernel->typed_data(),
                                d_bias->typed_data());
  });
  return result;
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchCellForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // xs
                                  .Arg<F32>()  // kernel
                                  .Arg<F32>()  // bias
                                  .Arg<F32>()  // h0
                                  .Attr<int64_t>("cell")
                                  .Attr<int64_t>("activation")
                                  .Ret<F32>()  // h_last
                                  .Ret<F32>()  // hx
                                  .Ret<F32>());  // coefs

XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchCellBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // kernel
                                  .Arg<F32>()  // coefs
                                  .Arg<F32>()  // d_h_last
                                  .Arg<F32>()  // hx
                                  .Attr<int64_t>("cell")
                                  .Ret<F32>()  // d_z
                                  .Ret<F32>()  // d_h0
                                  .Ret<F32>()  // d_kernel
                                  .Ret<F32>());  // d_bias
