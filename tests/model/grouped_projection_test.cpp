// Configs whose grouped output projection starts a group inside a 128-row FP8 scale tile (o_lora_rank not a
// multiple of 128) load and compute exactly: the same model with wo_a stored as f32 (its exact de-quantized
// values) gives the same logits.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/safetensors.h"
#include "model/safetensors_writer.h"
#include "model/tiny_checkpoint.h"
#include "session_util.h"
#include "test_files.h"

using namespace dsv4;
namespace fs = std::filesystem;

namespace {

// wo_a as f32: e4m3 code times its tile's E8M0 scale, exactly.
void write_f32_wo_a_twin(const std::string& src_dir, const std::string& dst_dir, int block) {
  fs::create_directories(dst_dir);
  fs::copy_file(src_dir + "/config.json", dst_dir + "/config.json", fs::copy_options::overwrite_existing);
  SafetensorsFile f(src_dir + "/model.safetensors");
  std::map<std::string, const TensorInfo*> by;
  for (auto& t : f.tensors()) by[t.name] = &t;
  std::vector<TensorToWrite> out;
  for (auto& t : f.tensors()) {
    const bool wo_a = t.name.find(".attn.wo_a.") != std::string::npos;
    if (wo_a && t.name.ends_with(".scale")) continue;
    TensorToWrite w{t.name, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)};
    if (wo_a) {
      const TensorInfo& sc = *by.at(t.name.substr(0, t.name.size() - 7) + ".scale");
      const int64_t O = t.shape[0], I = t.shape[1], sc_cols = sc.shape[1];
      std::vector<float> v(size_t(O * I));
      for (int64_t o = 0; o < O; ++o)
        for (int64_t i = 0; i < I; ++i)
          v[size_t(o * I + i)] = e4m3_to_f32(t.data[o * I + i]) * e8m0_to_f32(sc.data[(o / block) * sc_cols + i / block]);
      w.dtype = DType::F32;
      w.bytes.resize(v.size() * 4);
      std::memcpy(w.bytes.data(), v.data(), w.bytes.size());
    }
    out.push_back(std::move(w));
  }
  write_safetensors(dst_dir + "/model.safetensors", out);
}

using test::rel;

}  // namespace

TEST(GroupedProjection, GroupStartingInsideAnFp8TileComputesExactly) {
  const std::string root = test::temp_dir("grouped_proj");
  nlohmann::json cfg = tiny_demo_config_json();
  cfg["vocab_size"] = 4096;
  cfg["o_lora_rank"] = 96;  // wo_a rows 192: group 1 = rows 96..191 spans scale tiles 0 and 1
  make_random_checkpoint(root + "/fp8", cfg, 11);
  write_f32_wo_a_twin(root + "/fp8", root + "/f32", 128);
  std::vector<int32_t> ids(300);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(2 + (i * 2654435761u) % 4000);
  std::vector<float> a, b, c;
  {
    Session s(test::session_options(root + "/fp8", Numerics::Exact, 1, 300));
    a = test::run_chunked(s, ids, ids.size());
    c = test::run_chunked(s, ids, 37);
  }
  {
    Session s(test::session_options(root + "/f32", Numerics::Exact, 1, 300));
    b = test::run_chunked(s, ids, ids.size());
  }
  ASSERT_EQ(a.size(), b.size());
  EXPECT_LE(rel(a, b), 1e-6);
  EXPECT_LE(rel(c, a), 1e-5);
  fs::remove_all(root);
}
