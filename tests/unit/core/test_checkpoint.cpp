// Checkpoint artifacts: a full round trip (model, optimizer, RNG, counters, extra state), atomic
// replacement, the trainer check, --resume resolution and strict name/shape loading.
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <filesystem>

#include "../test_util.hpp"
#include "kvlab/core/artifact.hpp"
#include "kvlab/core/checkpoint.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/schema.hpp"

using kvlab::test::error_of;

using namespace kvlab;
namespace fs = std::filesystem;

namespace {

core::Checkpoint sample() {
  core::Checkpoint ck;
  ck.trainer = "bnn-train";
  ck.stage = "step2";
  ck.epoch = 3;
  ck.step = 1234;
  ck.step_in_epoch = 17;
  ck.options_json = R"({"arch":"bireal"})";
  ck.model = {{"stem.conv.weight", at::randn({4, 1, 3, 3})},
              {"stem.bn.running_mean", at::randn({4})},
              {"fc.bias", at::randn({10})},
              {"bn.num_batches_tracked", at::tensor(std::int64_t{7})}};
  ck.optimizer = {{"adam.0.exp_avg", at::randn({4, 1, 3, 3})}, {"adam.0.step", at::tensor(5.0)}};
  ck.torch_rng = core::torch_rng_state();
  ck.scalars = {{"lr", 5e-4}, {"best", 0.75}};
  ck.text = {{"data_rng", "12 34 56"}};
  return ck;
}


}  // namespace

TEST_CASE("checkpoint round trip keeps every tensor, counter and state bit-exact") {
  const fs::path p = test::scratch("ck.h5");
  fs::remove(p);
  const core::Checkpoint a = sample();
  core::write_checkpoint(p, a, {"kvlab bnn-train", "", {}});
  const core::Checkpoint b = core::read_checkpoint(p, "bnn-train");
  CHECK(b.trainer == "bnn-train");
  CHECK(b.stage == "step2");
  CHECK(b.epoch == 3);
  CHECK(b.step == 1234);
  CHECK(b.step_in_epoch == 17);
  CHECK(b.options_json == a.options_json);
  REQUIRE(b.model.size() == a.model.size());
  for (const auto& [n, t] : a.model) {
    CAPTURE(n);
    bool found = false;
    for (const auto& [m, u] : b.model)
      if (m == n) {
        found = true;
        CHECK((u.scalar_type() == t.scalar_type()));
        CHECK(at::equal(u, t));
      }
    CHECK(found);
  }
  REQUIRE(b.optimizer.size() == 2);
  CHECK(b.scalars.at("lr") == 5e-4);
  CHECK(b.text.at("data_rng") == "12 34 56");
  REQUIRE(b.torch_rng.defined());
  CHECK(at::equal(b.torch_rng, a.torch_rng));
  // The stored model group uses nested groups, not dotted names (\w-only HDF5 paths).
  const auto r = core::ArtifactReader::open(p, "checkpoint", 1, 1);
  CHECK(r.root().has_dataset("model/stem/conv/weight"));
  CHECK(r.params().attr_int("step") == 1234);
}

TEST_CASE("restoring the RNG state replays the same random numbers") {
  const at::Tensor s = core::torch_rng_state();
  const at::Tensor x = at::rand({8});
  core::set_torch_rng_state(s);
  const at::Tensor y = at::rand({8});
  CHECK(at::equal(x, y));
}

TEST_CASE("a checkpoint is replaced atomically and leaves no partial file") {
  const fs::path p = test::scratch("ck-atomic.h5");
  fs::remove(p);
  core::Checkpoint a = sample();
  core::write_checkpoint(p, a, {"kvlab bnn-train", "", {}});
  a.step = 2000;
  core::write_checkpoint(p, a, {"kvlab bnn-train", "", {}});
  CHECK(core::read_checkpoint(p).step == 2000);
  CHECK(core::leftover_partials(p).empty());
}

TEST_CASE("checkpoint errors: wrong trainer, wrong kind, --resume resolution") {
  const fs::path p = test::scratch("ck-trainer.h5");
  fs::remove(p);
  core::write_checkpoint(p, sample(), {"kvlab bnn-train", "", {}});
  CHECK(error_of([&] { core::read_checkpoint(p, "snn-train"); }, kExitBadFile)
            .find("written by bnn-train but this is snn-train") != std::string::npos);
  const fs::path other = test::scratch("not-ck.h5");
  fs::remove(other);
  {
    core::ArtifactWriter w(other, "selfcheck-report", 1, 0, {"x", "", {}});
    w.commit();
  }
  CHECK(error_of([&] { core::read_checkpoint(other); }, kExitBadFile)
            .find("needs \"checkpoint\"") != std::string::npos);

  CHECK_FALSE(core::resolve_resume("", p).has_value());
  CHECK(core::resolve_resume("auto", p).value() == p);
  CHECK_FALSE(core::resolve_resume("auto", test::scratch("none.h5")).has_value());
  CHECK(error_of([&] { core::resolve_resume(test::scratch("none.h5").string(), p); }, kExitUsage)
            .find("--resume") != std::string::npos);
}

TEST_CASE("load_named_tensors is strict about names and shapes") {
  at::Tensor w = at::zeros({2, 3});
  const core::NamedTensors dst = {{"w", w}};
  core::load_named_tensors({{"w", at::ones({2, 3})}}, dst, "f.h5");
  CHECK(w.sum().item<float>() == 6.0f);
  CHECK(error_of([&] { core::load_named_tensors({{"w", at::ones({3, 2})}}, dst, "f.h5"); },
                 kExitBadFile)
            .find("has shape 3x2 but the model expects 2x3") != std::string::npos);
  CHECK(error_of([&] { core::load_named_tensors({{"v", at::ones({2, 3})}}, dst, "f.h5"); },
                 kExitBadFile)
            .find("\"w\" is missing") != std::string::npos);
  CHECK(error_of([&] {
          core::load_named_tensors({{"w", at::ones({2, 3})}, {"extra", at::ones({1})}}, dst,
                                   "f.h5");
        },
                 kExitBadFile)
            .find("\"extra\"") != std::string::npos);
}
