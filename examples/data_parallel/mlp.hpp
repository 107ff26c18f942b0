// examples/data_parallel/mlp.hpp — a multilayer perceptron (in → hidden → hidden → classes,
// ReLU, softmax cross-entropy) whose parameters and gradients are one flat f32 buffer each.
//
//   data_parallel::mlp net(784, 1024, 10);               // 1.86 M parameters
//   std::vector<float> w(net.parameter_count()), g(w.size());
//   net.init(w, /*seed=*/1);                             // He initialisation
//   double loss = net.forward_backward(w, x, labels, 64, g);   // g := ∂loss/∂w
//
// One buffer is what a communicator reduces; each layer is an Eigen::Map over its part.
// Batches are row-major (one example a row) and every product is one Eigen GEMM. Every
// weight matrix has `hidden` columns — W1 is in × hidden (X·W1), W2 hidden × hidden
// (H1·W2), W3 classes × hidden (H2·W3ᵀ) — so that weights stacked row on row stay a
// matrix with one meaning per column: PowerSGD views a bucket of them as one. An object
// holds the activations of the last batch: one per worker thread. Needs Eigen (Debian
// package libeigen3-dev).
#pragma once

#include <gradcomm/core/philox.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace data_parallel {

/// One parameter tensor's place in the flat buffer.
///
///   for (const auto& t : net.tensors()) std::printf("%s: %zu\n", t.name.c_str(), t.size);
struct param_tensor {
  std::string name;
  std::size_t offset = 0, rows = 0, cols = 0;
  std::size_t size() const noexcept { return rows * cols; }
};

/// in → hidden (ReLU) → hidden (ReLU) → classes, softmax cross-entropy (see the top of
/// this header).
///
///   data_parallel::mlp net(784, 1024, 10);
///   net.evaluate(w, x, labels, 1000, loss_sum, correct);
class mlp {
 public:
  using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using matrix_map = Eigen::Map<row_matrix>;
  using const_matrix_map = Eigen::Map<const row_matrix>;
  using const_row_map = Eigen::Map<const Eigen::RowVectorXf>;
  using row_map = Eigen::Map<Eigen::RowVectorXf>;

  /// The flat buffer holds W1, b1, W2, b2, W3, b3 in this order.
  mlp(std::size_t in, std::size_t hidden, std::size_t classes)
      : in_(in), hidden_(hidden), classes_(classes) {
    if (in == 0 || hidden == 0 || classes < 2)
      throw std::invalid_argument("mlp: " + std::to_string(in) + "-" + std::to_string(hidden) +
                                  "-" + std::to_string(classes) +
                                  ": every layer needs units, and at least 2 classes");
    std::size_t at = 0;
    auto add = [&](const char* name, std::size_t rows, std::size_t cols) {
      tensors_.push_back({name, at, rows, cols});
      at += rows * cols;
    };
    add("W1", in, hidden);
    add("b1", 1, hidden);
    add("W2", hidden, hidden);
    add("b2", 1, hidden);
    add("W3", classes, hidden);
    add("b3", 1, classes);
    count_ = at;
  }

  std::size_t inputs() const noexcept { return in_; }
  std::size_t classes() const noexcept { return classes_; }
  /// Elements of the flat parameter (and gradient) buffer.
  std::size_t parameter_count() const noexcept { return count_; }
  /// W1, b1, W2, b2, W3, b3: where each lies in the flat buffer.
  const std::vector<param_tensor>& tensors() const noexcept { return tensors_; }

  /// He initialisation: weights drawn from N(0, 2 / fan_in) — N(0, 1 / fan_in) for the
  /// output layer, which no ReLU follows — and biases 0. The numbers come
  /// from Philox keyed by `seed` (Box–Muller), so every worker on every machine draws the
  /// same parameters.
  void init(std::span<float> params, std::uint64_t seed) const {
    check_size("mlp::init", params.size());
    for (std::size_t t = 0; t < tensors_.size(); ++t) {
      const param_tensor& p = tensors_[t];
      float* w = params.data() + p.offset;
      if (p.rows == 1) {
        std::fill(w, w + p.size(), 0.0f);
        continue;
      }
      const std::size_t fan_in = t == 4 ? p.cols : p.rows;  // W3 is stored out × in
      // He's factor 2 makes up for the half a ReLU zeroes; no ReLU follows the logits, so
      // their layer takes variance 1 / fan_in (LeCun) and starts near the uniform guess.
      const double gain = t == 4 ? 1.0 : 2.0;
      const double sd = std::sqrt(gain / static_cast<double>(fan_in));
      const gradcomm::philox_stream s(seed, 0, 0, static_cast<std::uint32_t>(t));
      for (std::size_t i = 0; i < p.size(); i += 2) {
        // Box–Muller: two uniforms give two independent normals; u1 in (0, 1].
        const double u1 = 1.0 - gradcomm::philox_uniform(s.at(i));
        const double u2 = gradcomm::philox_uniform(s.at(i + 1));
        const double r = std::sqrt(-2.0 * std::log(u1)) * sd;
        w[i] = static_cast<float>(r * std::cos(6.283185307179586 * u2));
        if (i + 1 < p.size()) w[i + 1] = static_cast<float>(r * std::sin(6.283185307179586 * u2));
      }
    }
  }

  /// Forward and backward pass on `batch` examples (x: batch × inputs() row-major,
  /// labels: batch class indices). Overwrites `grads` with the gradient of the mean
  /// loss over the batch and returns that mean loss. `landed(t)` is called as tensor t's
  /// gradient (an index into tensors()) is final: W3, b3, W2, b2, W1, b1 in this order, so
  /// that a communicator may send a layer's gradients while the layers below are computed.
  ///
  ///   net.forward_backward(w, x, labels, 64, g, [&](std::size_t t) { comm.ready(t); });
  template <class Landed>
  double forward_backward(std::span<const float> params, const float* x, const std::uint8_t* labels,
                          std::size_t batch, std::span<float> grads, Landed&& landed) {
    check_size("mlp::forward_backward", params.size());
    check_size("mlp::forward_backward", grads.size());
    const auto b = static_cast<Eigen::Index>(batch);
    const const_matrix_map X(x, b, static_cast<Eigen::Index>(in_));
    const double loss = forward(params, X, labels, batch, nullptr);

    // probs_ := ∂loss/∂logits = (softmax − onehot) / batch.
    for (std::size_t i = 0; i < batch; ++i) probs_(static_cast<Eigen::Index>(i), labels[i]) -= 1.0f;
    probs_ *= 1.0f / static_cast<float>(batch);

    const_matrix_map W2 = weight(params, 2), W3 = weight(params, 4);
    matrix_map dW1 = weight(grads, 0), dW2 = weight(grads, 2), dW3 = weight(grads, 4);
    row_map db1 = bias(grads, 1), db2 = bias(grads, 3), db3 = bias(grads, 5);

    dW3.noalias() = probs_.transpose() * h2_;
    landed(std::size_t{4});
    db3 = probs_.colwise().sum();
    landed(std::size_t{5});
    dh_.noalias() = probs_ * W3;
    dh_ = (h2_.array() > 0.0f).select(dh_, 0.0f);
    dW2.noalias() = h1_.transpose() * dh_;
    landed(std::size_t{2});
    db2 = dh_.colwise().sum();
    landed(std::size_t{3});
    dh1_.noalias() = dh_ * W2.transpose();
    dh1_ = (h1_.array() > 0.0f).select(dh1_, 0.0f);
    dW1.noalias() = X.transpose() * dh1_;
    landed(std::size_t{0});
    db1 = dh1_.colwise().sum();
    landed(std::size_t{1});
    return loss;
  }

  /// The same without the calls.
  double forward_backward(std::span<const float> params, const float* x, const std::uint8_t* labels,
                          std::size_t batch, std::span<float> grads) {
    return forward_backward(params, x, labels, batch, grads, [](std::size_t) {});
  }

  /// Adds the summed loss of `batch` examples to loss_sum and the number classified
  /// correctly (arg max of the logits) to correct.
  void evaluate(std::span<const float> params, const float* x, const std::uint8_t* labels,
                std::size_t batch, double& loss_sum, std::size_t& correct) {
    check_size("mlp::evaluate", params.size());
    const const_matrix_map X(x, static_cast<Eigen::Index>(batch), static_cast<Eigen::Index>(in_));
    loss_sum += forward(params, X, labels, batch, &correct) * static_cast<double>(batch);
  }

 private:
  void check_size(const char* call, std::size_t n) const {
    if (n != count_)
      throw std::invalid_argument(std::string(call) + ": a buffer of " + std::to_string(n) +
                                  " elements, the model has " + std::to_string(count_));
  }
  template <class T>
  using matrix_map_of = std::conditional_t<std::is_const_v<T>, const_matrix_map, matrix_map>;
  template <class T>
  using row_map_of = std::conditional_t<std::is_const_v<T>, const_row_map, row_map>;

  template <class T>
  matrix_map_of<T> weight(std::span<T> buf, std::size_t t) const {
    const param_tensor& p = tensors_[t];
    return matrix_map_of<T>(buf.data() + p.offset, static_cast<Eigen::Index>(p.rows),
                            static_cast<Eigen::Index>(p.cols));
  }
  template <class T>
  row_map_of<T> bias(std::span<T> buf, std::size_t t) const {
    const param_tensor& p = tensors_[t];
    return row_map_of<T>(buf.data() + p.offset, static_cast<Eigen::Index>(p.cols));
  }

  // Fills h1_, h2_ and probs_ (softmax) and returns the mean loss; counts correct
  // predictions where asked.
  double forward(std::span<const float> params, const const_matrix_map& X,
                 const std::uint8_t* labels, std::size_t batch, std::size_t* correct) {
    const auto b = static_cast<Eigen::Index>(batch);
    const auto h = static_cast<Eigen::Index>(hidden_), c = static_cast<Eigen::Index>(classes_);
    // resize() keeps the allocation when the shape does not change.
    h1_.resize(b, h);
    h2_.resize(b, h);
    dh_.resize(b, h);
    dh1_.resize(b, h);
    probs_.resize(b, c);

    h1_.noalias() = X * weight(params, 0);
    h1_.rowwise() += bias(params, 1);
    h1_ = h1_.cwiseMax(0.0f);
    h2_.noalias() = h1_ * weight(params, 2);
    h2_.rowwise() += bias(params, 3);
    h2_ = h2_.cwiseMax(0.0f);
    probs_.noalias() = h2_ * weight(params, 4).transpose();
    probs_.rowwise() += bias(params, 5);

    double loss = 0.0;
    for (Eigen::Index i = 0; i < b; ++i) {
      auto row = probs_.row(i);
      Eigen::Index arg = 0;
      const float top = row.maxCoeff(&arg);
      if (correct && arg == labels[i]) ++*correct;
      const float z = row(labels[i]) - top;
      row.array() = (row.array() - top).exp();
      const float sum = row.sum();
      // −log softmax[label] = log Σ exp(z − top) − (z_label − top): no exp to underflow.
      loss += std::log(static_cast<double>(sum)) - static_cast<double>(z);
      row /= sum;
    }
    return loss / static_cast<double>(batch);
  }

  std::size_t in_, hidden_, classes_, count_ = 0;
  std::vector<param_tensor> tensors_;
  row_matrix h1_, h2_, dh_, dh1_, probs_;
};

}  // namespace data_parallel
