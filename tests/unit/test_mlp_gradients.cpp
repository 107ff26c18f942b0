// The MLP of examples/data_parallel (mlp.hpp): its backward pass against central finite
// differences of its loss, its layout in the flat buffer and its He initialisation.
#include "mlp.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace {

using data_parallel::mlp;

TEST(MlpExample, LayoutOfTheFashionMnistModel) {
  const mlp net(784, 1024, 10);
  EXPECT_EQ(net.parameter_count(), 784u * 1024 + 1024 + 1024 * 1024 + 1024 + 10 * 1024 + 10);
  const auto& t = net.tensors();
  ASSERT_EQ(t.size(), 6u);
  std::size_t at = 0;
  for (const auto& p : t) {
    EXPECT_EQ(p.offset, at) << p.name;
    at += p.size();
  }
  // Every weight matrix has `hidden` columns (PowerSGD sees stacked weights as a matrix).
  EXPECT_EQ(t[0].cols, 1024u);
  EXPECT_EQ(t[2].cols, 1024u);
  EXPECT_EQ(t[4].rows, 10u);
  EXPECT_EQ(t[4].cols, 1024u);
}

TEST(MlpExample, HeInitialisationIsSeededAndScaled) {
  const mlp net(400, 300, 10);
  std::vector<float> a(net.parameter_count()), b(a.size()), c(a.size());
  net.init(a, 7);
  net.init(b, 7);
  net.init(c, 8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  const auto& t = net.tensors();
  for (std::size_t k = 0; k < t.size(); ++k) {
    double sum = 0, sq = 0;
    for (std::size_t i = 0; i < t[k].size(); ++i) {
      const double v = a[t[k].offset + i];
      sum += v;
      sq += v * v;
    }
    const double n = static_cast<double>(t[k].size());
    if (t[k].rows == 1) {
      EXPECT_EQ(sq, 0.0) << t[k].name << ": biases start at 0";
      continue;
    }
    const double fan_in = k == 4 ? 300.0 : static_cast<double>(t[k].rows);
    const double want = (k == 4 ? 1.0 : 2.0) / fan_in, var = sq / n - (sum / n) * (sum / n);
    // n ≥ 3000 draws: the sample variance is within 10 % of the truth by a wide margin.
    EXPECT_NEAR(var, want, 0.1 * want) << t[k].name;
    EXPECT_NEAR(sum / n, 0.0, 4 * std::sqrt(want / n)) << t[k].name;
  }
}

TEST(MlpExample, GradientsMatchFiniteDifferences) {
  mlp net(6, 5, 3);
  const std::size_t batch = 4;
  std::vector<float> w(net.parameter_count()), g(w.size()), scratch(w.size());
  net.init(w, 3);
  std::mt19937 gen(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // Biases away from 0, so that they are tested too.
  for (const auto& p : net.tensors())
    if (p.rows == 1)
      for (std::size_t i = 0; i < p.size(); ++i) w[p.offset + i] = 0.1f * normal(gen);
  std::vector<float> x(batch * 6);
  for (float& v : x) v = normal(gen);
  const std::vector<std::uint8_t> labels{0, 2, 1, 2};

  const double loss = net.forward_backward(w, x.data(), labels.data(), batch, g);
  EXPECT_TRUE(std::isfinite(loss));
  // evaluate() sees the same loss.
  double sum = 0;
  std::size_t correct = 0;
  net.evaluate(w, x.data(), labels.data(), batch, sum, correct);
  EXPECT_NEAR(sum / batch, loss, 1e-6);
  EXPECT_LE(correct, batch);

  auto loss_at = [&](std::vector<float>& v) {
    return net.forward_backward(v, x.data(), labels.data(), batch, scratch);
  };
  const float eps = 1e-3f;
  std::size_t checked = 0;
  for (std::size_t i = 0; i < w.size(); ++i) {
    std::vector<float> p = w, m = w;
    p[i] += eps;
    m[i] -= eps;
    const double numeric = (loss_at(p) - loss_at(m)) / (2.0 * eps);
    EXPECT_NEAR(g[i], numeric, 2e-3 + 2e-2 * std::fabs(numeric)) << "parameter " << i;
    ++checked;
  }
  EXPECT_EQ(checked, net.parameter_count());
}

TEST(MlpExample, WrongBufferSizeIsRejected) {
  mlp net(6, 5, 3);
  std::vector<float> w(net.parameter_count() - 1);
  EXPECT_THROW(net.init(w, 1), std::invalid_argument);
}

}  // namespace
