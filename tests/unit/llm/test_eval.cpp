// Perplexity evaluation: chunked teacher-forced scoring == one-shot scoring == the logits of a
// plain forward; the window protocol, the error bar, the eval-report artifact; the token-file
// readers and their refusals.
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>

#include "../test_util.hpp"
#include "kvlab/core/artifact.hpp"
#include "kvlab/core/error.hpp"
#include "kvlab/core/h5.hpp"
#include "kvlab/core/schema.hpp"
#include "kvlab/llm/data.hpp"
#include "kvlab/llm/eval.hpp"
#include "kvlab/llm/schemas.hpp"
#include "tiny_model.hpp"

using namespace kvlab;

TEST_CASE("eval: chunked scoring == one-shot scoring == log-softmax of a plain forward") {
  llm::Model m = test::tiny_llm(llm::Arch::llama);
  at::manual_seed(11);
  at::Tensor toks = at::randint(64, {2, 23}, at::kLong);
  at::Tensor one = llm::score_tokens(m, toks, 0);
  CHECK(one.sizes() == at::IntArrayRef({2, 22}));
  for (std::int64_t chunk : {1, 4, 7, 22, 100}) {
    CAPTURE(chunk);
    CHECK(at::allclose(llm::score_tokens(m, toks, chunk), one, 1e-5, 1e-5));
  }
  auto cache = m.make_cache(2);
  at::Tensor lp = at::log_softmax(m.forward(toks, test::arange_positions(2, 23), cache), -1);
  at::Tensor want = -lp.narrow(1, 0, 22).gather(2, toks.narrow(1, 1, 22).unsqueeze(-1)).squeeze(-1);
  CHECK(at::allclose(one, want, 1e-5, 1e-6));
}

TEST_CASE("eval: windows, dropped tail, mean of window losses and its error bar") {
  llm::Model m = test::tiny_llm(llm::Arch::qwen2);
  at::manual_seed(12);
  at::Tensor ids = at::randint(64, {53}, at::kLong);
  llm::EvalOptions o;
  o.seq_len = 10;
  o.batch_size = 2;
  core::NullProgress np;
  llm::EvalResult r = llm::evaluate_perplexity(m, ids, o, np);
  REQUIRE(r.window_loss.size() == 5);
  CHECK(r.tokens_dropped == 3);
  CHECK(r.tokens_scored == 45);
  CHECK(r.window_start[4] == 40);
  double sum = 0;
  for (int w = 0; w < 5; ++w) {
    const double lw = llm::score_tokens(m, ids.narrow(0, w * 10, 10).view({1, 10}), 0).mean().item<double>();
    CHECK(r.window_loss[static_cast<std::size_t>(w)] == doctest::Approx(lw).epsilon(1e-6));
    sum += lw;
  }
  CHECK(r.mean_loss == doctest::Approx(sum / 5).epsilon(1e-6));
  CHECK(r.ppl == doctest::Approx(std::exp(r.mean_loss)));
  double var = 0;
  for (double x : r.window_loss) var += (x - r.mean_loss) * (x - r.mean_loss);
  CHECK(r.loss_stderr == doctest::Approx(std::sqrt(var / 4 / 5)));
  CHECK(r.ppl_ci_low < r.ppl);
  CHECK(r.ppl_ci_high > r.ppl);
  // Batching windows does not change the numbers; max_windows limits them.
  o.batch_size = 1;
  o.chunk_size = 3;
  o.max_windows = 2;
  llm::EvalResult r2 = llm::evaluate_perplexity(m, ids, o, np);
  REQUIRE(r2.window_loss.size() == 2);
  CHECK(r2.window_loss[1] == doctest::Approx(r.window_loss[1]).epsilon(1e-6));
  // Too little data for one window.
  o.seq_len = 54;
  CHECK_THROWS_WITH_AS(llm::evaluate_perplexity(m, ids, o, np), doctest::Contains("--seq-len"), UsageError);
}

TEST_CASE("eval: the eval-report artifact holds the result and validates") {
  llm::Model m = test::tiny_llm();
  at::manual_seed(13);
  llm::EvalOptions o;
  o.seq_len = 8;
  core::NullProgress np;
  llm::EvalResult r = llm::evaluate_perplexity(m, at::randint(64, {40}, at::kLong), o, np);
  const auto path = test::scratch("eval-report.h5");
  std::filesystem::remove(path);
  llm::write_eval_report(path, r, o, {"m.h5", "d.bin", "bin-u16", "float32", "cpu"}, {});
  auto rd = core::ArtifactReader::open(path, llm::kEvalReportKind, 1, 1);
  CHECK(rd.root().attr_double("ppl") == doctest::Approx(r.ppl));
  CHECK(rd.params().attr_int("seq_len") == 8);
  CHECK(rd.params().attr_string("protocol") == llm::kEvalProtocol);
  CHECK(rd.root().read_vec<double>("window_loss") == r.window_loss);
  core::SchemaRegistry reg;
  llm::register_schemas(reg);
  CHECK(core::validate(rd, reg).empty());
  // The format page lists every key the writer emits.
  const std::string doc = test::read_file(test::source_path("docs/formats/eval-report.md"));
  for (const char* k : {"seq_len", "batch_size", "chunk_size", "max_windows", "protocol", "dtype",
                        "device", "model_path", "data_path", "data_format", "ppl", "mean_loss",
                        "loss_stderr", "ppl_ci_low", "ppl_ci_high", "bits_per_token", "windows",
                        "tokens_total", "tokens_scored", "tokens_dropped", "seconds",
                        "tokens_per_second", "window_loss", "window_start"})
    CHECK_MESSAGE(doc.find(std::string("`") + k + "`") != std::string::npos, k);
}

TEST_CASE("data: nanoGPT .bin, .npy, HDF5 and text readers") {
  const std::vector<std::uint16_t> u16 = {1, 2, 300, 65535};
  const auto b16 = test::scratch("t16.bin");
  test::write_file(b16, std::string(reinterpret_cast<const char*>(u16.data()), 8));
  llm::TokenFileOptions o;
  auto d = llm::read_tokens(b16, o, 65536, false);
  CHECK(d.format == llm::TokenFileFormat::bin_u16);
  CHECK(at::equal(d.ids, at::tensor({1, 2, 300, 65535}, at::kLong)));
  // The same bytes as uint32 ids.
  o.format = llm::TokenFileFormat::bin_u32;
  d = llm::read_tokens(b16, o, 0, false);
  CHECK(d.ids.numel() == 2);
  CHECK(d.ids[0].item<std::int64_t>() == 1 + (2 << 16));
  // An odd byte count is not a uint16 file; ids beyond the vocabulary are refused with the index.
  o.format = llm::TokenFileFormat::automatic;
  test::write_file(test::scratch("odd.bin"), "abc");
  CHECK_THROWS_WITH_AS(llm::read_tokens(test::scratch("odd.bin"), o, 100, false),
                       doctest::Contains("3 bytes is not a whole number of uint16"), FormatError);
  CHECK_THROWS_WITH_AS(llm::read_tokens(b16, o, 1000, false),
                       doctest::Contains("token id 65535 at index 3"), FormatError);

  const auto npy = test::scratch("t.npy");
  llm::write_npy_i64(npy, {5, 6, 7, 8, 9, 10}, {2, 3});
  d = llm::read_tokens(npy, o, 64, false);
  CHECK((d.shape == std::vector<std::int64_t>{2, 3}));
  CHECK(at::equal(d.ids, at::arange(5, 11, at::kLong)));
  // A hand-written uint16 .npy as numpy writes it.
  std::string hdr = "{'descr': '<u2', 'fortran_order': False, 'shape': (3,), }";
  hdr.append(128 - 10 - hdr.size() - 1, ' ');
  hdr += "\n";
  std::string raw = std::string("\x93NUMPY\x01\x00", 8) + char(hdr.size()) + char(0) + hdr;
  const std::uint16_t three[3] = {7, 0, 513};
  raw.append(reinterpret_cast<const char*>(three), 6);
  test::write_file(test::scratch("u2.npy"), raw);
  CHECK(at::equal(llm::read_tokens(test::scratch("u2.npy"), o, 1000, false).ids, at::tensor({7, 0, 513}, at::kLong)));
  std::string bad = raw;
  bad.replace(bad.find("<u2"), 3, "<f4");
  test::write_file(test::scratch("f4.npy"), bad);
  CHECK_THROWS_WITH_AS(llm::read_tokens(test::scratch("f4.npy"), o, 1000, false),
                       doctest::Contains("not an integer type"), FormatError);
  test::write_file(test::scratch("trunc.npy"), raw.substr(0, raw.size() - 1));
  CHECK_THROWS_WITH_AS(llm::read_tokens(test::scratch("trunc.npy"), o, 1000, false),
                       doctest::Contains("needs 6 bytes, the file has 5"), FormatError);

  const auto h5p = test::scratch("t.h5");
  {
    auto f = h5::File::create(h5p);
    auto g = f.root();
    g.write_vec<std::int32_t>("ids", {3, 1, 4, 1, 5});
    g.write_vec<float>("weights", {1.f});
  }
  o.dataset = "ids";
  CHECK(at::equal(llm::read_tokens(h5p, o, 64, false).ids, at::tensor({3, 1, 4, 1, 5}, at::kLong)));
  o.dataset = "nope";
  CHECK_THROWS_WITH_AS(llm::read_tokens(h5p, o, 64, false), doctest::Contains("--data-dataset"), FormatError);
  o.dataset = "weights";
  CHECK_THROWS_WITH_AS(llm::read_tokens(h5p, o, 64, false), doctest::Contains("not an integer type"), FormatError);

  const auto txt = test::scratch("t.txt");
  test::write_file(txt, "In the beginning \xc3\xa9");
  o = {};
  d = llm::read_tokens(txt, o, 259, true);
  CHECK(d.format == llm::TokenFileFormat::text);
  CHECK(d.ids.numel() == 19);
  CHECK(d.ids[18].item<std::int64_t>() == 0xa9);
  CHECK(llm::ids_to_bytes(llm::bytes_to_ids("abc\n")) == "abc\n");
  CHECK_THROWS_WITH_AS(llm::read_tokens(txt, o, 32000, false), doctest::Contains("not byte-level"), UsageError);
  CHECK_THROWS_AS(llm::read_tokens(test::scratch("missing.bin"), o, 64, false), FormatError);
}
