// bnn-train end to end on a short CPU run: clearly-above-chance accuracy on Fashion-MNIST, the
// packed path's predictions equal the float-simulated network's on the test set, the cost report
// adds up, the artifact round-trips, checkpoints resume, and bad option combinations are refused.
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>

#include "../test_util.hpp"
#include "kvlab/binary/bnn.hpp"
#include "kvlab/core/artifact.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/progress.hpp"

using kvlab::test::error_of;

using namespace kvlab;
namespace fs = std::filesystem;

namespace {

const core::TrainTest& fashion() {
  static const core::TrainTest tt = core::load_image_dataset(core::kDefaultFashionMnistDir);
  return tt;
}
bool have_fashion() {
  return fs::exists(fs::path(core::kDefaultFashionMnistDir) / "t10k-images-idx3-ubyte.gz");
}

binary::BnnOptions small(binary::BnnArch arch, binary::BnnAct act = binary::BnnAct::automatic) {
  binary::BnnOptions o;
  o.net.arch = arch;
  o.net.act = act;
  o.net.width = 8;
  o.net.stages = 2;
  o.epochs = 1;
  o.batch_size = 64;
  o.lr = 2e-3;
  o.train_limit = 3000;
  o.test_limit = 1000;
  o.seed = 1;
  return o;
}

// Stops after `after` update() calls, as a SIGTERM would.
class StopAfter : public core::NullProgress {
 public:
  explicit StopAfter(int after) : left_(after) {}
  void update(std::int64_t, const core::Metrics& = {}) override { --left_; }
  bool stop_requested() const override { return left_ <= 0; }

 private:
  int left_;
};


}  // namespace

TEST_CASE("short CPU run: ReActNet-style BNN clearly above chance; packed path matches exactly") {
  if (!have_fashion()) {
    MESSAGE("dataset-fashion-mnist not installed; skipped");
    return;
  }
  at::manual_seed(1);
  core::NullProgress np;
  binary::BnnOptions o = small(binary::BnnArch::reactnet);
  o.train_limit = 10000;
  const binary::BnnResult r = binary::train_bnn(fashion(), o, {}, np);
  MESSAGE("reactnet test accuracy " << r.report.test_accuracy);
  CHECK(r.report.test_accuracy > 0.35);  // chance is 0.10; 0.52 measured (1 epoch, 10k images)
  REQUIRE(r.report.packed_checked);
  CHECK(r.report.packed_agreement == 1.0);
  CHECK(r.report.packed_logits_equal);
  CHECK(r.report.packed_accuracy == r.report.test_accuracy);
  // Costs: 2 binary 3x3 convs (8->8 @28x28, 8->16 @14x14); real stem, 1x1 downsample (after a
  // 2x2 average pool) and fc.
  CHECK(r.report.bops == 8 * 8 * 9 * 28 * 28 + 8 * 16 * 9 * 14 * 14);
  CHECK(r.report.flops == 1 * 8 * 9 * 28 * 28 + 8 * 16 * 14 * 14 + 16 * 10);
  CHECK(r.report.ops == doctest::Approx(r.report.bops / 64.0 + r.report.flops));
  CHECK(r.report.binary_params == 8 * 8 * 9 + 8 * 16 * 9);
  CHECK(r.report.size_bits == r.report.binary_params + 32 * r.report.real_params);
  REQUIRE(r.report.act_plus_fraction.size() == 2);
  for (double f : r.report.act_plus_fraction) CHECK((f > 0.0 && f < 1.0));

  // Artifact round trip; bnn_logits on the re-read weights reproduces the packed predictions.
  const fs::path out = test::scratch("bireal.h5");
  fs::remove(out);
  binary::write_bnn_model(out, r, o, {"kvlab bnn-train", "", {}});
  const binary::BnnModelFile f = binary::read_bnn_model(out);
  CHECK((f.net.arch == binary::BnnArch::reactnet));
  CHECK((f.net.act == binary::BnnAct::rsign));
  CHECK(f.test_accuracy == r.report.test_accuracy);
  const at::Tensor imgs = fashion().test.images.slice(0, 0, 1000);
  const at::Tensor lf = binary::bnn_logits(f.net, f.weights, "fashion-mnist", imgs, false);
  const at::Tensor lp = binary::bnn_logits(f.net, f.weights, "fashion-mnist", imgs, true);
  CHECK(at::equal(lf.argmax(1), lp.argmax(1)));
  const double acc =
      lp.argmax(1).eq(fashion().test.labels.slice(0, 0, 1000)).to(at::kDouble).mean().item<double>();
  CHECK(acc == doctest::Approx(r.report.test_accuracy).epsilon(1e-12));
}

TEST_CASE("every binarizer trains, and XNOR / ReActNet packed paths match exactly") {
  if (!have_fashion()) return;
  core::NullProgress np;
  struct Case { binary::BnnArch arch; binary::BnnAct act; };
  for (const Case& c : {Case{binary::BnnArch::xnor, binary::BnnAct::sign},
                        Case{binary::BnnArch::bireal, binary::BnnAct::shift},
                        Case{binary::BnnArch::reactnet, binary::BnnAct::rsign},
                        Case{binary::BnnArch::reactnet, binary::BnnAct::insta_th},
                        Case{binary::BnnArch::reactnet, binary::BnnAct::insta_th_plus},
                        Case{binary::BnnArch::reactnet, binary::BnnAct::insta_prelu}}) {
    binary::BnnOptions o = small(c.arch, c.act);
    o.train_limit = 1000;
    o.test_limit = 500;
    if (c.act == binary::BnnAct::shift) o.net.shift = 0.3;
    at::manual_seed(2);
    const binary::BnnResult r = binary::train_bnn(fashion(), o, {}, np);
    CAPTURE(binary::to_string(c.arch));
    CAPTURE(binary::to_string(c.act));
    CHECK(std::isfinite(r.report.train_loss));
    CHECK(r.report.packed_agreement == 1.0);
    CHECK(r.report.packed_logits_equal);
    if (c.act == binary::BnnAct::insta_th_plus) {
      bool mlp = false;
      for (const auto& l : r.report.layers) mlp |= l.type == "insta-mlp";
      CHECK(mlp);
    }
  }
}

TEST_CASE("a positive threshold shift lowers the fraction of +1 activations") {
  if (!have_fashion()) return;
  core::NullProgress np;
  binary::BnnOptions o = small(binary::BnnArch::bireal, binary::BnnAct::shift);
  o.train_limit = 500;
  o.test_limit = 300;
  at::manual_seed(5);
  o.net.shift = 0.0;
  const auto a = binary::train_bnn(fashion(), o, {}, np);
  at::manual_seed(5);
  o.net.shift = 0.5;
  const auto b = binary::train_bnn(fashion(), o, {}, np);
  CHECK(b.report.act_plus_fraction[0] < a.report.act_plus_fraction[0]);
  CHECK(b.report.act_threshold_mean[0] == doctest::Approx(0.5));
}

TEST_CASE("two-step recipe, distillation from a teacher, and the real reference net") {
  if (!have_fashion()) return;
  core::NullProgress np;
  binary::BnnOptions t = small(binary::BnnArch::real);
  t.train_limit = 10000;
  at::manual_seed(3);
  const auto teacher = binary::train_bnn(fashion(), t, {}, np);
  CHECK(teacher.report.bops == 0);
  CHECK_FALSE(teacher.report.packed_checked);
  CHECK(teacher.report.test_accuracy > 0.4);  // 0.58 measured
  const fs::path tp = test::scratch("teacher.h5");
  fs::remove(tp);
  binary::write_bnn_model(tp, teacher, t, {"kvlab bnn-train", "", {}});

  binary::BnnOptions s = small(binary::BnnArch::reactnet);
  s.train_limit = 1000;
  s.recipe = binary::BnnRecipe::two_step;
  s.teacher = tp.string();
  at::manual_seed(3);
  const auto r = binary::train_bnn(fashion(), s, {}, np);
  CHECK(r.report.epoch_test_accuracy.size() == 2);  // one epoch per step
  CHECK(std::isfinite(r.report.train_loss));
  CHECK(r.report.bops > 0);
  CHECK(r.report.packed_logits_equal);
}

TEST_CASE("a stopped run resumes from its checkpoint to the same result as an unbroken run") {
  if (!have_fashion()) return;
  binary::BnnOptions o = small(binary::BnnArch::bireal);
  o.train_limit = 640;  // 10 batches per epoch
  o.test_limit = 200;
  o.epochs = 2;
  o.check_packed = false;
  core::NullProgress np;
  at::manual_seed(9);
  const auto full = binary::train_bnn(fashion(), o, {}, np);

  const fs::path ck = test::scratch("resume.ckpt.h5");
  fs::remove(ck);
  o.checkpoint = ck.string();
  at::manual_seed(9);
  StopAfter stop(13);  // mid second epoch
  const auto part = binary::train_bnn(fashion(), o, {}, stop);
  CHECK(part.report.stopped);
  REQUIRE(fs::exists(ck));
  o.resume = ck.string();
  at::manual_seed(12345);  // the checkpoint's RNG state must win
  const auto rest = binary::train_bnn(fashion(), o, {}, np);
  CHECK(rest.report.steps == full.report.steps);
  CHECK(rest.report.test_accuracy == full.report.test_accuracy);
  REQUIRE(rest.weights.size() == full.weights.size());
  for (std::size_t i = 0; i < full.weights.size(); ++i) {
    CAPTURE(full.weights[i].first);
    CHECK(at::equal(rest.weights[i].second, full.weights[i].second));
  }
  // A checkpoint from other options is refused with the differing option named.
  o.net.width = 16;
  CHECK(error_of([&] { binary::train_bnn(fashion(), o, {}, np); }, kExitUsage).find("width") !=
        std::string::npos);
}

TEST_CASE("bad combinations are usage errors naming the option") {
  binary::BnnNetConfig c;
  c.arch = binary::BnnArch::bireal;
  c.act = binary::BnnAct::insta_prelu;
  CHECK(error_of([&] { binary::resolve_net(c); }, kExitUsage).find("--arch reactnet") !=
        std::string::npos);
  c.act = binary::BnnAct::sign;
  c.shift = 0.2;
  CHECK(error_of([&] { binary::resolve_net(c); }, kExitUsage).find("--act shift") !=
        std::string::npos);
  c = {};
  c.arch = binary::BnnArch::real;
  c.act = binary::BnnAct::rsign;
  CHECK(error_of([&] { binary::resolve_net(c); }, kExitUsage).find("--arch real") !=
        std::string::npos);
  c = {};
  c.stages = 6;
  CHECK(error_of([&] { binary::resolve_net(c); }, kExitUsage).find("--stages 6") !=
        std::string::npos);
  c = {};
  c.arch = binary::BnnArch::reactnet;
  const auto r = binary::resolve_net(c);
  CHECK((r.act == binary::BnnAct::rsign));
  CHECK((r.ste == binary::BnnSte::approx));
}
