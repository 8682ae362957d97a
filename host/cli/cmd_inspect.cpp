// `tessera inspect MODEL.gguf`: prints a GGUF file's metadata (arrays abbreviated), its tensor
// table and, when Tessera supports the architecture, the hyper-parameters it reads (or why it
// cannot run it).
#include <boost/program_options.hpp>

#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>

#include "host/cli/command.h"
#include "host/gguf/gguf.h"
#include "host/model/model_spec.h"

namespace tessera::cli {
namespace {

namespace po = boost::program_options;

std::string scalar_string(const gguf::Value& v) {
  switch (v.type) {
    case gguf::ValueType::STRING: {
      std::string s = v.as_string();
      if (s.size() > 80) s = s.substr(0, 77) + "...";
      std::string out = "\"";
      for (char c : s) out += (c == '\n') ? std::string("\\n") : std::string(1, c);
      return out + "\"";
    }
    case gguf::ValueType::BOOL:
      return v.as_bool() ? "true" : "false";
    case gguf::ValueType::FLOAT32:
    case gguf::ValueType::FLOAT64: {
      std::ostringstream s;
      s << v.as_float();
      return s.str();
    }
    case gguf::ValueType::ARRAY:
      return "[...]";
    default:
      return v.is_integer() && v.type != gguf::ValueType::INT8 &&
                     v.type != gguf::ValueType::INT16 && v.type != gguf::ValueType::INT32 &&
                     v.type != gguf::ValueType::INT64
                 ? std::to_string(v.as_uint())
                 : std::to_string(v.as_int());
  }
}

std::string value_string(const gguf::Value& v, size_t max_items) {
  if (v.type != gguf::ValueType::ARRAY) return scalar_string(v);
  const auto& arr = v.as_array();
  std::string out = "[";
  out += gguf::value_type_name(v.array_type);
  out += " x " + std::to_string(arr.size()) + "]";
  for (size_t i = 0; i < arr.size() && i < max_items; ++i) {
    out += i ? ", " : " ";
    out += scalar_string(arr[i]);
  }
  if (arr.size() > max_items) out += ", ...";
  return out;
}

std::string dims_string(const std::vector<uint64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

int run_inspect(const std::vector<std::string>& args) {
  po::options_description opts("tessera inspect MODEL.gguf [options]");
  size_t max_items = 8;
  opts.add_options()("help,h", "show this help")("array-items",
                                                 po::value<size_t>(&max_items)->default_value(8),
                                                 "array elements shown per key")(
      "model", po::value<std::string>(), "GGUF file (also the first positional argument)");
  po::positional_options_description pos;
  pos.add("model", 1);
  po::variables_map vm;
  po::store(po::command_line_parser(args).options(opts).positional(pos).run(), vm);
  po::notify(vm);
  if (vm.count("help")) {
    std::cout << opts << "\n";
    return 0;
  }
  if (!vm.count("model"))
    throw std::runtime_error("missing the GGUF file to inspect (tessera inspect MODEL.gguf)");

  const auto file = gguf::GgufFile::open(vm["model"].as<std::string>());
  std::printf(
      "file: %s\nGGUF version %u, alignment %llu, %zu metadata keys, %zu tensors, data at %llu\n\n",
      file.path().c_str(), file.version(), (unsigned long long)file.alignment(),
      file.metadata().size(), file.tensors().size(), (unsigned long long)file.data_offset());
  std::printf("metadata:\n");
  for (const auto& [key, value] : file.metadata()) {
    std::printf("  %-44s %-8s %s\n", key.c_str(),
                std::string(gguf::value_type_name(value.type)).c_str(),
                value_string(value, max_items).c_str());
  }
  std::printf("\ntensors:\n  %-36s %-6s %-22s %12s %12s\n", "name", "type", "shape", "bytes",
              "offset");
  uint64_t total = 0;
  for (const auto& t : file.tensors()) {
    std::printf("  %-36s %-6s %-22s %12llu %12llu\n", t.name.c_str(),
                std::string(gguf::type_name(t.type)).c_str(), dims_string(t.dims).c_str(),
                (unsigned long long)t.n_bytes(), (unsigned long long)t.offset);
    total += t.n_bytes();
  }
  std::printf("  total %llu bytes\n\n", (unsigned long long)total);

  try {
    const auto spec = model::ModelSpec::from_gguf(file);
    const auto& hp = spec.hp;
    std::printf(
        "model: %s, %u layers, n_embd %u, n_head %u/%u kv, head_dim %u, n_rot %u, n_ff %u, vocab "
        "%u, "
        "ctx %u, rope base %g, rms eps %g",
        std::string(spec.arch->name).c_str(), hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv,
        hp.head_dim, hp.n_rot, hp.n_ff, hp.n_vocab, hp.n_ctx_train, double(hp.rope_freq_base),
        double(hp.rms_eps));
    if (hp.n_expert)
      std::printf(", %u experts (%u used, ffn %u)", hp.n_expert, hp.n_expert_used, hp.n_ff_exp);
    std::printf("%s\n", spec.output_tied ? ", output tied to token_embd" : "");
  } catch (const model::ModelError& e) {
    std::printf("model: not runnable by Tessera: %s\n", e.what());
  }
  return 0;
}

const CommandRegistrar kRegistrar("inspect", "print a GGUF file's metadata and tensor table",
                                  run_inspect);

}  // namespace
}  // namespace tessera::cli
