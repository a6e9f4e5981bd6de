#include "runtime/config.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <cctype>
#include <charconv>
#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

#include "runtime/error.h"

namespace shardtrain {
namespace {

namespace pb = google::protobuf;

// Config path of a message type ("shardtrain.proto.ModelConfig" -> "model"), for messages.
std::string section_of(const std::string& type_name) {
  const pb::Descriptor* root = Config::descriptor();
  for (int i = 0; i < root->field_count(); ++i) {
    const pb::FieldDescriptor* f = root->field(i);
    if (f->message_type() != nullptr && f->message_type()->full_name() == type_name) {
      return f->name();
    }
  }
  return type_name == root->full_name() ? "the top level" : type_name;
}

// Collects the first parse error with its position, rewriting protobuf's wording where a
// user would not recognise the type names.
class FirstError : public pb::io::ErrorCollector {
 public:
  explicit FirstError(std::string_view source) : source_(source) {}
  void AddError(int line, pb::io::ColumnNumber column, const std::string& message) override {
    if (!message_.empty()) return;
    std::string text = message;
    const std::string kPrefix = "Message type \"";
    const std::string kMid = "\" has no field named \"";
    size_t mid = text.find(kMid);
    if (text.rfind(kPrefix, 0) == 0 && mid != std::string::npos) {
      std::string type = text.substr(kPrefix.size(), mid - kPrefix.size());
      std::string field = text.substr(mid + kMid.size());
      if (!field.empty() && field.back() == '.') field.pop_back();
      if (!field.empty() && field.back() == '"') field.pop_back();
      text = str_cat("unknown field \"", field, "\" in ", section_of(type));
    }
    message_ = str_cat(source_, ":", line + 1, ":", column + 1, ": ", text);
  }
  const std::string& message() const { return message_; }

 private:
  std::string source_;
  std::string message_;
};

std::string field_list(const pb::Descriptor* d, const std::string& prefix) {
  std::string out;
  for (int i = 0; i < d->field_count(); ++i) {
    out += (i ? ", " : "") + prefix + d->field(i)->name();
  }
  return out;
}

template <class Int>
Int parse_int(const std::string& path, const std::string& value, const char* type_name) {
  Int out{};
  const char* end = value.data() + value.size();
  auto [ptr, ec] = std::from_chars(value.data(), end, out);
  if (ec == std::errc::result_out_of_range) {
    throw UserError(str_cat("--set ", path, ": ", value, " is out of range for ", type_name));
  }
  if (ec != std::errc() || ptr != end || value.empty()) {
    throw UserError(str_cat("--set ", path, ": expected an integer, got '", value, "'"));
  }
  return out;
}

double parse_double(const std::string& path, const std::string& value) {
  char* end = nullptr;
  double out = std::strtod(value.c_str(), &end);
  if (value.empty() || end != value.c_str() + value.size() || std::isspace(value[0])) {
    throw UserError(str_cat("--set ", path, ": expected a number, got '", value, "'"));
  }
  if (!std::isfinite(out)) throw UserError(str_cat("--set ", path, ": must be finite"));
  return out;
}

bool parse_bool(const std::string& path, const std::string& value) {
  if (value == "true" || value == "1") return true;
  if (value == "false" || value == "0") return false;
  throw UserError(str_cat("--set ", path, ": expected true or false, got '", value, "'"));
}

const pb::EnumValueDescriptor* parse_enum(const std::string& path, const pb::EnumDescriptor* e,
                                          const std::string& value) {
  std::string upper = value;
  for (char& c : upper) c = char(std::toupper(static_cast<unsigned char>(c)));
  if (const pb::EnumValueDescriptor* v = e->FindValueByName(upper)) return v;
  std::string names;
  for (int i = 0; i < e->value_count(); ++i) names += (i ? ", " : "") + e->value(i)->name();
  throw UserError(str_cat("--set ", path, ": '", value, "' is not one of ", names));
}

// Sets one element (or the singular value) of `field` from text.
void set_scalar(pb::Message* msg, const pb::FieldDescriptor* field, const std::string& path,
                const std::string& value) {
  const pb::Reflection* r = msg->GetReflection();
  const bool rep = field->is_repeated();
  switch (field->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT32: {
      auto v = parse_int<int32_t>(path, value, "int32");
      rep ? r->AddInt32(msg, field, v) : r->SetInt32(msg, field, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_INT64: {
      auto v = parse_int<int64_t>(path, value, "int64");
      rep ? r->AddInt64(msg, field, v) : r->SetInt64(msg, field, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_UINT32: {
      auto v = parse_int<uint32_t>(path, value, "uint32");
      rep ? r->AddUInt32(msg, field, v) : r->SetUInt32(msg, field, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_UINT64: {
      auto v = parse_int<uint64_t>(path, value, "uint64");
      rep ? r->AddUInt64(msg, field, v) : r->SetUInt64(msg, field, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_DOUBLE: {
      double v = parse_double(path, value);
      rep ? r->AddDouble(msg, field, v) : r->SetDouble(msg, field, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_FLOAT: {
      auto v = float(parse_double(path, value));
      rep ? r->AddFloat(msg, field, v) : r->SetFloat(msg, field, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_BOOL: {
      bool v = parse_bool(path, value);
      rep ? r->AddBool(msg, field, v) : r->SetBool(msg, field, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_ENUM: {
      const pb::EnumValueDescriptor* v = parse_enum(path, field->enum_type(), value);
      rep ? r->AddEnum(msg, field, v) : r->SetEnum(msg, field, v);
      break;
    }
    case pb::FieldDescriptor::CPPTYPE_STRING:
      rep ? r->AddString(msg, field, value) : r->SetString(msg, field, value);
      break;
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      throw UserError(str_cat("--set ", path, ": is a section; set one of its fields: ",
                              field_list(field->message_type(), path + ".")));
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UserError(str_cat(path, ": cannot open config file"));
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// One validation rule: a failing check names the field path and the problem.
void require(bool ok, const std::string& field, const std::string& problem) {
  if (!ok) throw UserError(str_cat("config: ", field, " ", problem));
}

}  // namespace

Config parse_config_text(std::string_view text, std::string_view source) {
  Config config;
  FirstError errors(source);
  pb::TextFormat::Parser parser;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(std::string(text), &config)) {
    throw UserError(errors.message().empty() ? str_cat(source, ": cannot parse config")
                                             : errors.message());
  }
  return config;
}

Config load_config_file(const std::string& path) {
  return parse_config_text(read_file(path), path);
}

void apply_override(Config& config, std::string_view assignment) {
  size_t eq = assignment.find('=');
  if (eq == std::string_view::npos || eq == 0) {
    throw UserError(str_cat("--set '", assignment, "': expected path.to.field=value"));
  }
  const std::string path(assignment.substr(0, eq));
  const std::string value(assignment.substr(eq + 1));

  pb::Message* msg = &config;
  std::string walked;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string name =
        path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    const pb::Descriptor* d = msg->GetDescriptor();
    const pb::FieldDescriptor* field = d->FindFieldByName(name);
    std::string here = walked.empty() ? name : walked + "." + name;
    if (field == nullptr) {
      throw UserError(str_cat("--set ", path, ": unknown field \"", name, "\" in ",
                              walked.empty() ? "the top level" : walked, " (fields: ",
                              field_list(d, walked.empty() ? "" : walked + "."), ")"));
    }
    if (dot == std::string::npos) {  // the leaf
      if (field->is_repeated()) {
        if (field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
          throw UserError(str_cat("--set ", path, ": repeated sections cannot be set"));
        }
        msg->GetReflection()->ClearField(msg, field);
        std::stringstream items(value);
        std::string item;
        while (std::getline(items, item, ',')) {
          if (!item.empty()) set_scalar(msg, field, path, item);
        }
      } else {
        set_scalar(msg, field, path, value);
      }
      return;
    }
    if (field->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE || field->is_repeated()) {
      throw UserError(str_cat("--set ", path, ": ", here, " is a value, not a section"));
    }
    msg = msg->GetReflection()->MutableMessage(msg, field);
    walked = here;
    start = dot + 1;
  }
}

void apply_overrides(Config& config, const std::vector<std::string>& assignments) {
  for (const std::string& a : assignments) apply_override(config, a);
}

void validate_config(const Config& c, int world_size, ValidateFor purpose) {
  const auto& m = c.model();
  require(m.n_layer() >= 1, "model.n_layer", str_cat("must be >= 1, got ", m.n_layer()));
  require(m.n_head() >= 1, "model.n_head", str_cat("must be >= 1, got ", m.n_head()));
  require(m.d_model() >= 1, "model.d_model", str_cat("must be >= 1, got ", m.d_model()));
  require(m.d_model() % m.n_head() == 0, "model.d_model",
          str_cat("(", m.d_model(), ") must be divisible by model.n_head (", m.n_head(), ")"));
  require(m.vocab_size() >= 2, "model.vocab_size", str_cat("must be >= 2, got ", m.vocab_size()));
  require(m.seq_len() >= 1, "model.seq_len", str_cat("must be >= 1, got ", m.seq_len()));
  if (m.arch() == proto::LLAMA) {
    const int kv = m.has_n_kv_head() ? m.n_kv_head() : m.n_head();
    require(kv >= 1 && m.n_head() % kv == 0, "model.n_kv_head",
            str_cat("(", kv, ") must be >= 1 and divide model.n_head (", m.n_head(), ")"));
    require((m.d_model() / m.n_head()) % 2 == 0, "model.d_model",
            str_cat("/ model.n_head (head dim ", m.d_model() / m.n_head(),
                    ") must be even for rotary embeddings"));
    require(!m.has_ffn_hidden() || m.ffn_hidden() >= 1, "model.ffn_hidden",
            str_cat("must be >= 1, got ", m.ffn_hidden()));
    require(m.rope_theta() > 0, "model.rope_theta", str_cat("must be > 0, got ", m.rope_theta()));
    require(m.norm_eps() > 0, "model.norm_eps", str_cat("must be > 0, got ", m.norm_eps()));
    if (m.has_rope_scaling()) {
      const auto& r = m.rope_scaling();
      require(r.factor() >= 1, "model.rope_scaling.factor",
              str_cat("must be >= 1, got ", r.factor()));
      require(r.low_freq_factor() > 0 && r.high_freq_factor() > r.low_freq_factor(),
              "model.rope_scaling.high_freq_factor",
              "must be > model.rope_scaling.low_freq_factor > 0");
      require(r.original_max_position() >= 1, "model.rope_scaling.original_max_position",
              "must be >= 1");
    }
  } else {  // GPT2: the Llama-only fields are errors, not silently ignored
    const char* llama_only[] = {"n_kv_head", "ffn_hidden",     "rope_theta",
                                "norm_eps",  "tie_embeddings", "rope_scaling"};
    const auto* desc = m.GetDescriptor();
    const auto* refl = m.GetReflection();
    for (const char* f : llama_only) {
      require(!refl->HasField(m, desc->FindFieldByName(f)), str_cat("model.", f),
              "is a LLAMA field (model.arch is GPT2)");
    }
  }

  const auto& p = c.parallel();
  require(p.tp() >= 1, "parallel.tp", str_cat("must be >= 1, got ", p.tp()));
  require(m.n_head() % p.tp() == 0, "parallel.tp",
          str_cat("(", p.tp(), ") must divide model.n_head (", m.n_head(), ")"));
  if (m.arch() == proto::LLAMA) {
    const int kv = m.has_n_kv_head() ? m.n_kv_head() : m.n_head();
    require(kv % p.tp() == 0 || p.tp() % kv == 0, "parallel.tp",
            str_cat("(", p.tp(), ") must divide or be a multiple of model.n_kv_head (", kv, ")"));
  }
  require(p.zero_stage() >= 0 && p.zero_stage() <= 3, "parallel.zero_stage",
          str_cat("must be 0, 1, 2 or 3, got ", p.zero_stage()));
  require(p.bucket_mb() > 0, "parallel.bucket_mb", str_cat("must be > 0, got ", p.bucket_mb()));
  require(!p.sequence_parallel() || p.tp() > 1, "parallel.sequence_parallel",
          "needs parallel.tp > 1");
  require(!p.sequence_parallel() || (int64_t(c.data().micro_batch()) * m.seq_len()) % p.tp() == 0,
          "parallel.sequence_parallel",
          str_cat("needs data.micro_batch x model.seq_len (",
                  int64_t(c.data().micro_batch()) * m.seq_len(),
                  " rows) divisible by parallel.tp (", p.tp(), ")"));
  require(p.comm_timeout_s() > 0, "parallel.comm_timeout_s",
          str_cat("must be > 0 seconds, got ", p.comm_timeout_s()));
  require(p.recompute_layers() >= 0 && p.recompute_layers() <= m.n_layer(),
          "parallel.recompute_layers",
          str_cat("must be between 0 (all) and model.n_layer (", m.n_layer(), "), got ",
                  p.recompute_layers()));
  require(p.recompute_layers() == 0 || p.recompute() == proto::FULL, "parallel.recompute_layers",
          "needs parallel.recompute FULL");
  if (world_size > 0) {
    require(world_size % p.tp() == 0, "parallel.tp",
            str_cat("(", p.tp(), ") must divide the world size (", world_size, " ranks)"));
  }

  const auto& pr = c.precision();
  require(pr.grad_accum_dtype() == proto::F32 || pr.grad_accum_dtype() == pr.compute(),
          "precision.grad_accum_dtype", "must be F32 or the same as precision.compute");
  const auto& ls = pr.loss_scale();
  require(ls.initial() > 0, "precision.loss_scale.initial", "must be > 0");
  require(ls.min() > 0 && ls.min() <= ls.initial(), "precision.loss_scale.min",
          "must be > 0 and <= precision.loss_scale.initial");
  require(ls.growth_interval() >= 1, "precision.loss_scale.growth_interval", "must be >= 1");
  require(ls.hysteresis() >= 1, "precision.loss_scale.hysteresis", "must be >= 1");

  const auto& o = c.optimizer();
  require(o.lr() >= 0, "optimizer.lr", str_cat("must be >= 0, got ", o.lr()));
  require(o.min_lr() >= 0 && o.min_lr() <= o.lr(), "optimizer.min_lr",
          str_cat("must be in [0, optimizer.lr], got ", o.min_lr()));
  require(o.warmup_steps() >= 0, "optimizer.warmup_steps", "must be >= 0");
  require(o.weight_decay() >= 0, "optimizer.weight_decay", "must be >= 0");
  require(o.beta1() >= 0 && o.beta1() < 1, "optimizer.beta1",
          str_cat("must be in [0, 1), got ", o.beta1()));
  require(o.beta2() >= 0 && o.beta2() < 1, "optimizer.beta2",
          str_cat("must be in [0, 1), got ", o.beta2()));
  require(o.eps() > 0, "optimizer.eps", str_cat("must be > 0, got ", o.eps()));
  require(o.grad_clip() >= 0, "optimizer.grad_clip", "must be >= 0 (0 disables clipping)");

  const auto& d = c.data();
  require(d.micro_batch() >= 1, "data.micro_batch", str_cat("must be >= 1, got ", d.micro_batch()));
  require(d.grad_accum() >= 1, "data.grad_accum", str_cat("must be >= 1, got ", d.grad_accum()));
  if (purpose == ValidateFor::kTrain) {
    require(d.train_size() > 0, "data.train", "is empty: name at least one token shard");
  }

  const auto& t = c.train();
  require(t.steps() >= 1, "train.steps", str_cat("must be >= 1, got ", t.steps()));
  require(t.device() == "cpu" || t.device() == "cuda" || t.device() == "cuda-emu", "train.device",
          str_cat("'", t.device(), "' is not one of cpu, cuda, cuda-emu"));
  require(t.log_every() >= 1, "train.log_every", "must be >= 1");
  require(t.eval_every() >= 0, "train.eval_every", "must be >= 0 (0 disables validation)");
  require(t.eval_batches() >= 1, "train.eval_batches", "must be >= 1");
  require(t.threads() >= 0, "train.threads", "must be >= 0 (0: cores / ranks per node)");
  if (purpose == ValidateFor::kTrain && t.eval_every() > 0) {
    require(d.val_size() > 0, "data.val", "is empty but train.eval_every asks for validation");
  }

  const auto& ck = c.checkpoint();
  require(ck.every() >= 0, "checkpoint.every", "must be >= 0");
  require(ck.keep() >= 1, "checkpoint.keep", "must be >= 1");
}

std::string config_to_text(const Config& config) {
  // Print every field, defaults included, so the log records the whole effective config.
  Config full = config;
  std::vector<pb::Message*> stack{&full};
  while (!stack.empty()) {
    pb::Message* msg = stack.back();
    stack.pop_back();
    const pb::Descriptor* d = msg->GetDescriptor();
    const pb::Reflection* r = msg->GetReflection();
    for (int i = 0; i < d->field_count(); ++i) {
      const pb::FieldDescriptor* f = d->field(i);
      if (f->is_repeated()) continue;
      if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
        stack.push_back(r->MutableMessage(msg, f));
      } else if (!r->HasField(*msg, f)) {
        // Setting a field to its own default marks it present, so the printer shows it.
        switch (f->cpp_type()) {
          case pb::FieldDescriptor::CPPTYPE_INT32:
            r->SetInt32(msg, f, r->GetInt32(*msg, f));
            break;
          case pb::FieldDescriptor::CPPTYPE_INT64:
            r->SetInt64(msg, f, r->GetInt64(*msg, f));
            break;
          case pb::FieldDescriptor::CPPTYPE_UINT32:
            r->SetUInt32(msg, f, r->GetUInt32(*msg, f));
            break;
          case pb::FieldDescriptor::CPPTYPE_UINT64:
            r->SetUInt64(msg, f, r->GetUInt64(*msg, f));
            break;
          case pb::FieldDescriptor::CPPTYPE_DOUBLE:
            r->SetDouble(msg, f, r->GetDouble(*msg, f));
            break;
          case pb::FieldDescriptor::CPPTYPE_FLOAT:
            r->SetFloat(msg, f, r->GetFloat(*msg, f));
            break;
          case pb::FieldDescriptor::CPPTYPE_BOOL:
            r->SetBool(msg, f, r->GetBool(*msg, f));
            break;
          case pb::FieldDescriptor::CPPTYPE_ENUM:
            r->SetEnum(msg, f, r->GetEnum(*msg, f));
            break;
          case pb::FieldDescriptor::CPPTYPE_STRING:
            r->SetString(msg, f, r->GetString(*msg, f));
            break;
          case pb::FieldDescriptor::CPPTYPE_MESSAGE:
            break;
        }
      }
    }
  }
  std::string out;
  pb::TextFormat::PrintToString(full, &out);
  return out;
}

}  // namespace shardtrain
