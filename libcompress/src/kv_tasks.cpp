#include "kvlab/compress/kv_tasks.hpp"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string_view>

#include "kvlab/core/error.hpp"
#include "kvlab/core/runtime.hpp"
#include "kvlab/llm/decode_graph.hpp"
#include "kvlab/llm/generate.hpp"

namespace kvlab::compress {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

constexpr const char* kQuestion = "\nWhat is the pass key? The pass key is ";

std::string needle_text(const std::string& key) {
  return " The pass key is " + key + ". Remember it. " + key + " is the pass key. ";
}

std::string random_key(std::mt19937_64& rng) {
  return fmt::format("{:05d}", static_cast<int>(rng() % 100000));
}

void require_text(const KvTaskInputs& in, const std::string& task) {
  KVLAB_THROW_IF(!in.text.defined() || in.text.numel() == 0, UsageError,
                 "task {} needs a haystack/text file: pass --data FILE (e.g. "
                 "data/kjv-byte-llama/heldout.txt)",
                 task);
}

void require_codec(const KvTaskInputs& in, const std::string& task) {
  KVLAB_THROW_IF(!in.encode || !in.decode, UsageError,
                 "task {} builds text prompts, which needs a byte-level model or a model with a "
                 "tokenizer; this model has neither (use --task jsonl with prompt_ids instead)",
                 task);
}

std::vector<std::int64_t> slice(const at::Tensor& ids, std::int64_t start, std::int64_t n) {
  at::Tensor s = ids.narrow(0, start, n).contiguous();
  const auto* p = s.data_ptr<std::int64_t>();
  return std::vector<std::int64_t>(p, p + n);
}

at::Tensor rows_tensor(const std::vector<std::vector<std::int64_t>>& rows) {
  const auto b = static_cast<std::int64_t>(rows.size());
  const auto t = static_cast<std::int64_t>(rows.front().size());
  at::Tensor out = at::empty({b, t}, at::kLong);
  auto a = out.accessor<std::int64_t, 2>();
  for (std::int64_t i = 0; i < b; ++i)
    for (std::int64_t j = 0; j < t; ++j) a[i][j] = rows[static_cast<std::size_t>(i)][static_cast<std::size_t>(j)];
  return out;
}

at::Tensor positions(std::int64_t b, std::int64_t start, std::int64_t t) {
  return at::arange(start, start + t, at::kLong).unsqueeze(0).expand({b, t}).contiguous();
}

double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0.0 : s / static_cast<double>(v.size());
}

double stderr_of(const std::vector<double>& v) {
  if (v.size() < 2) return 0.0;
  const double m = mean(v);
  double q = 0;
  for (double x : v) q += (x - m) * (x - m);
  const auto n = static_cast<double>(v.size());
  return std::sqrt(q / (n - 1) / n);
}

// Runs a teacher-forced or greedy decode step for every row; returns last logits [B, V].
at::Tensor step(const llm::Model& model, llm::KVCache& cache, llm::CachePolicy* policy,
                const std::vector<std::int64_t>& tok) {
  const auto b = static_cast<std::int64_t>(tok.size());
  at::Tensor t = at::empty({b, 1}, at::kLong), p = at::empty({b, 1}, at::kLong);
  for (std::int64_t i = 0; i < b; ++i) {
    t[i][0] = tok[static_cast<std::size_t>(i)];
    p[i][0] = cache.next_positions()[static_cast<std::size_t>(i)];
  }
  llm::ForwardOptions fo;
  fo.policy = policy;
  fo.logits = llm::LogitsMode::last;
  return model.forward(t, p, cache, fo).to(at::kCPU);
}

std::vector<std::int64_t> argmax_rows(const at::Tensor& logits) {
  at::Tensor a = logits.argmax(-1).to(at::kCPU).contiguous();
  const auto* p = a.data_ptr<std::int64_t>();
  return std::vector<std::int64_t>(p, p + a.numel());
}

std::string trim(const std::string& s) {
  const auto a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  const auto b = s.find_last_not_of(" \t\r\n");
  return s.substr(a, b - a + 1);
}

// ------------------------------------------------------- text prompts (models with a tokenizer)
//
// Models with a real tokenizer get prompts built as text and encoded at once (their natural
// tokenisation) instead of ids spliced together. The filler is the data file's own text (its
// tokens decoded), cut at word boundaries (a space with a non-space character on both sides);
// the number of filler words is chosen so the whole prompt has exactly the wanted token count
// (the batch needs equal lengths), starting at a later word when no word count hits it exactly.

constexpr const char* kQuestionText = "\nWhat is the pass key? The pass key is";

// The question as the prompt ends it: with the space before the key when the tokenizer gives
// that space a token of its own before digits (SmolLM2, Llama-3, Llama-2: "is 12345" encodes
// as ..."is", " ", "1", ... so "is " is a natural prefix and the model starts right at the
// digits), else without it (GPT-2: " 12345" is one piece, the model writes the space).
std::string question_text(const KvTaskInputs& in) {
  const std::string q = kQuestionText;
  const auto with = in.tokenizer->encode(q + " ");
  const auto whole = in.tokenizer->encode(q + " 00000");
  const bool prefix = whole.size() > with.size() && std::equal(with.begin(), with.end(), whole.begin());
  return prefix ? q + " " : q;
}

// The ids the model should generate after question_text(in) for `key`.
std::vector<std::int64_t> answer_ids(const KvTaskInputs& in, const std::string& question, const std::string& key) {
  if (!question.empty() && question.back() == ' ') {
    const auto with = in.tokenizer->encode(question);
    const auto whole = in.tokenizer->encode(question + key);
    return std::vector<std::int64_t>(whole.begin() + static_cast<std::ptrdiff_t>(std::min(with.size(), whole.size())), whole.end());
  }
  std::vector<std::int64_t> ids;
  in.tokenizer->encode_continuation(" " + key, ids);
  return ids;
}

std::string needle_sentence(const std::string& key) {
  return " The pass key is " + key + ". Remember it. " + key + " is the pass key.";
}

bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }

// Positions of spaces with a non-space character on both sides.
std::vector<std::size_t> word_boundaries(const std::string& t) {
  std::vector<std::size_t> b;
  for (std::size_t p = 1; p + 1 < t.size(); ++p)
    if (t[p] == ' ' && !is_space(t[p - 1]) && !is_space(t[p + 1])) b.push_back(p);
  return b;
}

std::int64_t text_bos(const KvTaskInputs& in) {
  return in.tokenizer && in.tokenizer->data().add_bos ? in.tokenizer->bos_id() : -1;
}

std::vector<std::int64_t> encode_prompt(const KvTaskInputs& in, const std::string& text) {
  std::vector<std::int64_t> ids;
  if (text_bos(in) >= 0) ids.push_back(text_bos(in));
  in.tokenizer->encode_append(text, ids);
  return ids;
}

// Filler text: the data file's tokens [start, start + n) decoded.
std::string filler_text(const KvTaskInputs& in, std::int64_t start, std::int64_t n) {
  return in.tokenizer->decode(slice(in.text, start, n), /*skip_special=*/true);
}

// The prompt [BOS] + encode(assemble(words)) of exactly `target` tokens, where `words` is a run of
// whole filler words: the largest word count whose prompt fits (binary search, then a scan of
// the neighbours, as the count is monotone only up to merges at the edges), moving the first word
// on until one is exact. UsageError naming the file when none is found.
std::vector<std::int64_t> exact_text_prompt(const KvTaskInputs& in, const std::string& filler,
                                            std::int64_t target, const std::string& what,
                                            const std::function<std::string(std::string_view, std::size_t)>& assemble) {
  const std::vector<std::size_t> bnd = word_boundaries(filler);
  KVLAB_THROW_IF(bnd.size() < 4, UsageError, "{}: the text of {} has too few words to build prompts",
                 what, in.text_path);
  // words(a, w): filler from just after boundary a up to boundary a + w (w >= 1 whole words).
  auto words = [&](std::size_t a, std::size_t w) {
    return std::string_view(filler).substr(bnd[a] + 1, bnd[a + w] - bnd[a] - 1);
  };
  const std::size_t tries = std::min<std::size_t>(64, bnd.size() / 2);
  for (std::size_t a = 0; a < tries; ++a) {
    const std::size_t wmax = bnd.size() - 1 - a;
    std::map<std::size_t, std::vector<std::int64_t>> memo;
    auto f = [&](std::size_t w) -> const std::vector<std::int64_t>& {
      auto it = memo.find(w);
      if (it == memo.end()) it = memo.emplace(w, encode_prompt(in, assemble(words(a, w), w))).first;
      return it->second;
    };
    auto len = [&](std::size_t w) { return static_cast<std::int64_t>(f(w).size()); };
    KVLAB_THROW_IF(len(wmax) < target, UsageError,
                   "{}: the text of {} is too short for a prompt of {} tokens", what, in.text_path, target);
    if (len(1) > target) continue;
    std::size_t lo = 1, hi = wmax;  // len(lo) <= target < len(hi) unless equal
    while (hi - lo > 1) {
      const std::size_t mid = lo + (hi - lo) / 2;
      (len(mid) <= target ? lo : hi) = mid;
    }
    for (std::size_t w = lo > 3 ? lo - 3 : 1; w <= std::min(wmax, lo + 3); ++w)
      if (len(w) == target) return f(w);
  }
  KVLAB_THROW(UsageError, "{}: cannot build a prompt of exactly {} tokens from the text of {} (no whole-"
              "word cut gives that count); try another length", what, target, in.text_path);
}

// ---------------------------------------------------------------- retrieval

TaskOutcome run_retrieval(const llm::Model& model, const KvTaskInputs& in, const KvTaskSettings& s,
                          const PolicyMaker& make, core::Progress& progress) {
  const std::vector<RetrievalSample> all = make_retrieval_samples(in, s.retrieval, s.seed);
  TaskOutcome r;
  r.metric = "accuracy";
  std::vector<double> ok;
  std::map<std::string, std::pair<double, double>> cell;  // "ctx@depth" -> (correct, n)
  double ctx_sum = 0, budget_sum = 0;
  std::ofstream dump;
  if (!s.retrieval.prompts_path.empty()) {
    dump.open(s.retrieval.prompts_path, std::ios::trunc);
    KVLAB_THROW_IF(!dump, IoError, "{}: cannot write the retrieval prompts", s.retrieval.prompts_path);
  }
  progress.begin("retrieval", static_cast<std::int64_t>(all.size()), "sample");
  for (std::size_t i = 0; i < all.size();) {
    // A batch: consecutive samples of the same context length (equal prompt lengths).
    std::size_t j = i;
    std::vector<std::vector<std::int64_t>> prompts;
    while (j < all.size() && all[j].context == all[i].context &&
           static_cast<std::int64_t>(prompts.size()) < s.batch_size)
      prompts.push_back(all[j++].prompt);
    std::int64_t budget = 0;
    llm::GenerateOptions go;
    auto policy = make(all[i].context, &budget, &go.cache);
    // Byte-level: exactly the key's ids. Text: the key's ids and one more token (so a sixth digit
    // shows), the longest in the batch.
    go.max_new_tokens = 0;
    for (std::size_t k = i; k < j; ++k)
      go.max_new_tokens = std::max<std::int64_t>(
          go.max_new_tokens, static_cast<std::int64_t>(all[k].answer.size()) + (all[k].text_mode ? 1 : 0));
    go.ignore_eos = true;
    core::NullProgress quiet;
    const llm::GenerateResult g = llm::generate(model, prompts, go, policy.get(), quiet);
    r.kv_bytes_peak = std::max(r.kv_bytes_peak, g.kv_bytes_peak);
    for (std::size_t k = i; k < j; ++k) {
      const std::vector<std::int64_t>& out = g.outputs[k - i].tokens;
      const std::string out_text = in.decode ? in.decode(out) : std::string();
      const bool hit = all[k].text_mode ? text_answer_correct(out_text, all[k].key) : out == all[k].answer;
      if (dump.is_open())
        dump << nlohmann::json{{"context", all[k].context}, {"depth", all[k].depth}, {"key", all[k].key},
                               {"prompt_ids", all[k].prompt}, {"answer_ids", all[k].answer},
                               {"output_ids", out}, {"output_text", out_text}, {"correct", hit}}.dump()
             << "\n";
      ok.push_back(hit ? 1.0 : 0.0);
      auto& c = cell[fmt::format("ctx{}_depth{:g}", all[k].context, all[k].depth)];
      c.first += hit;
      c.second += 1;
      ctx_sum += static_cast<double>(all[k].context);
      budget_sum += static_cast<double>(budget);
    }
    i = j;
    progress.update(static_cast<std::int64_t>(i), {{"accuracy", mean(ok)}});
  }
  progress.end({{"accuracy", mean(ok)}});
  if (dump.is_open()) {
    dump.close();
    KVLAB_THROW_IF(!dump, IoError, "{}: write failed", s.retrieval.prompts_path);
  }
  r.score = mean(ok);
  r.score_stderr = stderr_of(ok);
  r.samples = static_cast<std::int64_t>(ok.size());
  r.context_tokens = static_cast<std::int64_t>(std::llround(ctx_sum / static_cast<double>(ok.size())));
  r.budget_tokens = static_cast<std::int64_t>(std::llround(budget_sum / static_cast<double>(ok.size())));
  for (const auto& [k, v] : cell) r.details["accuracy_" + k] = v.first / v.second;
  return r;
}

// ---------------------------------------------------------------- ppl

TaskOutcome run_ppl(const llm::Model& model, const KvTaskInputs& in, const KvTaskSettings& s,
                    const PolicyMaker& make, core::Progress& progress) {
  require_text(in, "ppl");
  const std::int64_t p = s.ppl.prompt_tokens, c = s.ppl.continuation_tokens, w = p + c;
  const std::int64_t avail = in.text.numel() / w;
  KVLAB_THROW_IF(avail < 1, UsageError,
                 "task ppl: {} holds {} tokens, fewer than one window of --ppl-prompt {} + "
                 "--ppl-continuation {}; use a larger file or smaller windows",
                 in.text_path, in.text.numel(), p, c);
  const std::int64_t n = std::min(s.ppl.samples, avail);
  TaskOutcome r;
  r.metric = "ppl";
  std::vector<double> sample_nll;
  double budget_sum = 0;
  progress.begin("ppl", n, "window");
  for (std::int64_t i = 0; i < n; i += s.batch_size) {
    const std::int64_t b = std::min(s.batch_size, n - i);
    at::Tensor rows = in.text.narrow(0, i * w, b * w).view({b, w});
    std::int64_t budget = 0;
    llm::KVCacheOptions co;
    auto policy = make(p, &budget, &co);
    llm::KVCache cache = model.make_cache(b, co);
    // Full attention gets the whole window up front; a compressing method's cache grows as it
    // needs (a reservation of the whole window would be its peak, hiding what it frees).
    if (policy->name() == "full") cache.reserve(w);
    llm::ForwardOptions fo;
    fo.policy = policy.get();
    fo.logits = llm::LogitsMode::last;
    at::Tensor logits = model.forward(rows.narrow(1, 0, p), positions(b, 0, p), cache, fo).to(at::kCPU);
    at::Tensor nll = at::zeros({b}, at::kDouble);
    for (std::int64_t t = p; t < w; ++t) {
      at::Tensor target = rows.select(1, t);
      nll -= at::log_softmax(logits.to(at::kDouble), -1).gather(1, target.unsqueeze(1)).squeeze(1);
      r.kv_bytes_peak = std::max(r.kv_bytes_peak, cache.bytes());
      if (t + 1 < w) {
        std::vector<std::int64_t> tok(static_cast<std::size_t>(b));
        for (std::int64_t k = 0; k < b; ++k) tok[static_cast<std::size_t>(k)] = target[k].item<std::int64_t>();
        logits = step(model, cache, policy.get(), tok);
      }
    }
    for (std::int64_t k = 0; k < b; ++k) {
      sample_nll.push_back(nll[k].item<double>() / static_cast<double>(c));
      budget_sum += static_cast<double>(budget);
    }
    progress.update(i + b, {{"ppl", std::exp(mean(sample_nll))}});
  }
  progress.end();
  const double m = mean(sample_nll);
  r.score = std::exp(m);
  r.score_stderr = r.score * stderr_of(sample_nll);  // delta method
  r.samples = n;
  r.context_tokens = p;
  r.budget_tokens = static_cast<std::int64_t>(std::llround(budget_sum / static_cast<double>(n)));
  r.details["mean_nll"] = m;
  r.details["nll_stderr"] = stderr_of(sample_nll);
  r.details["scored_tokens"] = static_cast<double>(n * c);
  return r;
}

// ---------------------------------------------------------------- long-gen

// Text mode (a tokenizer): the key sentence's tokens after the filler, the question's tokens.
std::vector<std::int64_t> continuation_ids(const KvTaskInputs& in, const std::string& text) {
  std::vector<std::int64_t> ids;
  in.tokenizer->encode_continuation(text, ids);
  return ids;
}

std::int64_t long_gen_context(const KvTaskInputs& in, const LongGenOptions& o) {
  if (in.tokenizer) {
    const auto pre = static_cast<std::int64_t>(continuation_ids(in, " The pass key is 00").size());
    const auto q = static_cast<std::int64_t>(in.encode(question_text(in)).size());
    return (text_bos(in) >= 0 ? 1 : 0) + o.lead_tokens + pre + o.generate_tokens + q;
  }
  const auto pre = static_cast<std::int64_t>(in.encode(" The pass key is 00").size());
  const auto q = static_cast<std::int64_t>(in.encode(kQuestion).size());
  return (in.bos >= 0 ? 1 : 0) + o.lead_tokens + pre + o.generate_tokens + q;
}

// The leading run of ASCII digits of s.
std::string leading_digits(const std::string& s) {
  std::size_t e = 0;
  while (e < s.size() && s[e] >= '0' && s[e] <= '9') ++e;
  return s.substr(0, e);
}

TaskOutcome run_long_gen(const llm::Model& model, const KvTaskInputs& in, const KvTaskSettings& s,
                         const PolicyMaker& make, core::Progress& progress) {
  // The model writes the pass key itself: the prompt ends in " The pass key is 12" and the model
  // completes the digits (the fixture continues "345. Remember it. 12345 is the pass key."), then
  // generates `generate_tokens` tokens freely; the question is then fed (teacher-forced) and the
  // model must answer the 5 digits IT generated more than generate_tokens steps earlier.
  require_text(in, "long-gen");
  require_codec(in, "long-gen");
  const LongGenOptions& o = s.long_gen;
  const std::int64_t n_text = in.text.numel();
  KVLAB_THROW_IF(n_text <= o.lead_tokens + 1, UsageError, "task long-gen: {} is shorter than --long-gen-lead {}",
                 in.text_path, o.lead_tokens);
  const bool text = static_cast<bool>(in.tokenizer);
  KVLAB_THROW_IF(text && o.lead_tokens < 8, UsageError,
                 "--long-gen-lead {}: models with a tokenizer need at least 8 lead tokens (whole words of "
                 "filler text)", o.lead_tokens);
  const std::vector<std::int64_t> question = in.encode(text ? question_text(in) : std::string(kQuestion));
  const std::int64_t context = long_gen_context(in, o);
  // Text mode: the prompt is [BOS] + filler words + " The pass key is NN", this many tokens.
  const std::int64_t prompt_tokens = text ? (text_bos(in) >= 0 ? 1 : 0) + o.lead_tokens +
                                                static_cast<std::int64_t>(continuation_ids(in, " The pass key is 00").size())
                                          : 0;
  // Answer tokens generated: the key's (plus one, so a sixth digit shows) in text mode.
  const int answer_tokens = text ? static_cast<int>(answer_ids(in, question_text(in), "00000").size()) + 1 : 5;
  std::mt19937_64 rng(s.seed * 7919 + 17);
  TaskOutcome r;
  r.metric = "accuracy";
  std::vector<double> ok;
  double key_written = 0, budget_sum = 0;
  progress.begin("long-gen", o.samples, "sample");
  for (std::int64_t i = 0; i < o.samples; i += s.batch_size) {
    const std::int64_t b = std::min(s.batch_size, o.samples - i);
    std::vector<std::vector<std::int64_t>> prompts;
    std::vector<std::string> prefixes;
    for (std::int64_t k = 0; k < b; ++k) {
      const std::string key = random_key(rng);
      if (text) {
        const std::int64_t n_fill = o.lead_tokens + o.lead_tokens / 4 + 64;
        KVLAB_THROW_IF(n_fill > n_text, UsageError,
                       "task long-gen: {} holds {} tokens, too few for --long-gen-lead {} (need about {})",
                       in.text_path, n_text, o.lead_tokens, n_fill);
        const auto start = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(n_text - n_fill + 1));
        const std::string tail = " The pass key is " + key.substr(0, 2);
        prompts.push_back(exact_text_prompt(in, filler_text(in, start, n_fill), prompt_tokens, "task long-gen",
                                            [&](std::string_view words, std::size_t) { return std::string(words) + tail; }));
        prefixes.push_back(key.substr(0, 2));
        continue;
      }
      const auto start = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(n_text - o.lead_tokens));
      std::vector<std::int64_t> p;
      if (in.bos >= 0) p.push_back(in.bos);
      const auto lead = slice(in.text, start, o.lead_tokens);
      p.insert(p.end(), lead.begin(), lead.end());
      const auto tail = in.encode(" The pass key is " + key.substr(0, 2));
      p.insert(p.end(), tail.begin(), tail.end());
      prompts.push_back(p);
      prefixes.push_back(key.substr(0, 2));
    }
    std::int64_t budget = 0;
    llm::KVCacheOptions co;
    auto policy = make(context, &budget, &co);
    llm::KVCache cache = model.make_cache(b, co);
    cache.reserve(context + 8);
    llm::ForwardOptions fo;
    fo.policy = policy.get();
    fo.logits = llm::LogitsMode::last;
    const auto t = static_cast<std::int64_t>(prompts.front().size());
    at::Tensor logits = model.forward(rows_tensor(prompts), positions(b, 0, t), cache, fo).to(at::kCPU);
    std::vector<std::vector<std::int64_t>> gen(static_cast<std::size_t>(b));
    for (std::int64_t g = 0; g < o.generate_tokens; ++g) {
      const auto next = argmax_rows(logits);
      for (std::int64_t k = 0; k < b; ++k) gen[static_cast<std::size_t>(k)].push_back(next[static_cast<std::size_t>(k)]);
      logits = step(model, cache, policy.get(), next);
      r.kv_bytes_peak = std::max(r.kv_bytes_peak, cache.bytes());
    }
    // The question, teacher-forced token by token (decode steps: decode-time methods compress on).
    // The logits of the last generated token are discarded: the question follows it.
    for (std::int64_t q : question) {
      logits = step(model, cache, policy.get(), std::vector<std::int64_t>(static_cast<std::size_t>(b), q));
      r.kv_bytes_peak = std::max(r.kv_bytes_peak, cache.bytes());
    }
    std::vector<std::vector<std::int64_t>> answer(static_cast<std::size_t>(b));
    for (int d = 0; d < answer_tokens; ++d) {
      const auto next = argmax_rows(logits);
      for (std::int64_t k = 0; k < b; ++k) answer[static_cast<std::size_t>(k)].push_back(next[static_cast<std::size_t>(k)]);
      if (d + 1 < answer_tokens) logits = step(model, cache, policy.get(), next);
    }
    for (std::int64_t k = 0; k < b; ++k) {
      const auto& gk = gen[static_cast<std::size_t>(k)];
      if (text) {  // the model's digits right after "is NN", then the answer on decoded text
        const std::string written = leading_digits(in.decode(gk));
        const bool digits = written.size() == 3;
        const bool hit = digits && text_answer_correct(in.decode(answer[static_cast<std::size_t>(k)]),
                                                       prefixes[static_cast<std::size_t>(k)] + written);
        key_written += digits;
        ok.push_back(hit ? 1.0 : 0.0);
        budget_sum += static_cast<double>(budget);
        continue;
      }
      const std::string written = in.decode(std::vector<std::int64_t>(gk.begin(), gk.begin() + std::min<std::size_t>(3, gk.size())));
      const bool digits = written.size() == 3 && std::all_of(written.begin(), written.end(), [](char ch) { return ch >= '0' && ch <= '9'; });
      const std::string key = prefixes[static_cast<std::size_t>(k)] + written;
      const bool hit = digits && trim(in.decode(answer[static_cast<std::size_t>(k)])) == key;
      key_written += digits;
      ok.push_back(hit ? 1.0 : 0.0);
      budget_sum += static_cast<double>(budget);
    }
    progress.update(i + b, {{"accuracy", mean(ok)}});
  }
  progress.end();
  r.score = mean(ok);
  r.score_stderr = stderr_of(ok);
  r.samples = o.samples;
  r.context_tokens = context;
  r.budget_tokens = static_cast<std::int64_t>(std::llround(budget_sum / static_cast<double>(o.samples)));
  r.details["key_written_fraction"] = key_written / static_cast<double>(o.samples);
  r.details["generated_tokens_between_key_and_question"] = static_cast<double>(o.generate_tokens - 3);
  return r;
}

// ---------------------------------------------------------------- jsonl

bool contains_ids(const std::vector<std::int64_t>& hay, const std::vector<std::int64_t>& needle) {
  return std::search(hay.begin(), hay.end(), needle.begin(), needle.end()) != hay.end();
}

TaskOutcome run_jsonl(const llm::Model& model, const KvTaskInputs& in, const KvTaskSettings& s,
                      const PolicyMaker& make, core::Progress& progress) {
  KVLAB_THROW_IF(in.jsonl.empty(), UsageError, "task jsonl needs --jsonl FILE (one {{\"prompt\" | \"prompt_ids\", \"answer\"}} per line)");
  const JsonlOptions& o = s.jsonl;
  std::size_t n = in.jsonl.size();
  if (o.max_prompts > 0) n = std::min<std::size_t>(n, static_cast<std::size_t>(o.max_prompts));
  TaskOutcome r;
  r.metric = "pass@1";
  std::vector<double> per_prompt;
  double ctx_sum = 0, budget_sum = 0;
  progress.begin("jsonl", static_cast<std::int64_t>(n), "prompt");
  for (std::size_t i = 0; i < n; i += static_cast<std::size_t>(s.batch_size)) {
    const std::size_t e = std::min(n, i + static_cast<std::size_t>(s.batch_size));
    std::vector<std::vector<std::int64_t>> prompts;
    std::int64_t longest = 0;
    for (std::size_t k = i; k < e; ++k) {
      prompts.push_back(in.jsonl[k].prompt);
      longest = std::max<std::int64_t>(longest, static_cast<std::int64_t>(in.jsonl[k].prompt.size()));
    }
    std::vector<double> correct(e - i, 0.0);
    std::int64_t budget = 0;
    for (std::int64_t smp = 0; smp < o.samples; ++smp) {
      llm::GenerateOptions go;
      auto policy = make(longest, &budget, &go.cache);
      go.max_new_tokens = o.max_new_tokens;
      go.sampling.temperature = o.temperature;
      go.sampling.top_p = o.top_p;
      go.sampling.top_k = o.top_k;
      go.seed = s.seed + static_cast<std::uint64_t>(smp) * 1000003ULL + i;
      core::NullProgress quiet;
      const llm::GenerateResult g = llm::generate(model, prompts, go, policy.get(), quiet);
      r.kv_bytes_peak = std::max(r.kv_bytes_peak, g.kv_bytes_peak);
      for (std::size_t k = i; k < e; ++k) {
        std::vector<std::int64_t> out = g.outputs[k - i].tokens;
        if (g.outputs[k - i].stop_reason == "stop-token" && !out.empty()) out.pop_back();
        const JsonlSample& js = in.jsonl[k];
        bool hit;
        if (!js.answer_ids.empty()) {
          hit = o.scoring == JsonlScoring::exact ? out == js.answer_ids : contains_ids(out, js.answer_ids);
        } else {
          KVLAB_THROW_IF(!in.decode, UsageError,
                         "{}: text answers need a byte-level model or a tokenizer; give "
                         "\"answer_ids\" instead", in.jsonl_path);
          std::string text = in.decode(out);
          if (o.stop_at_newline) text = text.substr(0, text.find('\n'));
          hit = o.scoring == JsonlScoring::exact ? trim(text) == trim(js.answer)
                                                 : text.find(trim(js.answer)) != std::string::npos;
        }
        correct[k - i] += hit ? 1.0 : 0.0;
      }
    }
    for (std::size_t k = i; k < e; ++k) {
      per_prompt.push_back(correct[k - i] / static_cast<double>(o.samples));
      ctx_sum += static_cast<double>(in.jsonl[k].prompt.size());
      budget_sum += static_cast<double>(budget);
    }
    progress.update(static_cast<std::int64_t>(e), {{"pass@1", mean(per_prompt)}});
  }
  progress.end();
  r.score = mean(per_prompt);
  r.score_stderr = stderr_of(per_prompt);
  r.samples = static_cast<std::int64_t>(n);
  r.context_tokens = static_cast<std::int64_t>(std::llround(ctx_sum / static_cast<double>(n)));
  r.budget_tokens = static_cast<std::int64_t>(std::llround(budget_sum / static_cast<double>(n)));
  r.details["generations_per_prompt"] = static_cast<double>(o.samples);
  return r;
}

// ---------------------------------------------------------------- speed

TaskOutcome run_speed(const llm::Model& model, const KvTaskSettings& s, const PolicyMaker& make,
                      core::Progress& progress) {
  const SpeedOptions& o = s.speed;
  at::Generator gen = at::detail::createCPUGenerator(s.seed + 99);
  at::Tensor prompt = at::randint(model.config().vocab_size, {o.batch, o.context}, gen, at::kLong);
  const bool cuda = model.device().is_cuda();
  auto sync = [&] {
    if (cuda) (void)at::zeros({1}, at::TensorOptions().device(model.device())).cpu();
  };
  TaskOutcome r;
  r.metric = "decode_tokens_per_second";
  progress.begin("speed", 2, "run");
  for (int run = 0; run < 2; ++run) {  // run 0 warms up kernels and the allocator
    const std::int64_t steps = run == 0 ? std::min<std::int64_t>(2, o.decode_tokens) : o.decode_tokens;
    std::int64_t budget = 0;
    llm::KVCacheOptions co;
    auto policy = make(o.context, &budget, &co);
    llm::KVCache cache = model.make_cache(o.batch, co);
    // Only full attention keeps every slot; a compressing method's peak is what it holds.
    if (policy->name() == "full") cache.reserve(o.context + o.decode_tokens);
    llm::ForwardOptions fo;
    fo.policy = policy.get();
    fo.logits = llm::LogitsMode::last;
    sync();
    auto t0 = Clock::now();
    at::Tensor logits = model.forward(prompt, positions(o.batch, 0, o.context), cache, fo);
    std::vector<std::int64_t> next = argmax_rows(logits);  // the first token: synchronises
    const double ttft = since(t0);
    std::uint64_t peak = cache.bytes();
    // Full attention and RPC replay CUDA graphs between compressions (llm::StaticDecoder).
    std::unique_ptr<llm::StaticDecoder> graphs;
    if (steps > 0 && llm::StaticDecoder::unsupported_reason(model, cache, policy.get()).empty())
      graphs = std::make_unique<llm::StaticDecoder>(model, cache, policy.get(), steps, true);
    t0 = Clock::now();
    for (std::int64_t k = 0; k < steps; ++k) {
      at::Tensor t = at::tensor(next, at::kLong).view({o.batch, 1});
      at::Tensor p = at::tensor(cache.next_positions(), at::kLong).view({o.batch, 1});
      // The argmax runs where the logits are: only B ids cross to the host.
      next = argmax_rows(graphs ? graphs->step(t, p) : model.forward(t, p, cache, fo));
      peak = std::max(peak, cache.bytes());
    }
    const double dec = since(t0);
    if (run == 1) r.details["cuda_graphs"] = graphs ? 1.0 : 0.0;
    if (run == 1) {
      r.ttft_seconds = ttft;
      r.decode_tokens_per_second = steps > 0 ? static_cast<double>(o.batch * steps) / dec : 0.0;
      r.kv_bytes_peak = peak;
      r.budget_tokens = budget;
      r.details["decode_seconds"] = dec;
    }
    progress.update(run + 1);
  }
  progress.end();
  r.peak_device_bytes = core::peak_cuda_bytes();
  r.score = r.decode_tokens_per_second;
  r.samples = o.batch;
  r.context_tokens = o.context;
  r.details["batch"] = static_cast<double>(o.batch);
  r.details["decode_tokens"] = static_cast<double>(o.decode_tokens);
  return r;
}

// A retrieval sample built as text (see exact_text_prompt): filler words[:depth] + the key
// sentence + words[depth:] + the question, `ctx` tokens.
RetrievalSample text_retrieval_sample(const KvTaskInputs& in, std::int64_t ctx, double depth,
                                      std::mt19937_64& rng) {
  const std::int64_t n_text = in.text.numel();
  const std::string key = random_key(rng);
  const std::string needle = needle_sentence(key);
  const std::string question = question_text(in);
  // Filler tokens: the prompt's length and a margin (decoded text re-encodes to about as many).
  const std::int64_t n_fill = ctx + ctx / 4 + 64;
  KVLAB_THROW_IF(n_fill > n_text, UsageError,
                 "--retrieval-context {}: the haystack file {} holds only {} tokens (need about {})", ctx,
                 in.text_path, n_text, n_fill);
  const auto start = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(n_text - n_fill + 1));
  const std::string filler = filler_text(in, start, n_fill);
  RetrievalSample smp;
  smp.prompt = exact_text_prompt(
      in, filler, ctx, fmt::format("--retrieval-context {}", ctx),
      [&](std::string_view words, std::size_t w) {
        const auto j = static_cast<std::size_t>(std::llround(depth * static_cast<double>(w)));
        std::string t;
        if (j == 0) {
          t = needle.substr(1) + " " + std::string(words);
        } else {
          std::size_t cut = words.size();
          if (j < w) {  // the j-th word boundary of `words`
            std::size_t seen = 0;
            for (std::size_t p = 1; p + 1 < words.size(); ++p)
              if (words[p] == ' ' && !is_space(words[p - 1]) && !is_space(words[p + 1]) && ++seen == j) {
                cut = p;
                break;
              }
          }
          t = std::string(words.substr(0, cut)) + needle + std::string(words.substr(cut));
        }
        return t + question;
      });
  smp.answer = answer_ids(in, question, key);
  smp.key = key;
  smp.context = ctx;
  smp.depth = depth;
  smp.text_mode = true;
  return smp;
}

}  // namespace

bool text_answer_correct(const std::string& output, const std::string& key) {
  std::size_t a = 0;
  while (a < output.size() && is_space(output[a])) ++a;
  if (output.compare(a, key.size(), key) != 0) return false;
  const std::size_t e = a + key.size();
  return e >= output.size() || output[e] < '0' || output[e] > '9';
}

std::vector<RetrievalSample> make_retrieval_samples(const KvTaskInputs& in, const RetrievalOptions& o,
                                                    std::uint64_t seed) {
  require_text(in, "retrieval");
  require_codec(in, "retrieval");
  const std::vector<std::int64_t> q = in.encode(kQuestion);
  const std::int64_t n_text = in.text.numel();
  std::vector<RetrievalSample> out;
  for (std::size_t ci = 0; ci < o.context_lengths.size(); ++ci) {
    const std::int64_t ctx = o.context_lengths[ci];
    for (std::size_t di = 0; di < o.depths.size(); ++di) {
      const double depth = o.depths[di];
      KVLAB_THROW_IF(!(depth >= 0 && depth <= 1), UsageError, "--retrieval-depth {}: must be in [0, 1]", depth);
      std::mt19937_64 rng(seed * 1000003ULL + ci * 1009ULL + di * 17ULL + 1);
      for (std::int64_t k = 0; k < o.samples; ++k) {
        if (in.tokenizer) {
          out.push_back(text_retrieval_sample(in, ctx, depth, rng));
          continue;
        }
        const std::string key = random_key(rng);
        const std::vector<std::int64_t> needle = in.encode(needle_text(key));
        const std::int64_t hay = ctx - (in.bos >= 0 ? 1 : 0) - static_cast<std::int64_t>(needle.size() + q.size());
        KVLAB_THROW_IF(hay < 1, UsageError,
                       "--retrieval-context {}: too short for the pass-key sentence and question ({} tokens)",
                       ctx, needle.size() + q.size());
        KVLAB_THROW_IF(hay >= n_text, UsageError,
                       "--retrieval-context {}: the haystack file {} holds only {} tokens", ctx,
                       in.text_path, n_text);
        const auto start = static_cast<std::int64_t>(rng() % static_cast<std::uint64_t>(n_text - hay));
        const auto h = slice(in.text, start, hay);
        const auto at_ = static_cast<std::int64_t>(std::llround(depth * static_cast<double>(hay)));
        RetrievalSample smp;
        if (in.bos >= 0) smp.prompt.push_back(in.bos);
        smp.prompt.insert(smp.prompt.end(), h.begin(), h.begin() + at_);
        smp.prompt.insert(smp.prompt.end(), needle.begin(), needle.end());
        smp.prompt.insert(smp.prompt.end(), h.begin() + at_, h.end());
        smp.prompt.insert(smp.prompt.end(), q.begin(), q.end());
        smp.answer = in.encode(key);
        smp.key = key;
        smp.context = ctx;
        smp.depth = depth;
        out.push_back(std::move(smp));
      }
    }
  }
  return out;
}

std::vector<JsonlSample> read_jsonl_tasks(const std::string& path,
                                          const std::function<std::vector<std::int64_t>(const std::string&)>& encode) {
  std::ifstream f(path);
  KVLAB_THROW_IF(!f, IoError, "{}: cannot open the JSONL file", path);
  std::vector<JsonlSample> out;
  std::string line;
  std::int64_t no = 0;
  while (std::getline(f, line)) {
    ++no;
    if (trim(line).empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      KVLAB_THROW(FormatError, "{}:{}: not valid JSON ({}); expected one object per line", path, no, e.what());
    }
    KVLAB_THROW_IF(!j.is_object(), FormatError, "{}:{}: expected a JSON object", path, no);
    JsonlSample s;
    try {
      if (j.contains("prompt_ids")) {
        s.prompt = j.at("prompt_ids").get<std::vector<std::int64_t>>();
      } else if (j.contains("prompt")) {
        KVLAB_THROW_IF(!encode, UsageError,
                       "{}:{}: a text \"prompt\" needs a byte-level model or a tokenizer; give \"prompt_ids\"", path, no);
        s.prompt = encode(j.at("prompt").get<std::string>());
      } else {
        KVLAB_THROW(FormatError, "{}:{}: needs \"prompt\" or \"prompt_ids\"", path, no);
      }
      KVLAB_THROW_IF(!j.contains("answer") && !j.contains("answer_ids"), FormatError,
                     "{}:{}: needs \"answer\" (text) or \"answer_ids\"", path, no);
      if (j.contains("answer_ids")) s.answer_ids = j.at("answer_ids").get<std::vector<std::int64_t>>();
      if (j.contains("answer")) {
        const auto& a = j.at("answer");
        s.answer = a.is_string() ? a.get<std::string>() : a.dump();  // AIME answers may be numbers
      }
    } catch (const nlohmann::json::exception& e) {
      KVLAB_THROW(FormatError, "{}:{}: {}", path, no, e.what());
    }
    KVLAB_THROW_IF(s.prompt.empty(), FormatError, "{}:{}: the prompt is empty", path, no);
    out.push_back(std::move(s));
  }
  KVLAB_THROW_IF(out.empty(), FormatError, "{}: no prompts found", path);
  return out;
}

KvTaskInputs load_kv_task_inputs(const llm::Model& model, const std::string& model_path,
                                 const std::string& data_path, const llm::TokenFileOptions& data_opt,
                                 const std::string& jsonl_path) {
  KvTaskInputs in;
  if (model.byte_level()) {
    in.encode = [](const std::string& t) { return llm::bytes_to_ids(t); };
    in.decode = [](const std::vector<std::int64_t>& ids) { return llm::ids_to_bytes(ids); };
  }
  if (model.config().bos_token_id) in.bos = *model.config().bos_token_id;
  if (!model.byte_level()) {
    if (auto tok = llm::model_tokenizer(model_path)) {
      in.tokenizer = tok;
      in.encode = [tok](const std::string& t) { return tok->encode(t); };
      in.decode = [tok](const std::vector<std::int64_t>& ids) { return tok->decode(ids, /*skip_special=*/true); };
      in.bos = tok->data().add_bos ? tok->bos_id() : -1;  // as `generate` encodes prompts
    }
  }
  if (!data_path.empty()) {
    in.text = llm::read_model_data(data_path, data_opt, model_path).ids.reshape({-1}).to(at::kLong).contiguous();
    in.text_path = data_path;
  }
  if (!jsonl_path.empty()) {
    // Text prompts get the model's BOS, as kvlab generate encodes them.
    std::function<std::vector<std::int64_t>(const std::string&)> enc;
    if (in.encode)
      enc = [in](const std::string& t) {
        std::vector<std::int64_t> ids;
        if (in.bos >= 0) ids.push_back(in.bos);
        const auto body = in.encode(t);
        ids.insert(ids.end(), body.begin(), body.end());
        return ids;
      };
    in.jsonl = read_jsonl_tasks(jsonl_path, enc);
    in.jsonl_path = jsonl_path;
    for (const auto& j : in.jsonl)
      for (std::int64_t id : j.prompt)
        KVLAB_THROW_IF(id < 0 || id >= model.config().vocab_size, FormatError,
                       "{}: prompt id {} is outside the model's vocabulary [0, {})", jsonl_path, id,
                       model.config().vocab_size);
  }
  return in;
}

const std::vector<std::string>& kv_task_names() {
  static const std::vector<std::string> n = {"ppl", "retrieval", "long-gen", "jsonl", "speed"};
  return n;
}

std::int64_t kv_task_min_context(const std::string& task, const KvTaskSettings& s,
                                 const KvTaskInputs& in, const llm::Model& model) {
  if (task == "ppl") {
    require_text(in, task);
    return s.ppl.prompt_tokens;
  }
  if (task == "retrieval") {
    require_text(in, task);
    require_codec(in, task);
    KVLAB_THROW_IF(s.retrieval.context_lengths.empty(), UsageError, "--retrieval-context: give at least one length");
    return *std::min_element(s.retrieval.context_lengths.begin(), s.retrieval.context_lengths.end());
  }
  if (task == "long-gen") {
    require_text(in, task);
    require_codec(in, task);
    return long_gen_context(in, s.long_gen);
  }
  if (task == "jsonl") {
    KVLAB_THROW_IF(in.jsonl.empty(), UsageError, "task jsonl needs --jsonl FILE");
    std::size_t m = in.jsonl.front().prompt.size();
    for (const auto& j : in.jsonl) m = std::min(m, j.prompt.size());
    return static_cast<std::int64_t>(m);
  }
  if (task == "speed") return s.speed.context;
  (void)model;
  KVLAB_THROW(UsageError, "--task {}: unknown task; known tasks: ppl, retrieval, long-gen, jsonl, speed", task);
}

TaskOutcome run_kv_task(const std::string& task, const llm::Model& model, const KvTaskInputs& in,
                        const KvTaskSettings& s, const PolicyMaker& make, core::Progress& progress) {
  KVLAB_THROW_IF(s.batch_size < 1, UsageError, "--batch-size must be >= 1");
  const auto t0 = Clock::now();
  TaskOutcome r;
  if (task == "retrieval") r = run_retrieval(model, in, s, make, progress);
  else if (task == "ppl") r = run_ppl(model, in, s, make, progress);
  else if (task == "long-gen") r = run_long_gen(model, in, s, make, progress);
  else if (task == "jsonl") r = run_jsonl(model, in, s, make, progress);
  else if (task == "speed") r = run_speed(model, s, make, progress);
  else KVLAB_THROW(UsageError, "--task {}: unknown task; known tasks: ppl, retrieval, long-gen, jsonl, speed", task);
  r.seconds = since(t0);
  return r;
}

}  // namespace kvlab::compress
