// The KV cache: append/gather/evict/overwrite bookkeeping, true bytes, per-page key min/max, and
// the attention kernel against a naive per-entry reference.
#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "kvlab/llm/attention.hpp"
#include "kvlab/llm/kv_cache.hpp"

using namespace kvlab;
using llm::LayerKV;

namespace {

LayerKV filled_layer(std::int64_t b, std::int64_t h, std::int64_t t, std::int64_t d,
                     std::int64_t page = 0) {
  llm::KVCacheOptions o;
  o.page_size = page;
  LayerKV kv(b, h, d, at::TensorOptions().dtype(at::kFloat), o);
  kv.append(at::randn({b, h, t, d}), at::randn({b, h, t, d}),
            at::arange(t, at::kLong).unsqueeze(0).expand({b, t}) + 100);
  return kv;
}

// Brute-force page min/max from the slots in use.
void check_pages(const LayerKV& kv) {
  const std::int64_t ps = kv.page_size();
  at::Tensor k = kv.keys(), valid = kv.valid();
  REQUIRE(kv.page_count() == (kv.length() + ps - 1) / ps);
  for (std::int64_t p = 0; p < kv.page_count(); ++p) {
    const std::int64_t s0 = p * ps, n = std::min(ps, kv.length() - s0);
    at::Tensor kp = k.narrow(2, s0, n), ok = valid.narrow(2, s0, n).unsqueeze(-1);
    const double inf = std::numeric_limits<double>::infinity();
    at::Tensor lo = std::get<0>(kp.masked_fill(ok.logical_not(), inf).min(2));
    at::Tensor hi = std::get<0>(kp.masked_fill(ok.logical_not(), -inf).max(2));
    CHECK(at::equal(kv.page_min().select(2, p), lo));
    CHECK(at::equal(kv.page_max().select(2, p), hi));
  }
}

// out[b,h,t] = sum_s softmax(q.k_s * scale) v_s over visible slots, one entry at a time.
at::Tensor naive_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const at::Tensor& kpos, const at::Tensor& qpos, std::int64_t window) {
  const std::int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const std::int64_t HK = k.size(1), L = k.size(2), G = H / HK;
  at::Tensor out = at::zeros_like(q, at::kDouble);
  auto qa = q.to(at::kDouble), ka = k.to(at::kDouble), va = v.to(at::kDouble);
  for (std::int64_t b = 0; b < B; ++b)
    for (std::int64_t h = 0; h < H; ++h)
      for (std::int64_t t = 0; t < T; ++t) {
        const std::int64_t p = qpos[b][t].item<std::int64_t>();
        std::vector<double> w;
        std::vector<std::int64_t> slots;
        double mx = -1e300;
        for (std::int64_t s = 0; s < L; ++s) {
          const std::int64_t kp = kpos[b][h / G][s].item<std::int64_t>();
          if (kp < 0 || kp > p || (window > 0 && kp <= p - window)) continue;
          const double sc = (qa[b][h][t] * ka[b][h / G][s]).sum().item<double>() / std::sqrt(double(D));
          w.push_back(sc);
          slots.push_back(s);
          mx = std::max(mx, sc);
        }
        double z = 0;
        for (double& x : w) z += (x = std::exp(x - mx));
        for (std::size_t i = 0; i < w.size(); ++i)
          out[b][h][t] += va[b][h / G][slots[i]] * (w[i] / z);
      }
  return out.to(q.scalar_type());
}

}  // namespace

TEST_CASE("kv cache: append keeps positions, grows capacity without losing entries") {
  at::manual_seed(1);
  LayerKV kv = filled_layer(2, 3, 5, 4);
  CHECK(kv.length() == 5);
  CHECK_FALSE(kv.has_holes());
  at::Tensor k0 = kv.keys().clone();
  at::Tensor k1 = at::randn({2, 3, 200, 4});
  kv.append(k1, at::randn({2, 3, 200, 4}), at::arange(200, at::kLong).unsqueeze(0).expand({2, 200}) + 105);
  CHECK(kv.length() == 205);
  CHECK(kv.capacity() >= 205);
  CHECK(at::equal(kv.keys().narrow(2, 0, 5), k0));
  CHECK(at::equal(kv.keys().narrow(2, 5, 200), k1));
  CHECK(kv.positions()[1][2][204].item<std::int64_t>() == 304);
  // Padding positions make empty slots.
  kv.append(at::randn({2, 3, 1, 4}), at::randn({2, 3, 1, 4}), at::tensor({-1, 400}, at::kLong).view({2, 1}));
  CHECK(kv.has_holes());
  CHECK(at::equal(kv.entry_counts(), at::tensor({205, 205, 205, 206, 206, 206}, at::kLong).view({2, 3})));
}

TEST_CASE("kv cache: gather keeps exactly the named entries per head and frees memory") {
  at::manual_seed(2);
  LayerKV kv = filled_layer(1, 2, 40, 8);
  const std::uint64_t before = kv.bytes();
  at::Tensor keys = kv.keys().clone(), vals = kv.values().clone();
  // Head 0 keeps slots 3, 17, 39; head 1 keeps slot 5 only (ragged budgets).
  at::Tensor idx = at::tensor({3, 17, 39, 5, -1, -1}, at::kLong).view({1, 2, 3});
  kv.gather(idx);
  CHECK(kv.length() == 3);
  CHECK(kv.capacity() == 3);
  CHECK(kv.bytes() < before / 10);
  CHECK(at::equal(kv.entry_counts(), at::tensor({3, 1}, at::kLong).view({1, 2})));
  CHECK(at::equal(kv.positions()[0][0], at::tensor({103, 117, 139}, at::kLong)));
  CHECK(at::equal(kv.positions()[0][1], at::tensor({105, -1, -1}, at::kLong)));
  CHECK(at::equal(kv.keys()[0][0][1], keys[0][0][17]));
  CHECK(at::equal(kv.values()[0][1][0], vals[0][1][5]));
  CHECK(kv.has_holes());
  // Bytes are what the tensors hold: K, V (float32) and positions (int64).
  CHECK(kv.bytes() == 2u * 1 * 2 * 3 * 8 * 4 + 1u * 2 * 3 * 8);
}

TEST_CASE("kv cache: evict drops entries in order; shrink_to_fit trims shared empty tail") {
  at::manual_seed(3);
  LayerKV kv = filled_layer(2, 2, 10, 4);
  at::Tensor drop = at::zeros({2, 2, 10}, at::kBool);
  drop[0][0].narrow(0, 0, 5).fill_(true);  // head (0,0) keeps 5..9
  drop[1][1].fill_(true);
  drop[1][1][7] = false;                    // head (1,1) keeps only 7
  const std::int64_t kept = kv.evict(drop);
  CHECK(kept == 5 + 10 + 10 + 1);
  CHECK(kv.length() == 10);
  CHECK(at::equal(kv.positions()[0][0].narrow(0, 0, 5), at::arange(105, 110, at::kLong)));
  CHECK(kv.positions()[0][0][5].item<std::int64_t>() == -1);
  CHECK(kv.positions()[1][1][0].item<std::int64_t>() == 107);
  // Evict the second half everywhere: every head ends with empty slots, shrink_to_fit trims them.
  at::Tensor late = kv.positions().ge(105);
  kv.evict(late);
  CHECK(kv.length() == 5);
  kv.shrink_to_fit();
  CHECK(kv.length() == 5);  // heads (0,1) etc. still hold 100..104
  at::Tensor all = at::ones({2, 2, 5}, at::kBool);
  all[0][1][0] = false;
  kv.evict(all);
  kv.shrink_to_fit();
  CHECK(kv.length() == 1);
  CHECK(kv.positions()[0][1][0].item<std::int64_t>() == 100);
}

TEST_CASE("kv cache: overwrite rewrites past entries found by position") {
  at::manual_seed(4);
  LayerKV kv = filled_layer(2, 2, 6, 4, /*page=*/4);
  at::Tensor slots = kv.find_slots(at::tensor({102, 999, 105, 100}, at::kLong).view({2, 2}));
  CHECK(at::equal(slots[0][1], at::tensor({2, -1}, at::kLong)));
  CHECK(at::equal(slots[1][0], at::tensor({5, 0}, at::kLong)));
  at::Tensor nk = at::full({2, 2, 2, 4}, 7.0), nv = at::full({2, 2, 2, 4}, -7.0);
  at::Tensor before = kv.keys().clone();
  kv.overwrite(slots, nk, nv);
  CHECK(kv.length() == 6);
  CHECK(kv.keys()[0][0][2][0].item<float>() == 7.0f);
  CHECK(kv.values()[1][1][0][3].item<float>() == -7.0f);
  CHECK(kv.keys()[1][1][5][1].item<float>() == 7.0f);
  CHECK(at::equal(kv.keys()[0][0][1], before[0][0][1]));  // untouched
  CHECK(at::equal(kv.positions(), at::arange(6, at::kLong).view({1, 1, 6}).expand({2, 2, 6}) + 100));
  check_pages(kv);
}

TEST_CASE("kv cache: page min/max stay exact through append, gather, and bound q.k") {
  at::manual_seed(5);
  LayerKV kv = filled_layer(1, 2, 13, 8, /*page=*/4);
  check_pages(kv);
  for (int i = 0; i < 6; ++i) {
    kv.append(at::randn({1, 2, 1, 8}), at::randn({1, 2, 1, 8}), at::tensor({200 + i}, at::kLong).view({1, 1}));
    check_pages(kv);
  }
  kv.gather(at::tensor({0, 2, 3, 7, 8, 18, -1, 1, 4, 5, 6, 9, 10, 11}, at::kLong).view({1, 2, 7}));
  check_pages(kv);
  // Quest's page score sum_i max(q_i min_i, q_i max_i) bounds q.k of every key in the page.
  at::Tensor q = at::randn({8});
  for (std::int64_t h = 0; h < 2; ++h)
    for (std::int64_t p = 0; p < kv.page_count(); ++p) {
      const double bound = at::maximum(q * kv.page_min()[0][h][p], q * kv.page_max()[0][h][p]).sum().item<double>();
      for (std::int64_t s = p * 4; s < std::min<std::int64_t>((p + 1) * 4, kv.length()); ++s)
        if (kv.positions()[0][h][s].item<std::int64_t>() >= 0)
          CHECK((q * kv.keys()[0][h][s]).sum().item<double>() <= bound + 1e-5);
    }
}

TEST_CASE("attention: GQA, masks by original position, holes, padding and sliding window") {
  at::manual_seed(6);
  const std::int64_t B = 2, H = 6, HK = 2, D = 8, L = 9, T = 3;
  at::Tensor k = at::randn({B, HK, L, D}), v = at::randn({B, HK, L, D});
  // Scattered original positions with holes, different per head.
  at::Tensor kpos = at::tensor({0, 3, 4, 9, 10, -1, 12, 20, 21,  1, 2, -1, -1, 8, 15, 19, 20, 22,
                                5, 6, 7, 8, 9, 10, 11, 12, 13,  -1, 0, 1, 2, 3, 4, 5, 6, 7},
                               at::kLong).view({B, HK, L});
  at::Tensor qpos = at::tensor({10, 20, 22, -1, 6, 7}, at::kLong).view({B, T});
  at::Tensor q = at::randn({B, H, T, D});
  for (std::int64_t window : {0, 4}) {
    llm::AttentionOptions o;
    o.queries_padded = true;
    if (window) o.sliding_window = window;
    at::Tensor got = llm::attention(q, k, v, kpos, qpos, o);
    at::Tensor want = naive_attention(q, k, v, kpos, qpos, window);
    // Row (1, 0) is a padding query: its output is unspecified; compare the others.
    CHECK(at::allclose(got.select(0, 0), want.select(0, 0), 1e-5, 1e-5));
    CHECK(at::allclose(got.select(0, 1).narrow(1, 1, 2), want.select(0, 1).narrow(1, 1, 2), 1e-5, 1e-5));
    o.force_manual = true;
    at::Tensor man = llm::attention(q, k, v, kpos, qpos, o);
    CHECK(at::allclose(man.select(0, 0), want.select(0, 0), 1e-5, 1e-5));
  }
  // Decode fast path (no mask) equals the reference.
  at::Tensor kp2 = at::arange(L, at::kLong).view({1, 1, L}).expand({B, HK, L}).contiguous();
  at::Tensor q1 = at::randn({B, H, 1, D});
  at::Tensor qp1 = at::full({B, 1}, L, at::kLong);
  llm::AttentionOptions o;
  o.key_holes = false;
  CHECK(at::allclose(llm::attention(q1, k, v, kp2, qp1, o), naive_attention(q1, k, v, kp2, qp1, 0), 1e-5, 1e-5));
}

TEST_CASE("attention_probs: rows are distributions over visible slots") {
  at::manual_seed(7);
  LayerKV kv = filled_layer(1, 2, 7, 4);
  kv.evict(at::tensor({0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1}, at::kLong).to(at::kBool).view({1, 2, 7}));
  at::Tensor q = at::randn({1, 4, 2, 4});
  at::Tensor qpos = at::tensor({104, 106}, at::kLong).view({1, 2});
  at::Tensor p = llm::attention_probs(q, kv, qpos, {});
  CHECK(p.sizes() == at::IntArrayRef({1, 4, 2, kv.length()}));
  CHECK(at::allclose(p.sum(-1), at::ones({1, 4, 2})));
  // Query at 104 cannot see the entry at position 105 or 106.
  at::Tensor future = kv.positions().gt(104).unsqueeze(2).repeat_interleave(2, 1);  // [1, 4, 1, L]
  CHECK(p.narrow(2, 0, 1).masked_select(future).abs().sum().item<double>() == 0.0);
}
