// Minimal safetensors reader: 8-byte little-endian header length, a JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {...}},
// then the raw little-endian tensor bytes. Only the JSON subset safetensors writes is parsed.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace mcfast_runner {

struct TensorEntry {
  std::string dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

class JsonCursor {
 public:
  JsonCursor(const std::string& text, const std::string& file) : s_(text), file_(file) {}

  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t')) ++pos_;
  }
  char peek() {
    skip_ws();
    if (pos_ >= s_.size()) fail("unexpected end of header");
    return s_[pos_];
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  bool consume(char c) {
    if (peek() == c) { ++pos_; return true; }
    return false;
  }
  std::string string() {
    expect('"');
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != '"') {
      if (s_[pos_] == '\\') {
        ++pos_;
        if (pos_ >= s_.size()) break;
        char e = s_[pos_];
        out.push_back(e == 'n' ? '\n' : e == 't' ? '\t' : e);  // names are plain ASCII in practice
      } else {
        out.push_back(s_[pos_]);
      }
      ++pos_;
    }
    if (pos_ >= s_.size()) fail("unterminated string");
    ++pos_;
    return out;
  }
  int64_t integer() {
    skip_ws();
    size_t start = pos_;
    if (pos_ < s_.size() && s_[pos_] == '-') ++pos_;
    while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
    if (start == pos_) fail("expected an integer");
    return std::stoll(s_.substr(start, pos_ - start));
  }
  std::vector<int64_t> int_list() {
    std::vector<int64_t> out;
    expect('[');
    if (consume(']')) return out;
    do { out.push_back(integer()); } while (consume(','));
    expect(']');
    return out;
  }
  // Skips any JSON value (used for __metadata__ and unknown fields).
  void skip_value() {
    char c = peek();
    if (c == '"') { string(); return; }
    if (c == '{' || c == '[') {
      char close = c == '{' ? '}' : ']';
      ++pos_;
      if (consume(close)) return;
      do {
        if (close == '}') { string(); expect(':'); }
        skip_value();
      } while (consume(','));
      expect(close);
      return;
    }
    while (pos_ < s_.size() && s_[pos_] != ',' && s_[pos_] != '}' && s_[pos_] != ']') ++pos_;
  }
  [[noreturn]] void fail(const std::string& what) {
    throw std::runtime_error(file_ + ": bad safetensors header: " + what + " at byte " + std::to_string(pos_));
  }

 private:
  const std::string& s_;
  std::string file_;
  size_t pos_ = 0;
};

inline std::pair<c10::ScalarType, size_t> dtype_of(const std::string& name, const std::string& file) {
  if (name == "F32") return {torch::kFloat32, 4};
  if (name == "F64") return {torch::kFloat64, 8};
  if (name == "F16") return {torch::kFloat16, 2};
  if (name == "BF16") return {torch::kBFloat16, 2};
  if (name == "I64") return {torch::kInt64, 8};
  if (name == "I32") return {torch::kInt32, 4};
  if (name == "I16") return {torch::kInt16, 2};
  if (name == "I8") return {torch::kInt8, 1};
  if (name == "U8") return {torch::kUInt8, 1};
  if (name == "BOOL") return {torch::kBool, 1};
  throw std::runtime_error(file + ": unsupported safetensors dtype " + name);
}

// Reads every tensor of a .safetensors file into CPU tensors, keyed by name.
inline std::map<std::string, torch::Tensor> read_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open conditions file");
  in.seekg(0, std::ios::end);
  const uint64_t file_size = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  if (file_size < 8) throw std::runtime_error(path + ": too short for a safetensors file");
  unsigned char len_bytes[8];
  in.read(reinterpret_cast<char*>(len_bytes), 8);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > file_size - 8 || header_len > (100u << 20))
    throw std::runtime_error(path + ": safetensors header length " + std::to_string(header_len) + " exceeds the file");
  std::string header(header_len, '\0');
  in.read(header.data(), static_cast<std::streamsize>(header_len));
  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = file_size - data_start;

  std::map<std::string, TensorEntry> entries;
  JsonCursor cur(header, path);
  cur.expect('{');
  if (!cur.consume('}')) {
    do {
      std::string name = cur.string();
      cur.expect(':');
      if (name == "__metadata__") { cur.skip_value(); continue; }
      TensorEntry e;
      bool has_offsets = false;
      cur.expect('{');
      do {
        std::string key = cur.string();
        cur.expect(':');
        if (key == "dtype") e.dtype = cur.string();
        else if (key == "shape") e.shape = cur.int_list();
        else if (key == "data_offsets") {
          auto off = cur.int_list();
          if (off.size() != 2 || off[0] < 0 || off[1] < off[0]) cur.fail("bad data_offsets for " + name);
          e.begin = static_cast<uint64_t>(off[0]);
          e.end = static_cast<uint64_t>(off[1]);
          has_offsets = true;
        } else cur.skip_value();
      } while (cur.consume(','));
      cur.expect('}');
      if (e.dtype.empty() || !has_offsets) cur.fail("tensor " + name + " lacks dtype or data_offsets");
      entries[name] = e;
    } while (cur.consume(','));
    cur.expect('}');
  }

  std::map<std::string, torch::Tensor> out;
  for (const auto& [name, e] : entries) {
    auto [dtype, itemsize] = dtype_of(e.dtype, path);
    uint64_t numel = 1;
    for (int64_t d : e.shape) {
      if (d < 0) throw std::runtime_error(path + ": tensor " + name + " has a negative dimension");
      numel *= static_cast<uint64_t>(d);
    }
    if (e.end > data_size || e.end - e.begin != numel * itemsize)
      throw std::runtime_error(path + ": tensor " + name + " has data_offsets that do not match its shape or the file");
    auto t = torch::empty(e.shape, torch::TensorOptions().dtype(dtype));
    in.seekg(static_cast<std::streamoff>(data_start + e.begin));
    in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(e.end - e.begin));
    if (!in) throw std::runtime_error(path + ": truncated data for tensor " + name);
    out[name] = t;
  }
  return out;
}

}  // namespace mcfast_runner
