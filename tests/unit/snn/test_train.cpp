// A short CPU training run on the installed Fashion-MNIST (Debian dataset-fashion-mnist, which
// scripts/install-deps.sh installs) must beat chance, and the snn-model artifact round-trips.
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <filesystem>

#include "../test_util.hpp"
#include "kvlab/core/datasets.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/snn/model_io.hpp"
#include "kvlab/snn/trainer.hpp"

using namespace kvlab;
namespace fs = std::filesystem;

namespace {

snn::SnnTrainOptions small_run(snn::Rule rule, snn::LossKind loss) {
  snn::SnnTrainOptions o;
  o.data = core::kDefaultFashionMnistDir;
  o.hidden = {100};
  o.rule = rule;
  o.loss.kind = loss;
  o.time_steps = 40;
  o.epochs = 1;
  o.train_limit = 1600;
  o.test_limit = 500;
  o.batch_size = 16;
  return o;
}

bool have_fashion() {
  return fs::exists(fs::path(core::kDefaultFashionMnistDir) / "train-images-idx3-ubyte.gz");
}

}  // namespace

TEST_CASE("snn-train: a short CPU run (ANTLR, latency loss) trains well above chance") {
  REQUIRE_MESSAGE(have_fashion(), "install Debian's dataset-fashion-mnist (scripts/install-deps.sh)");
  at::manual_seed(0);
  core::NullProgress np;
  auto o = small_run(snn::Rule::antlr, snn::LossKind::latency);
  const auto r = snn::train_snn(o, np, {});
  MESSAGE("antlr/latency: acc " << r.test.accuracy << " spikes " << r.test.spikes_per_sample
                                << " latency " << r.test.latency_mean << " in " << r.seconds << " s");
  CHECK(r.test.samples == 500);
  CHECK(r.test.accuracy > 0.4);  // chance is 0.1
  CHECK(r.test.spikes_per_sample > 0);
  CHECK(r.test.latency_mean > 0);
  CHECK(r.test.latency_mean < o.time_steps);
  REQUIRE(r.history.size() == 1);
  CHECK(r.steps == 100);

  // The artifact round-trips: same weights, same report.
  const auto p = test::scratch("snn.h5");
  snn::write_snn_model(p, r, o, {});
  const auto m = snn::read_snn_model(p);
  CHECK(m.rule == snn::Rule::antlr);
  CHECK(m.net.sizes == std::vector<int64_t>{784, 100, 10});
  CHECK(at::equal(m.net.layers[1].weight, r.net.layers[1].weight));
  CHECK(m.report.accuracy == r.test.accuracy);
  CHECK(m.net.neuron.beta_v == r.net.neuron.beta_v);
}

TEST_CASE("snn-train: surrogate-gradient LIF baseline with the count loss also learns") {
  REQUIRE(have_fashion());
  at::manual_seed(0);
  core::NullProgress np;
  auto o = small_run(snn::Rule::surrogate, snn::LossKind::count);
  o.train_limit = 800;
  o.test_limit = 300;
  const auto r = snn::train_snn(o, np, {});
  MESSAGE("surrogate/count: acc " << r.test.accuracy << " in " << r.seconds << " s");
  CHECK(r.test.accuracy > 0.3);
}

TEST_CASE("snn-train: bad options and data are usage errors naming the option") {
  core::NullProgress np;
  auto o = small_run(snn::Rule::antlr, snn::LossKind::latency);
  o.data = test::scratch("no-such-dir").string();
  CHECK_THROWS_WITH_AS(snn::train_snn(o, np, {}), doctest::Contains("--data"), UsageError);
  o = small_run(snn::Rule::antlr, snn::LossKind::latency);
  o.time_steps = 20;  // latency code needs steps up to 24
  CHECK_THROWS_WITH_AS(snn::train_snn(o, np, {}), doctest::Contains("--min-input-timing"), UsageError);
}
