#include "kvlab/compress/kv_methods.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "kvlab/core/error.hpp"

namespace kvlab::compress {

std::int64_t Budget::resolve(std::int64_t context, const std::string& what) const {
  if (is_ratio)
    return std::max<std::int64_t>(1, static_cast<std::int64_t>(std::floor(ratio * static_cast<double>(context))));
  KVLAB_THROW_IF(tokens > context, UsageError,
                 "--budget {}: {} tokens is above the context of {} ({} tokens); give a smaller "
                 "count or a ratio such as 0.25",
                 text, tokens, what, context);
  return tokens;
}

Budget parse_budget(const std::string& s) {
  Budget b;
  b.text = s;
  std::string t = s;
  bool percent = false;
  if (!t.empty() && t.back() == '%') {
    percent = true;
    t.pop_back();
  }
  KVLAB_THROW_IF(t.empty(), UsageError,
                 "--budget \"{}\": expected a ratio in (0, 1] (0.25 or 25%) or a token count (512)", s);
  char* end = nullptr;
  const bool integer = !percent && t.find_first_not_of("0123456789") == std::string::npos;
  if (integer) {
    const long long v = std::strtoll(t.c_str(), &end, 10);
    KVLAB_THROW_IF(v < 1, UsageError,
                   "--budget {}: a token count must be at least 1 (or give a ratio in (0, 1])", s);
    // "1" is the whole context (ratio 1), the natural reading; any larger integer is a count.
    if (v == 1) {
      b.ratio = 1.0;
      return b;
    }
    b.is_ratio = false;
    b.tokens = v;
    return b;
  }
  const double v = std::strtod(t.c_str(), &end);
  KVLAB_THROW_IF(end == t.c_str() || *end != '\0' || !std::isfinite(v), UsageError,
                 "--budget \"{}\": expected a ratio in (0, 1] (0.25 or 25%) or a token count (512)", s);
  const double r = percent ? v / 100.0 : v;
  KVLAB_THROW_IF(!(r > 0.0 && r <= 1.0), UsageError,
                 "--budget {}: a ratio must be in (0, 1] (a fraction of the context); for an "
                 "absolute budget give a whole token count such as 512",
                 s);
  b.ratio = r;
  return b;
}

const std::vector<KvMethodInfo>& kv_methods() {
  static const std::vector<KvMethodInfo> m = {
      {"full", "no compression (every entry kept)", false, false},
      {"streaming", "StreamingLLM: attention sinks + recent window (kvpress scores)", true, true},
      {"h2o", "H2O: heavy hitters by accumulated attention + recent window, evicting while decoding", true, true},
      {"tova", "TOVA: last query's attention averaged over heads (kvpress), evicting while decoding", true, true},
      {"snapkv", "SnapKV as kvpress defines it (window, avg pool, GQA mean, window kept); prompt only", false, true},
      {"pyramidkv", "PyramidKV: SnapKV scores with pyramid layer budgets (kvpress); prompt only", false, true},
      {"knorm", "Knorm: keep the keys of smallest L2 norm (kvpress); prompt only", false, true},
      {"rpc", "Reasoning Path Compression (official RPCCluster): compresses generated tokens every P steps; budget caps the kept generated tokens", true, true},
      {"quest", "Quest: query-aware page selection per decode step (nothing evicted: memory is full)", true, true},
      {"retro", "RetroAttention on Quest: past queries' outputs revised with newly loaded pages (nothing evicted)", true, true},
      {"fastkv", "FastKV (official FastKVCluster): GQA-aware per-layer compression + token-selective propagation; budget = entries per layer", false, true},
  };
  return m;
}

const KvMethodInfo& find_kv_method(const std::string& name) {
  std::string known;
  for (const auto& m : kv_methods()) {
    if (m.name == name) return m;
    known += (known.empty() ? "" : ", ") + m.name;
  }
  KVLAB_THROW(UsageError, "--method {}: unknown KV-cache method; known methods: {}", name, known);
}

std::unique_ptr<llm::CachePolicy> make_kv_policy(const std::string& name, const KvMethodOptions& o,
                                                 std::int64_t budget_tokens,
                                                 const llm::ModelConfig& /*cfg*/) {
  const KvMethodInfo& m = find_kv_method(name);
  if (m.name == "rpc") return std::make_unique<RpcPolicy>(o.rpc, budget_tokens);
  if (m.name == "fastkv") return std::make_unique<FastKVPolicy>(o.fastkv, budget_tokens);
  if (m.name == "quest") return std::make_unique<QuestPolicy>(o.quest, budget_tokens);
  if (m.name == "retro") {
    RetroOptions r = o.retro;
    r.quest = o.quest;
    return std::make_unique<RetroPolicy>(r, budget_tokens);
  }
  return make_baseline(m.name, o.baseline, budget_tokens);
}

llm::KVCacheOptions kv_cache_options(const llm::CachePolicy& policy) {
  if (const auto* q = dynamic_cast<const QuestPolicy*>(&policy)) return q->cache_options();
  return {};
}

std::map<std::string, double> kv_policy_stats(const std::vector<std::shared_ptr<llm::CachePolicy>>& policies) {
  std::map<std::string, double> out;
  SparseReadStats sum;
  bool sparse = false;
  double rpc_compressions = 0;
  bool rpc = false;
  for (const auto& p : policies) {
    if (const auto* q = dynamic_cast<const QuestPolicy*>(p.get())) {
      const SparseReadStats& s = q->stats();
      sparse = true;
      sum.decode_steps += s.decode_steps;
      sum.sparse_queries += s.sparse_queries;
      sum.entries_visible += s.entries_visible;
      sum.entries_read += s.entries_read;
      sum.supplementary_entries += s.supplementary_entries;
      sum.exposure += s.exposure;
    } else if (const auto* r = dynamic_cast<const RpcPolicy*>(p.get())) {
      rpc = true;
      rpc_compressions += static_cast<double>(r->compressions());
    }
  }
  if (sparse) {
    out["sparse_queries"] = static_cast<double>(sum.sparse_queries);
    out["read_fraction"] = sum.read_fraction();
    out["exposure_ratio"] = sum.exposure_ratio();
    out["exposure_per_query"] = sum.exposure_per_query();
    out["supplementary_entries"] = sum.supplementary_entries;
  }
  if (rpc) out["rpc_layer_compressions"] = rpc_compressions;
  return out;
}

std::string kv_method_settings(const std::string& name, const KvMethodOptions& o) {
  nlohmann::json j = nlohmann::json::object();
  const BaselineOptions& b = o.baseline;
  if (name == "streaming") j["sinks"] = b.streaming_sinks;
  else if (name == "snapkv") j = {{"window", b.snapkv_window}, {"kernel", b.snapkv_kernel}};
  else if (name == "pyramidkv")
    j = {{"window", b.pyramidkv_window}, {"kernel", b.pyramidkv_kernel}, {"beta", b.pyramidkv_beta}};
  else if (name == "h2o") j["heavy_ratio"] = b.h2o_heavy_ratio;
  else if (name == "rpc") {
    const RpcOptions& r = o.rpc;
    j = {{"interval", r.interval}, {"window", r.window}, {"ratio", r.ratio}, {"selectors", r.selectors},
         {"aggregation", r.aggregation}, {"pooling", r.pooling}, {"kernel_size", r.kernel_size},
         {"keep_prompt", r.keep_prompt}, {"duplicate_current_query", r.duplicate_current_query}};
  } else if (name == "quest" || name == "retro") {
    const QuestOptions& q = o.quest;
    j = {{"page_size", q.page_size}, {"dense_layers", q.dense_layers}, {"min_pages", q.min_pages},
         {"gqa", q.gqa == QuestGqa::per_head ? "per-head" : "kv-head-max"}};
    if (name == "retro")
      j.update({{"window", o.retro.window}, {"merge_weight", o.retro.merge_weight},
                {"past_query", o.retro.past_query == RetroPastQuery::updated ? "updated" : "original"},
                {"update_kv", o.retro.update_kv}});
  } else if (name == "fastkv") {
    const FastKVOptions& f = o.fastkv;
    j = {{"tsp_layer", f.tsp_layer}, {"mode", f.mode}, {"retain_rate", f.retain_rate},
         {"max_capacity", f.max_capacity}, {"tsp_rate", f.tsp_rate}, {"tsp_length", f.tsp_length},
         {"window", f.window}, {"kernel_size", f.kernel_size}, {"pooling", f.pooling}};
  }
  return j.dump();
}

}  // namespace kvlab::compress
