// The kv-eval tasks (docs/kv-eval.md), each run for one method at one budget:
//   ppl        perplexity of a continuation scored token by token through the compressed cache
//   retrieval  pass key in a haystack (RULER-style: context lengths x needle depths), exact match
//   long-gen   recall of a pass key the model generated itself, more than `generate_tokens`
//              decode steps (one compression interval) before the question
//   jsonl      the user's prompts and answers, exact-match or contains, pass@1 over n samples
//   speed      time to first token, decode tokens/s, peak KV bytes, peak device memory
// All offline: haystacks and ppl windows come from a token/text file, prompts from a JSONL file.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kvlab/core/progress.hpp"
#include "kvlab/llm/data.hpp"
#include "kvlab/llm/model.hpp"
#include "kvlab/llm/tokenizer.hpp"

namespace kvlab::compress {

struct RetrievalOptions {
  std::vector<std::int64_t> context_lengths = {1024};  ///< prompt tokens (BOS included)
  std::vector<double> depths = {0.1, 0.5, 0.9};        ///< needle position as a fraction of the haystack
  std::int64_t samples = 4;                            ///< per (context length, depth)
  /// When set, every retrieval run (re)writes this JSONL file: one line per sample with its
  /// context, depth, key, prompt_ids, answer_ids, output_ids, output_text and correct (the last
  /// method/budget run leaves its outputs), so other runtimes can be scored on the same prompts.
  std::string prompts_path;
};

struct PplOptions {
  std::int64_t prompt_tokens = 512;        ///< prefilled (and compressed) tokens
  std::int64_t continuation_tokens = 256;  ///< scored token by token
  std::int64_t samples = 8;                ///< consecutive windows of the data file
};

struct LongGenOptions {
  std::int64_t lead_tokens = 128;      ///< haystack text before the key sentence
  std::int64_t generate_tokens = 1100; ///< free generation between the key and the question
  std::int64_t samples = 4;
};

enum class JsonlScoring { exact, contains };

struct JsonlOptions {
  JsonlScoring scoring = JsonlScoring::exact;
  std::int64_t max_new_tokens = 64;
  std::int64_t samples = 1;      ///< generations per prompt (pass@1 = mean correctness)
  double temperature = 0.0;      ///< 0: greedy
  double top_p = 1.0;
  std::int64_t top_k = 0;
  bool stop_at_newline = false;  ///< cut the answer at the first newline (byte/text answers)
  std::int64_t max_prompts = 0;  ///< > 0: only the first N prompts
};

struct SpeedOptions {
  std::int64_t context = 1024;      ///< prompt tokens (random ids)
  std::int64_t decode_tokens = 64;  ///< timed greedy decode steps
  std::int64_t batch = 1;
};

/// One prompt of a JSONL file ({"prompt_ids": [..]} or {"prompt": "..."}, and "answer").
struct JsonlSample {
  std::vector<std::int64_t> prompt;
  std::string answer;                     ///< text answer ("" when answer_ids is used)
  std::vector<std::int64_t> answer_ids;   ///< token answer (when the file gives ids)
};

/// What the tasks read, prepared by the caller (the front end reads files through libllm).
struct KvTaskInputs {
  at::Tensor text;  ///< 1-D int64 token ids of the haystack / ppl data (may be undefined)
  std::string text_path;
  std::vector<JsonlSample> jsonl;
  std::string jsonl_path;
  /// Text -> ids and ids -> text for the model (byte-level: raw bytes). Null: the model has no
  /// usable text codec, and the text-building tasks (retrieval, long-gen) refuse to run.
  std::function<std::vector<std::int64_t>(const std::string&)> encode;
  std::function<std::string(const std::vector<std::int64_t>&)> decode;
  std::int64_t bos = -1;  ///< prepended to built prompts when >= 0
  /// The model's own tokenizer, for models that are not byte-level (null for byte-level models).
  /// When set, retrieval and long-gen build their prompts as text (filler text decoded from the
  /// data file's tokens and cut at word boundaries, the key sentence and question as text) and
  /// encode the whole prompt at once, so the model sees its own natural tokenisation; answers are
  /// checked on the decoded text.
  std::shared_ptr<const llm::Tokenizer> tokenizer;
};

/// Builds the inputs for `model` (read from the artifact `model_path`): the text/token file through
/// llm::read_model_data (empty path: none), the JSONL prompts (empty path: none), and the text
/// codec (raw bytes for byte-level models; otherwise the artifact's /tokenizer, with BOS as the
/// tokenizer's convention says, as `generate` encodes prompts; none when it has no tokenizer).
KvTaskInputs load_kv_task_inputs(const llm::Model& model, const std::string& model_path,
                                 const std::string& data_path, const llm::TokenFileOptions& data_opt,
                                 const std::string& jsonl_path);

/// Reads a JSONL task file; FormatError naming the file and line on bad content.
std::vector<JsonlSample> read_jsonl_tasks(const std::string& path,
                                          const std::function<std::vector<std::int64_t>(const std::string&)>& encode);

/// Makes a fresh policy for a sequence batch whose context (what a ratio budget refers to) is
/// `context` tokens. Also returns the resolved budget and the options the batch's KV cache must
/// be created with (page metadata for Quest-style methods).
using PolicyMaker = std::function<std::shared_ptr<llm::CachePolicy>(
    std::int64_t context, std::int64_t* budget_tokens, llm::KVCacheOptions* cache)>;

struct TaskOutcome {
  std::string metric;            ///< "accuracy", "ppl", "pass@1", "decode_tokens_per_second"
  double score = 0, score_stderr = 0;
  std::int64_t samples = 0;
  std::int64_t context_tokens = 0;  ///< mean context a ratio budget referred to
  std::int64_t budget_tokens = 0;   ///< mean resolved budget (0: full)
  std::uint64_t kv_bytes_peak = 0;  ///< largest true KV-cache size (KVCache::bytes) of the task
  double ttft_seconds = 0, decode_tokens_per_second = 0;
  std::uint64_t peak_device_bytes = 0;
  double seconds = 0;
  std::map<std::string, double> details;  ///< breakdowns (per context/depth accuracy, ...)
};

struct KvTaskSettings {
  RetrievalOptions retrieval;
  PplOptions ppl;
  LongGenOptions long_gen;
  JsonlOptions jsonl;
  SpeedOptions speed;
  std::int64_t batch_size = 1;  ///< sequences per batch (retrieval, ppl, long-gen, jsonl)
  std::uint64_t seed = 0;
};

/// The task names: "ppl", "retrieval", "long-gen", "jsonl", "speed".
const std::vector<std::string>& kv_task_names();

/// The smallest context a ratio budget refers to in this task (for checking absolute budgets
/// before the grid runs); UsageError when the inputs the task needs are missing.
std::int64_t kv_task_min_context(const std::string& task, const KvTaskSettings& s,
                                 const KvTaskInputs& in, const llm::Model& model);

TaskOutcome run_kv_task(const std::string& task, const llm::Model& model, const KvTaskInputs& in,
                        const KvTaskSettings& s, const PolicyMaker& make, core::Progress& progress);

// The prompt builders, public for tests.

/// The fixture's pass-key prompt (scripts/train-fixture.py): haystack[:depth] + " The pass key is
/// K. Remember it. K is the pass key. " + haystack[depth:] + "\nWhat is the pass key? The pass
/// key is ", BOS first, `context` tokens in all; the answer is the key's ids.
/// With a tokenizer (KvTaskInputs::tokenizer) the prompt is text: filler words[:depth] + " The
/// pass key is K. Remember it. K is the pass key." + words[depth:] + "\nWhat is the pass key? The
/// pass key is" + (" " when the tokenizer encodes "is 12345" as ..."is", " ", digits: SmolLM2,
/// Llama-3, Llama-2; not GPT-2, whose " 12345" is one piece), encoded at once (BOS by the
/// tokenizer's convention), exactly `context` tokens (the number of filler words, and if needed
/// the first word, chosen to fit); the answer is the ids that continue the prompt with K (or
/// " K"), and a trial is correct when the decoded output, leading spaces dropped, starts with K
/// not followed by another digit.
struct RetrievalSample {
  std::vector<std::int64_t> prompt, answer;
  std::int64_t context = 0;
  double depth = 0;
  std::string key;        ///< the 5 digits
  bool text_mode = false; ///< built through the tokenizer (answer checked on decoded text)
};
/// Whether `output` (decoded generated text) answers `key`: leading whitespace dropped, it starts
/// with the key and the next character is not a digit.
bool text_answer_correct(const std::string& output, const std::string& key);
std::vector<RetrievalSample> make_retrieval_samples(const KvTaskInputs& in, const RetrievalOptions& o,
                                                    std::uint64_t seed);

}  // namespace kvlab::compress
