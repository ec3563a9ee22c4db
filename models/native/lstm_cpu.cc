// A fused LSTM time loop for XLA:CPU, called through the XLA FFI (models/fused_lstm.py).
//
// Why: XLA:CPU runs bench's LSTM step as ~30 small kernels per time step, each paying a
// launch and thread hand-off; PyTorch's nn.LSTM runs one oneDNN kernel for the whole
// sequence. Here the whole forward pass is one call and the whole backward pass another:
// per step one sgemm (OpenBLAS, from the scipy-openblas32 wheel) and one fused elementwise
// pass. The gate equations are nnx.LSTMCell's with `activation` in place of tanh on the
// candidate and the output, as in models/recurrent.py's lstm_update.
//
// Layouts (row-major, float32): xs (T, B, F); kernel (H + F, 4H), rows for h first, gate
// columns i, f, g, o; bias (4H). Residuals for the backward pass: hx (T, B, H + F), the
// step's [h_{t-1}, x_t]; coefs (T, B, 6H), see `Coef`; cs (T, B, H), the cells.
//
// Populations: under jax.vmap (vmap_method="broadcast_all") every operand and result comes
// with the same leading dimensions, one per vmap, in front of those layouts: xs (P..., T, B,
// F), kernel (P..., H + F, 4H) and so on. Each handler runs the LSTM once per member of the
// flattened leading dimensions, on that member's slices.
//
// Threads: a batch's rows are independent through the whole recurrence, so where there are
// fewer members than threads (one LSTM alone, above all) each member's batch is cut into
// row slices that run their own time loops side by side; the backward pass then cuts the
// kernel gradient, which sums over all rows, into column blocks. Every task (a member, or a
// slice of one) runs on one thread with its products on that thread, on XLA's own pool
// (cpu_kernels.h, `for_each_task`): one LSTM so sliced trains faster than its whole batch on
// one thread with multi-threaded products (docs/measurements.md, "Design measurements cited
// from the code").
//
// XLA hands the handlers whatever shapes the caller declared, so each handler checks every
// operand's shape before touching memory (an error reaches Python as an exception). A
// zero-length sequence returns the initial carry, as XLA's loop does.

#include "cpu_kernels.h"

namespace {

// ---- the time loop --------------------------------------------------------------------

struct Shape {
  int64_t T, B, F, H;
  int64_t K() const { return H + F; }
  int64_t G() const { return 4 * H; }
};

// The forward pass saves, per step and element, the six factors the backward pass needs,
// so that it computes no activation at all (planes of H floats per batch row):
enum Coef { kDzI, kDzF, kDzG, kDzO, kDcFromDh, kForget, kCoefs };
//   d z_i = dc * g i (1 - i)     d z_f = dc * c_{t-1} f (1 - f)     d z_g = dc * i act'(z_g)
//   d z_o = dh * act(c) o (1 - o)     dc = dc_next + dh * o act'(c)     dc_prev = dc * f

// The batch rows `rows` of every step (all of them, or a slice that runs on its own thread).
template <class Act>
void forward(const Gemm& gemm, const Shape& s, Range rows, const float* xs, const float* kernel,
             const float* bias, const float* h0, const float* c0, float* hx, float* coefs,
             float* cs, float* h_last, float* c_last) {
  const int64_t B = s.B, H = s.H, F = s.F, K = s.K(), G = s.G(), r0 = rows.begin;
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
    const float* c_prev = t == 0 ? c0 : cs + (t - 1) * B * H;
    const bool last = t == s.T - 1;
    for (int64_t r = r0; r < rows.end; ++r) {
      const float* zr = z.data() + (r - r0) * G;
      const float* cp = c_prev + r * H;
      float* cr = cs + (t * B + r) * H;
      float* k = coefs + (t * B + r) * kCoefs * H;
      float* h_out = last ? h_last + r * H : hx_t + B * K + r * K;  // next step's [h, x]
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        float i = sigmoid(zr[j]), f = sigmoid(zr[H + j]), o = sigmoid(zr[3 * H + j]);
        float g, dg, ac, dac;
        Act::eval(zr[2 * H + j], g, dg);
        float c = f * cp[j] + i * g;
        Act::eval(c, ac, dac);
        cr[j] = c;
        h_out[j] = o * ac;
        k[kDzI * H + j] = g * i * (1.0f - i);
        k[kDzF * H + j] = f * (1.0f - f);
        k[kDzG * H + j] = i * dg;
        k[kDzO * H + j] = ac * o * (1.0f - o);
        k[kDcFromDh * H + j] = o * dac;
        k[kForget * H + j] = f;
      }
    }
  }
  copy_floats(c_last + r0 * H, cs + ((s.T - 1) * B + r0) * H, rows.size() * H);  // s.T >= 1
}

// d_h, d_c: the loss gradient w.r.t. the last carry on entry, w.r.t. the first on exit;
// for the batch rows `rows` only.
void backward(const Gemm& gemm, const Shape& s, Range rows, const float* kernel,
              const float* c0, const float* coefs, const float* cs, float* d_h, float* d_c,
              float* d_z) {
  const int64_t B = s.B, H = s.H, G = s.G(), r0 = rows.begin;
  for (int64_t t = s.T - 1; t >= 0; --t) {
    const float* c_prev = t == 0 ? c0 : cs + (t - 1) * B * H;
    float* dz_t = d_z + t * B * G;
    for (int64_t r = r0; r < rows.end; ++r) {
      const float* k = coefs + (t * B + r) * kCoefs * H;
      const float* cp = c_prev + r * H;
      float* dzr = dz_t + r * G;
      float* dh = d_h + r * H;
      float* dc = d_c + r * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        float dcj = dc[j] + dh[j] * k[kDcFromDh * H + j];
        dzr[j] = dcj * k[kDzI * H + j];
        dzr[H + j] = dcj * cp[j] * k[kDzF * H + j];
        dzr[2 * H + j] = dcj * k[kDzG * H + j];
        dzr[3 * H + j] = dh[j] * k[kDzO * H + j];
        dc[j] = dcj * k[kForget * H + j];
      }
    }
    // d h_{t-1} = d z_t @ kernel[:H].T
    gemm(CblasNoTrans, CblasTrans, rows.size(), H, G, dz_t + r0 * G, G, kernel, G, 0.0f,
         d_h + r0 * H, H);
  }
}

// Sizes the loops and scipy-openblas32's 32-bit BLAS interface can take.
ffi::Error check_sizes(const Shape& s) {
  if (s.H < 1 || s.F < 0)
    return ffi::Error::InvalidArgument("units must be positive and kernel must be (units + "
                                       "features, 4 * units), got units " + std::to_string(s.H) +
                                       ", features " + std::to_string(s.F));
  constexpr int64_t kBlasMax = std::numeric_limits<int>::max();
  if (s.B > kBlasMax || s.K() > kBlasMax || s.G() > kBlasMax || s.T * s.B > kBlasMax)
    return ffi::Error::InvalidArgument("sizes exceed the 32-bit BLAS interface");
  return ffi::Error::Success();
}

// ---- the handlers ---------------------------------------------------------------------

ffi::Error check_forward(F32 xs, F32 kernel, F32 bias, F32 h0, F32 c0, F32Out h_last,
                         F32Out c_last, F32Out hx, F32Out coefs, F32Out cs, Shape& s,
                         Population& p) {
  Dims d = xs.dimensions(), carry = h0.dimensions();
  if (d.size() < 3)
    return ffi::Error::InvalidArgument("xs must be (time, batch, features), got " + shape_text(d));
  p = Population::of(d, 3);
  if (auto error = expect_rank("h0", carry, p, 2, "batch, units"); error.failure()) return error;
  const size_t L = p.dims.size();
  s = Shape{d[L], d[L + 1], d[L + 2], carry[L + 1]};
  const int64_t T = s.T, B = s.B, H = s.H;
  return first_error({
      check_sizes(s), expect("kernel", kernel.dimensions(), p, {s.K(), s.G()}),
      expect("bias", bias.dimensions(), p, {s.G()}), expect("h0", carry, p, {B, H}),
      expect("c0", c0.dimensions(), p, {B, H}),
      expect("h_last", h_last->dimensions(), p, {B, H}),
      expect("c_last", c_last->dimensions(), p, {B, H}),
      expect("hx", hx->dimensions(), p, {T, B, s.K()}),
      expect("coefs", coefs->dimensions(), p, {T, B, kCoefs * H}),
      expect("cs", cs->dimensions(), p, {T, B, H})});
}

ffi::Error ForwardImpl(ffi::ThreadPool pool, F32 xs, F32 kernel, F32 bias, F32 h0, F32 c0,
                       int64_t activation, F32Out h_last, F32Out c_last, F32Out hx,
                       F32Out coefs, F32Out cs) {
  Shape s{};
  Population p;
  if (auto error = check_forward(xs, kernel, bias, h0, c0, h_last, c_last, hx, coefs, cs, s, p);
      error.failure())
    return in("bench_lstm_forward", error);
  if (activation < 0 || activation >= kActivations)
    return ffi::Error::InvalidArgument("bench_lstm_forward: unknown activation id " +
                                       std::to_string(activation));
  const int64_t T = s.T, B = s.B, H = s.H, K = s.K(), G = s.G();
  if (T == 0 || B == 0) {  // no step: the carry passes through, residuals are empty
    copy_floats(h_last->typed_data(), h0.typed_data(), p.members * B * H);
    copy_floats(c_last->typed_data(), c0.typed_data(), p.members * B * H);
    return ffi::Error::Success();
  }
  ffi::Error result = ffi::Error::Success();
  const int64_t slices = slices_per_member(p.members, B);
  with_activation(activation, [&](auto act) {
    // Slice i of member m: the member's part of every operand and result, its rows i.
    auto run = [&](int64_t m, int64_t i, const Gemm& gemm) {
      forward<decltype(act)>(
          gemm, s, part(i, slices, B), xs.typed_data() + m * T * B * s.F,
          kernel.typed_data() + m * K * G, bias.typed_data() + m * G,
          h0.typed_data() + m * B * H, c0.typed_data() + m * B * H,
          hx->typed_data() + m * T * B * K, coefs->typed_data() + m * T * B * kCoefs * H,
          cs->typed_data() + m * T * B * H, h_last->typed_data() + m * B * H,
          c_last->typed_data() + m * B * H);
    };
    result = for_each_slice("bench_lstm_forward", pool, p.members, slices, run);
  });
  return result;
}

ffi::Error check_backward(F32 kernel, F32 c0, F32 coefs, F32 cs, F32 d_h_last, F32 d_c_last,
                          F32 hx, F32Out d_z, F32Out d_h0, F32Out d_c0, F32Out d_kernel,
                          F32Out d_bias, Shape& s, Population& p) {
  Dims k = kernel.dimensions(), d = cs.dimensions();
  if (d.size() < 3)
    return ffi::Error::InvalidArgument("cs must be (time, batch, units), got " + shape_text(d));
  p = Population::of(d, 3);
  if (auto error = expect_rank("kernel", k, p, 2, "units + features, 4 * units");
      error.failure())
    return error;
  const size_t L = p.dims.size();
  s = Shape{d[L], d[L + 1], k[L] - d[L + 2], d[L + 2]};
  const int64_t T = s.T, B = s.B, H = s.H;
  return first_error({
      check_sizes(s), expect("kernel", k, p, {s.K(), s.G()}),
      expect("c0", c0.dimensions(), p, {B, H}),
      expect("coefs", coefs.dimensions(), p, {T, B, kCoefs * H}),
      expect("d_h_last", d_h_last.dimensions(), p, {B, H}),
      expect("d_c_last", d_c_last.dimensions(), p, {B, H}),
      expect("hx", hx.dimensions(), p, {T, B, s.K()}),
      expect("d_z", d_z->dimensions(), p, {T, B, s.G()}),
      expect("d_h0", d_h0->dimensions(), p, {B, H}),
      expect("d_c0", d_c0->dimensions(), p, {B, H}),
      expect("d_kernel", d_kernel->dimensions(), p, {s.K(), s.G()}),
      expect("d_bias", d_bias->dimensions(), p, {s.G()})});
}

ffi::Error BackwardImpl(ffi::ThreadPool pool, F32 kernel, F32 c0, F32 coefs, F32 cs,
                        F32 d_h_last, F32 d_c_last, F32 hx, F32Out d_z, F32Out d_h0,
                        F32Out d_c0, F32Out d_kernel, F32Out d_bias) {
  Shape s{};
  Population p;
  if (auto error = check_backward(kernel, c0, coefs, cs, d_h_last, d_c_last, hx, d_z, d_h0, d_c0,
                                  d_kernel, d_bias, s, p);
      error.failure())
    return in("bench_lstm_backward", error);
  const int64_t T = s.T, B = s.B, H = s.H, K = s.K(), G = s.G();
  copy_floats(d_h0->typed_data(), d_h_last.typed_data(), p.members * B * H);
  copy_floats(d_c0->typed_data(), d_c_last.typed_data(), p.members * B * H);
  // The time loop over row slices, then the kernel gradient, which sums over all rows, over
  // column blocks (as many as slices, so that each thread again has one).
  const int64_t slices = slices_per_member(p.members, B);
  auto loop = [&](int64_t m, int64_t i, const Gemm& gemm) {
    backward(gemm, s, part(i, slices, B), kernel.typed_data() + m * K * G,
             c0.typed_data() + m * B * H, coefs.typed_data() + m * T * B * kCoefs * H,
             cs.typed_data() + m * T * B * H, d_h0->typed_data() + m * B * H,
             d_c0->typed_data() + m * B * H, d_z->typed_data() + m * T * B * G);
  };
  constexpr const char* kName = "bench_lstm_backward";
  if (auto error = for_each_slice(kName, pool, p.members, slices, loop); error.failure())
    return error;
  return kernel_gradients(kName, pool, p.members, slices, T * B, K, G, hx.typed_data(),
                          d_z->typed_data(), d_kernel->typed_data(), d_bias->typed_data());
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchLstmForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // xs
                                  .Arg<F32>()  // kernel
                                  .Arg<F32>()  // bias
                                  .Arg<F32>()  // h0
                                  .Arg<F32>()  // c0
                                  .Attr<int64_t>("activation")
                                  .Ret<F32>()  // h_last
                                  .Ret<F32>()  // c_last
                                  .Ret<F32>()  // hx
                                  .Ret<F32>()  // coefs
                                  .Ret<F32>());  // cs

XLA_FFI_DEFINE_HANDLER_SYMBOL(BenchLstmBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<F32>()  // kernel
                                  .Arg<F32>()  // c0
                                  .Arg<F32>()  // coefs
                                  .Arg<F32>()  // cs
                                  .Arg<F32>()  // d_h_last
                                  .Arg<F32>()  // d_c_last
                                  .Arg<F32>()  // hx
                                  .Ret<F32>()  // d_z
                                  .Ret<F32>()  // d_h0
                                  .Ret<F32>()  // d_c0
                                  .Ret<F32>()  // d_kernel
                                  .Ret<F32>());  // d_bias
