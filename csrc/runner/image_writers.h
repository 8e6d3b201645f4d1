// Output writers for the runner: NPY (float32, any shape) and 8-bit grayscale PNG.
// PNG uses stored (uncompressed) deflate blocks with our own CRC-32 and Adler-32, so the
// runner needs nothing beyond libtorch. Every file is written to a temporary name beside
// the target and renamed, so a failure never leaves a half-written output.
#pragma once

#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace mcfast_runner {

inline void write_atomically(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(path + ": cannot open for writing");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.flush();
    if (!out) { std::remove(tmp.c_str()); throw std::runtime_error(path + ": write failed"); }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot rename the temporary file into place");
  }
}

// NPY format 1.0: magic, version, little-endian uint16 header length, a Python-literal dict
// padded with spaces and ended by '\n' so that magic + header is a multiple of 64 bytes.
inline std::string npy_bytes(const torch::Tensor& tensor) {
  torch::Tensor t = tensor.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  std::ostringstream shape;
  shape << "(";
  for (int64_t i = 0; i < t.dim(); ++i) shape << t.size(i) << (t.dim() == 1 || i + 1 < t.dim() ? "," : "") << (i + 1 < t.dim() ? " " : "");
  shape << ")";
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape.str() + ", }";
  const size_t prefix = 10;  // magic(6) + version(2) + header length(2)
  size_t total = prefix + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  dict.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(static_cast<char>(dict.size() & 0xff));
  out.push_back(static_cast<char>((dict.size() >> 8) & 0xff));
  out += dict;
  out.append(static_cast<const char*>(t.data_ptr()), static_cast<size_t>(t.numel()) * sizeof(float));
  return out;
}

inline uint32_t crc32(const unsigned char* data, size_t n, uint32_t crc = 0) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> tab{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      tab[i] = c;
    }
    return tab;
  }();
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ data[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

inline uint32_t adler32(const unsigned char* data, size_t n) {
  uint32_t a = 1, b = 0;
  for (size_t i = 0; i < n; ++i) { a = (a + data[i]) % 65521u; b = (b + a) % 65521u; }
  return (b << 16) | a;
}

inline void put_be32(std::string& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<char>((v >> s) & 0xff));
}

inline void png_chunk(std::string& out, const char* type, const std::string& data) {
  put_be32(out, static_cast<uint32_t>(data.size()));
  std::string body = std::string(type, 4) + data;
  out += body;
  put_be32(out, crc32(reinterpret_cast<const unsigned char*>(body.data()), body.size()));
}

// One (H, W) image in model space [-1, 1] → 8-bit grayscale PNG bytes (values clamped).
inline std::string png_bytes(const torch::Tensor& image) {
  torch::Tensor img = image.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  if (img.dim() != 2) throw std::runtime_error("png_bytes expects an (H, W) image");
  const int64_t h = img.size(0), w = img.size(1);
  torch::Tensor u8 = ((img.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch::kUInt8).contiguous();
  // Raw scanlines: filter byte 0 ("None") + w pixels.
  std::string raw;
  raw.reserve(static_cast<size_t>(h * (w + 1)));
  const auto* px = u8.data_ptr<uint8_t>();
  for (int64_t y = 0; y < h; ++y) {
    raw.push_back('\0');
    raw.append(reinterpret_cast<const char*>(px + y * w), static_cast<size_t>(w));
  }
  // zlib stream of stored deflate blocks (≤ 65535 bytes each).
  std::string z;
  z.push_back('\x78');
  z.push_back('\x01');
  size_t pos = 0;
  do {
    const size_t len = std::min<size_t>(65535, raw.size() - pos);
    const bool last = pos + len == raw.size();
    z.push_back(last ? '\x01' : '\x00');
    z.push_back(static_cast<char>(len & 0xff));
    z.push_back(static_cast<char>((len >> 8) & 0xff));
    z.push_back(static_cast<char>(~len & 0xff));
    z.push_back(static_cast<char>((~len >> 8) & 0xff));
    z.append(raw, pos, len);
    pos += len;
  } while (pos < raw.size());
  put_be32(z, adler32(reinterpret_cast<const unsigned char*>(raw.data()), raw.size()));

  std::string out = "\x89PNG\r\n\x1a\n";
  std::string ihdr;
  put_be32(ihdr, static_cast<uint32_t>(w));
  put_be32(ihdr, static_cast<uint32_t>(h));
  ihdr += std::string("\x08\x00\x00\x00\x00", 5);  // bit depth 8, grayscale, deflate, filter 0, no interlace
  png_chunk(out, "IHDR", ihdr);
  png_chunk(out, "IDAT", z);
  png_chunk(out, "IEND", "");
  return out;
}

}  // namespace mcfast_runner
