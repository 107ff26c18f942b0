// gradcomm/comm/optimizer.hpp — the optimizers a communicator applies: where the
// update runs is the backend's business (locally after an all-reduce, on the
// server of a parameter server, before the mixing of gossip), the rule is here.
//
//   gradcomm::sgd opt{{.lr = 0.05f, .momentum = 0.9f}};
//   opt.apply(params, grads);  // params -= lr * (momentum buffer)
//
// An optimizer may apply to a slice of the parameters (a server shard): it keeps
// one state per element, sized on the first call, and a later call of another
// size is an error rather than a silent reset.
#pragma once

#include <gradcomm/core/config.hpp>
#include <gradcomm/core/error.hpp>
#include <gradcomm/core/tensor.hpp>

#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

namespace gradcomm {
inline namespace v0 {

/// Optimizer<O>: `o.apply(params, grads)` updates `params` in place from `grads`
/// (same size on every call), keeping whatever state the rule needs; `o.name()`
/// says which rule it is; state save/load for checkpoints.
///
///   template <gradcomm::Optimizer O> void server_update(O& o, ...);
template <class O>
concept Optimizer = requires(O& o, const O& co, host_view<float> p, host_view<const float> g,
                             std::span<std::byte> buf, std::span<const std::byte> bytes) {
  o.apply(p, g);
  { co.name() } -> std::convertible_to<const char*>;
  { co.state_bytes() } -> std::same_as<std::size_t>;
  { co.save_state(buf) } -> std::same_as<std::size_t>;
  o.load_state(bytes);
};

namespace detail {

inline void check_optimizer_size(const char* call, std::size_t have, std::size_t n) {
  if (have != 0 && have != n)
    throw_invalid_argument(call, "called on " + std::to_string(n) + " elements after " +
                                     std::to_string(have) +
                                     " (an optimizer keeps one state per element)");
}

inline std::size_t save_floats(const char* call, std::span<std::byte> buf, std::uint32_t tag,
                               std::initializer_list<const std::vector<float>*> vs,
                               std::uint64_t extra = 0) {
  std::size_t need = 4 + 8 + 8;
  for (auto* v : vs) need += v->size() * sizeof(float);
  if (buf.size() < need) detail::throw_buffer_too_small(call, need, buf.size());
  std::byte* p = buf.data();
  const std::uint64_t n = vs.size() ? (*vs.begin())->size() : 0;
  std::memcpy(p, &tag, 4);
  std::memcpy(p + 4, &n, 8);
  std::memcpy(p + 12, &extra, 8);
  p += 20;
  for (auto* v : vs) {
    if (!v->empty()) std::memcpy(p, v->data(), v->size() * sizeof(float));
    p += v->size() * sizeof(float);
  }
  return need;
}

// Reads what save_floats wrote, into copies; the caller swaps them in only when
// everything was valid, so a rejected state changes nothing.
inline std::uint64_t load_floats(const char* call, std::span<const std::byte> bytes,
                                 std::uint32_t tag, std::initializer_list<std::vector<float>*> vs) {
  if (bytes.size() < 20)
    throw decode_error(call, "optimizer state of " + std::to_string(bytes.size()) +
                                 " bytes is shorter than its 20-byte header");
  std::uint32_t t;
  std::uint64_t n, extra;
  std::memcpy(&t, bytes.data(), 4);
  std::memcpy(&n, bytes.data() + 4, 8);
  std::memcpy(&extra, bytes.data() + 12, 8);
  if (t != tag)
    throw decode_error(call, "optimizer state tag " + std::to_string(t) + ", expected " +
                                 std::to_string(tag) + " (a state of another optimizer)");
  const std::uint64_t body = bytes.size() - 20;
  if (n > body / sizeof(float) / (vs.size() ? vs.size() : 1) ||
      body != n * sizeof(float) * vs.size())
    throw decode_error(call, "optimizer state announces " + std::to_string(n) +
                                 " elements but carries " + std::to_string(body) + " bytes");
  const std::byte* p = bytes.data() + 20;
  for (auto* v : vs) {
    v->resize(static_cast<std::size_t>(n));
    if (n) std::memcpy(v->data(), p, static_cast<std::size_t>(n) * sizeof(float));
    p += n * sizeof(float);
  }
  return extra;
}

}  // namespace detail

/// Stochastic gradient descent with optional momentum (heavy ball or Nesterov)
/// and L2 weight decay. momentum = 0 is the seed's rule w ← w − η·g.
///
///   gradcomm::sgd plain{{.lr = 0.1f}};
///   gradcomm::sgd heavy{{.lr = 0.05f, .momentum = 0.9f, .weight_decay = 5e-4f}};
class sgd {
 public:
  struct options {
    float lr = 0.01f;
    float momentum = 0.0f;
    float weight_decay = 0.0f;
    bool nesterov = false;
  };

  sgd() = default;
  explicit sgd(options o) : opt_(o) {}

  const char* name() const noexcept { return "sgd"; }
  options& settings() noexcept { return opt_; }
  const options& settings() const noexcept { return opt_; }

  void apply(host_view<float> params, host_view<const float> grads) {
    static constexpr const char* call = "sgd::apply";
    if (params.size() != grads.size())
      detail::throw_invalid_argument(call, std::to_string(params.size()) + " parameters but " +
                                               std::to_string(grads.size()) + " gradients");
    const std::size_t n = params.size();
    const float lr = opt_.lr, mu = opt_.momentum, wd = opt_.weight_decay;
    float* w = params.data();
    const float* g = grads.data();
    if (mu == 0.0f) {
      for (std::size_t i = 0; i < n; ++i) w[i] -= lr * (g[i] + wd * w[i]);
      return;
    }
    detail::check_optimizer_size(call, velocity_.size(), n);
    velocity_.resize(n, 0.0f);
    float* v = velocity_.data();
    if (opt_.nesterov) {
      for (std::size_t i = 0; i < n; ++i) {
        const float d = g[i] + wd * w[i];
        v[i] = mu * v[i] + d;
        w[i] -= lr * (d + mu * v[i]);
      }
    } else {
      for (std::size_t i = 0; i < n; ++i) {
        v[i] = mu * v[i] + g[i] + wd * w[i];
        w[i] -= lr * v[i];
      }
    }
  }

  std::size_t state_bytes() const noexcept { return 20 + velocity_.size() * sizeof(float); }
  std::size_t save_state(std::span<std::byte> buf) const {
    return detail::save_floats("sgd::save_state", buf, tag, {&velocity_});
  }
  void load_state(std::span<const std::byte> bytes) {
    std::vector<float> v;
    detail::load_floats("sgd::load_state", bytes, tag, {&v});
    velocity_.swap(v);
  }

 private:
  static constexpr std::uint32_t tag = 0x44475331;  // "1SGD"
  options opt_{};
  std::vector<float> velocity_;
};

/// SGD whose heavy-ball momentum acts once per round of `updates_per_round` updates: the
/// parameter server's server, which updates once a push, takes the number of workers, so
/// that its momentum acts once per round of pushes as the all-reduce's does once per step
/// on the mean of the workers' gradients. Update c (from 0) with gradient g:
///   s = −lr · (g + weight_decay · w);  w ← w + s + (momentum / P) · m;  a ← a + s
/// and after every P-th update m ← momentum · m + a, a ← 0 (m: the last round's
/// displacement, P = updates_per_round). With P = 1 this is heavy ball in displacement form,
/// Δ_t = μ Δ_{t−1} − lr g_t; with P workers pushing synchronously at lr / P (ps_server_lr)
/// a round moves w by μ Δ_{t−1} − lr · mean(g): the all-reduce's step with sgd's momentum,
/// to rounding (where lr changes, sgd rescales the carried momentum by lr_t / lr_{t−1} and
/// this rule does not). Asynchronous pushes get the last round's momentum a P-th at a time
/// and the fresh gradient at once. Momentum on the workers instead (each keeps u ← μu + g
/// and pushes u) is the same step uncompressed, but a compressor then compresses the
/// momentum, not the gradient: with top-k the server's momentum is what the all-reduce's
/// top-k does (examples/data_parallel, main.cpp's ps_defaults).
///
///   gradcomm::round_momentum_sgd s{{.lr = gradcomm::ps_server_lr(0.02f, 4), .momentum = 0.9f,
///                                   .updates_per_round = 4}};
class round_momentum_sgd {
 public:
  struct options {
    float lr = 0.01f;
    float momentum = 0.9f;
    std::uint32_t updates_per_round = 1;
    float weight_decay = 0.0f;
  };

  /// Throws invalid_argument for updates_per_round 0 or a momentum outside [0, 1).
  round_momentum_sgd() = default;
  explicit round_momentum_sgd(options o) : opt_(o) {
    if (o.updates_per_round == 0)
      detail::throw_invalid_argument("round_momentum_sgd", "updates_per_round 0: at least 1");
    if (!(o.momentum >= 0.0f && o.momentum < 1.0f))
      detail::throw_invalid_argument("round_momentum_sgd",
                                     "momentum " + std::to_string(o.momentum) + ": in [0, 1)");
  }

  const char* name() const noexcept { return "round_momentum_sgd"; }
  options& settings() noexcept { return opt_; }
  const options& settings() const noexcept { return opt_; }
  /// Updates applied so far.
  std::uint64_t updates() const noexcept { return count_; }

  void apply(host_view<float> params, host_view<const float> grads) {
    static constexpr const char* call = "round_momentum_sgd::apply";
    if (params.size() != grads.size())
      detail::throw_invalid_argument(call, std::to_string(params.size()) + " parameters but " +
                                               std::to_string(grads.size()) + " gradients");
    if (opt_.updates_per_round == 0)
      detail::throw_invalid_argument(call, "updates_per_round 0: at least 1");
    const std::size_t n = params.size();
    detail::check_optimizer_size(call, m_.size(), n);
    m_.resize(n, 0.0f);
    a_.resize(n, 0.0f);
    const float lr = opt_.lr, wd = opt_.weight_decay;
    const float share = opt_.momentum / static_cast<float>(opt_.updates_per_round);
    float* __restrict w = params.data();
    const float* __restrict g = grads.data();
    float* __restrict m = m_.data();
    float* __restrict a = a_.data();
    for (std::size_t i = 0; i < n; ++i) {
      const float s = -lr * (g[i] + wd * w[i]);
      w[i] += s + share * m[i];
      a[i] += s;
    }
    if (++count_ % opt_.updates_per_round == 0) {
      const float mu = opt_.momentum;
      for (std::size_t i = 0; i < n; ++i) {
        m[i] = mu * m[i] + a[i];
        a[i] = 0.0f;
      }
    }
  }

  std::size_t state_bytes() const noexcept { return 20 + 2 * m_.size() * sizeof(float); }
  /// The last round's displacement, this round's so far and the update count.
  std::size_t save_state(std::span<std::byte> buf) const {
    return detail::save_floats("round_momentum_sgd::save_state", buf, tag, {&m_, &a_}, count_);
  }
  void load_state(std::span<const std::byte> bytes) {
    std::vector<float> m, a;
    const std::uint64_t c =
        detail::load_floats("round_momentum_sgd::load_state", bytes, tag, {&m, &a});
    m_.swap(m);
    a_.swap(a);
    count_ = c;
  }

 private:
  static constexpr std::uint32_t tag = 0x44475352;  // "RSGD"
  options opt_{};
  std::vector<float> m_, a_;
  std::uint64_t count_ = 0;
};

/// Adam (Kingma & Ba) with bias correction; weight decay decoupled (AdamW) when
/// `decoupled` is set, added to the gradient otherwise.
///
///   gradcomm::adam opt{{.lr = 1e-3f}};
class adam {
 public:
  struct options {
    float lr = 1e-3f;
    float beta1 = 0.9f;
    float beta2 = 0.999f;
    float eps = 1e-8f;
    float weight_decay = 0.0f;
    bool decoupled = false;
  };

  adam() = default;
  explicit adam(options o) : opt_(o) {}

  const char* name() const noexcept { return "adam"; }
  options& settings() noexcept { return opt_; }
  const options& settings() const noexcept { return opt_; }
  std::uint64_t steps() const noexcept { return t_; }

  void apply(host_view<float> params, host_view<const float> grads) {
    static constexpr const char* call = "adam::apply";
    if (params.size() != grads.size())
      detail::throw_invalid_argument(call, std::to_string(params.size()) + " parameters but " +
                                               std::to_string(grads.size()) + " gradients");
    const std::size_t n = params.size();
    detail::check_optimizer_size(call, m_.size(), n);
    m_.resize(n, 0.0f);
    v_.resize(n, 0.0f);
    ++t_;
    const float b1 = opt_.beta1, b2 = opt_.beta2, eps = opt_.eps, wd = opt_.weight_decay;
    const double c1 = 1.0 - std::pow(static_cast<double>(b1), static_cast<double>(t_));
    const double c2 = 1.0 - std::pow(static_cast<double>(b2), static_cast<double>(t_));
    const float step = static_cast<float>(opt_.lr * std::sqrt(c2) / c1);
    float* w = params.data();
    const float* g = grads.data();
    for (std::size_t i = 0; i < n; ++i) {
      const float d = opt_.decoupled ? g[i] : g[i] + wd * w[i];
      m_[i] = b1 * m_[i] + (1.0f - b1) * d;
      v_[i] = b2 * v_[i] + (1.0f - b2) * d * d;
      if (opt_.decoupled) w[i] -= opt_.lr * wd * w[i];
      w[i] -= step * m_[i] / (std::sqrt(v_[i]) + eps);
    }
  }

  std::size_t state_bytes() const noexcept { return 20 + 2 * m_.size() * sizeof(float); }
  std::size_t save_state(std::span<std::byte> buf) const {
    return detail::save_floats("adam::save_state", buf, tag, {&m_, &v_}, t_);
  }
  void load_state(std::span<const std::byte> bytes) {
    std::vector<float> m, v;
    const std::uint64_t t = detail::load_floats("adam::load_state", bytes, tag, {&m, &v});
    m_.swap(m);
    v_.swap(v);
    t_ = t;
  }

 private:
  static constexpr std::uint32_t tag = 0x4d414441;  // "ADAM"
  options opt_{};
  std::vector<float> m_, v_;
  std::uint64_t t_ = 0;
};

static_assert(Optimizer<sgd>);
static_assert(Optimizer<round_momentum_sgd>);
static_assert(Optimizer<adam>);

}  // namespace v0
}  // namespace gradcomm
