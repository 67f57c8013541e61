// The kv-eval method registry (docs/kv-eval.md): method names -> CachePolicy factories, with each
// method's options (official defaults, bound to per-method CLI options such as --snapkv-window),
// and KV budgets given as a ratio of the context or an absolute token count.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kvlab/compress/fastkv.hpp"
#include "kvlab/compress/kv_baselines.hpp"
#include "kvlab/compress/quest.hpp"
#include "kvlab/compress/retro.hpp"
#include "kvlab/compress/rpc.hpp"
#include "kvlab/llm/config.hpp"
#include "kvlab/llm/kv_cache.hpp"

namespace kvlab::compress {

/// A KV budget: "0.25" or "25%" (a ratio in (0, 1] of the task's context) or "512" (tokens).
struct Budget {
  std::string text;      ///< as given
  bool is_ratio = true;
  double ratio = 1.0;    ///< when is_ratio
  std::int64_t tokens = 0;  ///< when !is_ratio

  /// Entries kept per layer and KV head for a context of `context` tokens: floor(ratio *
  /// context) (at least 1), or the token count. UsageError naming `what` when an absolute budget
  /// exceeds the context.
  std::int64_t resolve(std::int64_t context, const std::string& what) const;
};

/// Parses one budget; UsageError (exit 2) for anything outside (0, 1] as a ratio or < 1 as a count.
Budget parse_budget(const std::string& s);

/// Options of every method (defaults: the official code's). The CLI binds each field.
struct KvMethodOptions {
  BaselineOptions baseline;
  RpcOptions rpc;        ///< rpc.hpp (the rpc/fastkv helper's)
  FastKVOptions fastkv;  ///< fastkv.hpp
  QuestOptions quest;    ///< quest.hpp (the quest/retro helper's)
  RetroOptions retro;    ///< retro.hpp (its `quest` member is replaced by `quest` above)
};

struct KvMethodInfo {
  std::string name;
  std::string description;
  bool decode_time = false;  ///< compresses while decoding (not only the prompt)
  bool uses_budget = true;   ///< false: full
};

/// Every method kv-eval knows, in table order.
const std::vector<KvMethodInfo>& kv_methods();
/// The method's entry; UsageError listing the known methods otherwise.
const KvMethodInfo& find_kv_method(const std::string& name);

/// A fresh policy (one per sequence batch: policies keep per-sequence state). budget_tokens is
/// ignored by full. Invalid options: UsageError naming the option.
std::unique_ptr<llm::CachePolicy> make_kv_policy(const std::string& name, const KvMethodOptions& o,
                                                 std::int64_t budget_tokens,
                                                 const llm::ModelConfig& cfg);

/// The KV-cache options a cache must be created with for this policy (page metadata for
/// Quest-style methods; defaults otherwise).
llm::KVCacheOptions kv_cache_options(const llm::CachePolicy& policy);

/// The methods' own statistics summed over the policies of one cell (quest/retro: effective KV
/// exposure and read fraction; rpc: compressions), for the report's details.
std::map<std::string, double> kv_policy_stats(const std::vector<std::shared_ptr<llm::CachePolicy>>& policies);

/// The method's options as a JSON object string (stored with every report cell).
std::string kv_method_settings(const std::string& name, const KvMethodOptions& o);

}  // namespace kvlab::compress
