// mcfast_run: run an exported mcfast TorchScript sampler (sampler.pt) without Python.
//
//   mcfast_run --sampler sampler.pt --conditions cond.safetensors --out images.npy
//              [--png PREFIX] [--seed N] [--threads N]
//
// The conditions file holds the sampler's tensor inputs by name (refs, factors, stop_steps,
// weights; optionally noise, step_noise, cond_noise for reproducing a Python run). Names are
// matched against the scripted forward's own argument names, so the runner never has to know
// the sampler's signature. The mcfast ops library is linked with --no-as-needed: its
// TORCH_LIBRARY registrations run at start-up, before the module is loaded.
#include <torch/script.h>
#include <torch/torch.h>

#include <cstdlib>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "image_writers.h"
#include "safetensors_reader.h"

namespace {

const char* kUsage =
    "usage: mcfast_run --sampler SAMPLER.pt --conditions COND.safetensors --out IMAGES.npy\n"
    "                  [--png PREFIX] [--seed N] [--threads N]\n"
    "Runs an mcfast TorchScript sampler (made by `mcfast export`) on the conditions in COND and\n"
    "writes the images (B, 1, H, W) in model space [-1, 1] as float32 NPY; --png also writes\n"
    "PREFIX_<b>.png (8-bit grayscale, [-1, 1] -> [0, 255]). --seed draws all noise in the module\n"
    "when COND has no noise tensors.\n";

struct Options {
  std::string sampler, conditions, out, png;
  int64_t seed = 0;
  bool has_seed = false;
  int threads = 0;
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error("option " + a + " needs a value");
      return argv[++i];
    };
    if (a == "--help" || a == "-h") { std::cout << kUsage; std::exit(0); }
    else if (a == "--sampler") o.sampler = value();
    else if (a == "--conditions") o.conditions = value();
    else if (a == "--out") o.out = value();
    else if (a == "--png") o.png = value();
    else if (a == "--seed") { o.seed = std::stoll(value()); o.has_seed = true; }
    else if (a == "--threads") o.threads = std::stoi(value());
    else throw std::runtime_error("unknown option " + a);
  }
  if (o.sampler.empty() || o.conditions.empty() || o.out.empty())
    throw std::runtime_error("--sampler, --conditions and --out are required");
  return o;
}

// TorchScript errors carry the scripted traceback; users need the raised message only.
std::string last_message(const std::string& what) {
  std::string msg = what;
  const std::string marker = "Error: ";
  auto pos = msg.rfind(marker);
  if (pos != std::string::npos) msg = msg.substr(pos + marker.size());
  while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
  auto nl = msg.find('\n');
  return nl == std::string::npos ? msg : msg.substr(0, nl);
}

int run(const Options& o) {
  if (o.threads > 0) torch::set_num_threads(o.threads);
  torch::jit::Module module;
  try {
    module = torch::jit::load(o.sampler);
  } catch (const c10::Error& e) {
    throw std::runtime_error(o.sampler + ": cannot load the sampler: " + last_message(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    throw std::runtime_error(o.sampler + ": cannot load the sampler: " + last_message(e.what()));
  }
  module.eval();
  auto inputs = mcfast_runner::read_safetensors(o.conditions);

  const auto& schema = module.get_method("forward").function().getSchema();
  std::set<std::string> accepted;
  for (const auto& arg : schema.arguments()) accepted.insert(arg.name());
  accepted.erase("self");
  torch::jit::Kwargs kwargs;
  for (auto& [name, tensor] : inputs) {
    if (!accepted.count(name)) {
      std::string names;
      for (const auto& n : accepted) names += (names.empty() ? "" : ", ") + n;
      throw std::runtime_error(o.conditions + ": tensor '" + name + "' is not a sampler input (inputs: " + names + ")");
    }
    kwargs[name] = tensor;
  }
  if (o.has_seed) {
    if (!accepted.count("seed")) throw std::runtime_error(o.sampler + ": this sampler takes no seed");
    kwargs["seed"] = o.seed;
  }

  torch::NoGradGuard no_grad;
  torch::Tensor images;
  try {
    images = module.get_method("forward")({}, kwargs).toTensor();
  } catch (const c10::Error& e) {
    throw std::runtime_error(last_message(e.what_without_backtrace()));
  } catch (const std::exception& e) {  // torch::jit::JITException: a `raise` inside the scripted sampler
    throw std::runtime_error(last_message(e.what()));
  }
  mcfast_runner::write_atomically(o.out, mcfast_runner::npy_bytes(images));
  if (!o.png.empty()) {
    for (int64_t b = 0; b < images.size(0); ++b)
      mcfast_runner::write_atomically(o.png + "_" + std::to_string(b) + ".png",
                                      mcfast_runner::png_bytes(images[b][0]));
  }
  std::cout << "mcfast_run: wrote " << o.out << " " << images.sizes() << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::cerr << "mcfast_run: error: " << e.what() << "\n";
    return 2;
  }
}
