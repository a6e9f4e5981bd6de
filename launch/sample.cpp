// sample.cpp — autoregressive sampling with a KV cache.
//
// The model's shape comes from the weights file: shardtrain writes its model config into the
// safetensors metadata ("shardtrain.model"); for other files (e.g. Hugging Face GPT-2) the
// shapes fix everything but the head count, given with --set model.n_head=H. The prompt runs
// once through models::Gpt::decode, then each new token alone against the cached keys and
// values: O(T) attention per token. Once the text outgrows the context the window slides (the
// last seq_len tokens), which the cache cannot follow: from then on each token reruns the
// window, as --no-cache does from the start (the reference the cache is tested against).
// Sampling: logits / temperature, the top-k kept, softmax, one draw from a seeded generator;
// ranks are by logit, then by the smaller id, so top-k 1 is exactly argmax as PyTorch takes
// it (the first maximum). --logits-out writes the logits of the prompt's positions, for
// comparisons with other implementations (tests/parity/hf_transformers.py).
#include "launch/sample.h"

#include <google/protobuf/text_format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <random>

#include "models/gpt.h"
#include "models/tokenizer.h"
#include "parallel/zero.h"
#include "runtime/config.h"
#include "runtime/error.h"
#include "runtime/log.h"
#include "runtime/mpi_comm.h"
#include "runtime/safetensors.h"

namespace shardtrain::launch {
namespace {

// The model config for a weights file: its metadata, then the overrides.
proto::ModelConfig model_config_of(const std::string& path, const std::vector<std::string>& sets) {
  SafetensorsFile file = read_safetensors(path);
  Config config;
  auto it = file.metadata.find("shardtrain.model");
  if (it != file.metadata.end()) {
    if (!google::protobuf::TextFormat::ParseFromString(it->second, config.mutable_model())) {
      throw UserError(str_cat(path, ": metadata 'shardtrain.model' is not a model config"));
    }
  } else {
    // Hugging Face layout: read the shapes; the head count must be given.
    if (file.tensors.count("model.embed_tokens.weight")) {
      throw UserError(str_cat(path,
                              ": a Llama file without shardtrain metadata; sample it "
                              "through a shardtrain export or checkpoint of it"));
    }
    auto shape = [&](const std::string& name) -> const Shape& {
      auto t = file.tensors.find(name);
      if (t == file.tensors.end()) t = file.tensors.find("transformer." + name);
      if (t == file.tensors.end())
        throw UserError(str_cat(path, ": tensor '", name, "' is missing"));
      return t->second.shape;
    };
    auto* m = config.mutable_model();
    m->set_vocab_size(int32_t(shape("wte.weight").at(0)));
    m->set_d_model(int32_t(shape("wte.weight").at(1)));
    m->set_seq_len(int32_t(shape("wpe.weight").at(0)));
    int layers = 0;
    while (file.tensors.count(str_cat("h.", layers, ".ln_1.weight")) ||
           file.tensors.count(str_cat("transformer.h.", layers, ".ln_1.weight"))) {
      ++layers;
    }
    m->set_n_layer(layers);
    bool heads_given = false;
    for (const auto& s : sets) heads_given |= s.rfind("model.n_head=", 0) == 0;
    if (!heads_given) {
      throw UserError(str_cat(path,
                              ": no shardtrain metadata; give the head count with "
                              "--set model.n_head=H"));
    }
  }
  apply_overrides(config, sets);
  validate_config(config, 0, ValidateFor::kPlan);
  return config.model();
}

}  // namespace

int run_sample(const SampleArgs& args) {
  ST_USER_CHECK(args.tokens >= 0, "--tokens must be >= 0");
  ST_USER_CHECK(args.temperature > 0, "--temperature must be > 0");
  ST_USER_CHECK(args.top_k >= 0, "--top-k must be >= 0 (0: the whole vocabulary)");
  ST_USER_CHECK(args.prompt.empty() || args.prompt_ids.empty(),
                "give --prompt TEXT or --prompt-ids IDS, not both");
  ST_USER_CHECK(!args.tokenizer.empty() || !args.prompt_ids.empty(),
                "--tokenizer is required (or give the prompt as --prompt-ids)");
  // A model directory (train --export-final DIR) holds its weights as model.safetensors.
  const std::string weights =
      std::filesystem::is_directory(args.ckpt) ? args.ckpt + "/model.safetensors" : args.ckpt;
  const proto::ModelConfig mc = model_config_of(weights, args.sets);
  std::optional<models::BpeTokenizer> tokenizer;
  if (!args.tokenizer.empty()) {
    tokenizer = models::BpeTokenizer::load(args.tokenizer);
    if (tokenizer->vocab_size() > mc.vocab_size()) {
      throw UserError(str_cat(args.tokenizer, ": vocabulary of ", tokenizer->vocab_size(),
                              " exceeds the model's ", mc.vocab_size()));
    }
  }
  // Without a tokenizer, every id of the model may be generated.
  const int32_t vocab = tokenizer ? tokenizer->vocab_size() : mc.vocab_size();
  std::vector<int32_t> ids = args.prompt_ids;
  for (size_t i = 0; i < ids.size(); ++i) {
    ST_USER_CHECK(ids[i] >= 0 && ids[i] < vocab, "--prompt-ids: id ", ids[i], " at position ", i,
                  " is outside the vocabulary (0..", vocab - 1, ")");
  }
  if (ids.empty()) ids = tokenizer->encode(args.prompt);
  if (ids.empty()) ids.push_back(tokenizer->eot_id());  // an empty prompt starts a document

  MpiRuntime mpi(nullptr, nullptr);
  auto self = mpi.world().split(mpi.world_rank(), 0);
  TrackingAllocator alloc;
  const models::GptDims dims = models::GptDims::from_config(mc);
  parallel::ZeroEngine engine(dims, {0, DType::kF32, 25}, *self, nullptr, alloc);
  engine.load_hf(weights);
  const int64_t T = dims.Tmax;
  models::Gpt<float> model(dims, 1, T, alloc);
  std::vector<int32_t> window(size_t(T), 0);
  // The last T tokens, left-aligned; causal attention makes the padding after them inert.
  // Returns how many there are; the logits of position i are model.logits() + i * Vp.
  auto forward = [&] {
    const int64_t len = std::min<int64_t>(int64_t(ids.size()), T);
    std::copy(ids.end() - len, ids.end(), window.begin());
    engine.begin_forward_only();
    model.forward(engine, window.data(), nullptr);
    return len;
  };

  if (!args.logits_out.empty()) {
    ST_USER_CHECK(int64_t(ids.size()) <= T, "--logits-out: the prompt has ", ids.size(),
                  " tokens, more than the context (", T, ")");
    const int64_t len = forward();
    std::vector<float> rows(size_t(len * dims.V));  // (len, V): the padding columns dropped
    for (int64_t t = 0; t < len; ++t) {
      std::copy_n(model.logits() + t * dims.Vp, dims.V, rows.begin() + t * dims.V);
    }
    write_safetensors(args.logits_out, {{"logits", DType::kF32, {len, dims.V}, rows.data()}},
                      {{"format", "pt"}});
  }

  // The logits of the last token: decode the tokens the cache lacks, or rerun the window.
  int64_t cached = 0;  // positions whose keys and values the cache holds
  auto next_logits = [&]() -> const float* {
    const int64_t len = int64_t(ids.size());
    if (args.no_cache || len > T) return model.logits() + (forward() - 1) * dims.Vp;
    engine.begin_forward_only();
    model.decode(engine, ids.data() + cached, len - cached, cached);
    const int64_t rows = len - cached;
    cached = len;
    return model.logits() + (rows - 1) * dims.Vp;
  };

  std::mt19937_64 rng(args.seed);
  std::string text = args.prompt;
  std::vector<std::pair<float, int32_t>> ranked;
  for (int n = 0; n < args.tokens; ++n) {
    const float* logits = next_logits();
    ranked.clear();
    for (int32_t v = 0; v < vocab; ++v) ranked.push_back({logits[v], v});
    const size_t k =
        args.top_k > 0 ? std::min<size_t>(size_t(args.top_k), ranked.size()) : ranked.size();
    std::partial_sort(ranked.begin(), ranked.begin() + long(k), ranked.end(), [](auto& a, auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    std::vector<double> p(k);
    for (size_t i = 0; i < k; ++i) {
      p[i] = std::exp(double(ranked[i].first - ranked[0].first) / args.temperature);
    }
    std::discrete_distribution<size_t> pick(p.begin(), p.end());
    const int32_t next = ranked[pick(rng)].second;
    ids.push_back(next);
    if (tokenizer && !args.print_ids) text += tokenizer->decode(&next, 1);
  }
  if (args.print_ids || !tokenizer) {
    for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
    std::printf("\n");
  } else {
    std::printf("%s\n", text.c_str());
  }
  return 0;
}

}  // namespace shardtrain::launch
