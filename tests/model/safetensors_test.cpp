#include <gtest/gtest.h>

#include "core/error.h"
#include "model/safetensors.h"
#include "test_files.h"

using namespace dsv4;
using nlohmann::json;

namespace {
std::string expect_error(const std::string& path) {
  try {
    SafetensorsFile f(path);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no error for " << path;
  return "";
}
}  // namespace

TEST(Safetensors, ReadsValidFile) {
  auto dir = test::temp_dir("st_ok");
  std::string data(8 + 6, '\0');
  float v[2] = {1.5f, -2.f};
  std::memcpy(data.data(), v, 8);
  data[8] = char(0x38);  // e4m3 1.0 ... (bytes only matter for the view)
  json h = {{"a", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}},
            {"b", {{"dtype", "F8_E4M3"}, {"shape", {2, 3}}, {"data_offsets", {8, 14}}}},
            {"__metadata__", {{"format", "pt"}}}};
  test::write_safetensors(dir + "/m.safetensors", h, data);
  Checkpoint ck(dir);
  const auto& a = ck.get("a");
  EXPECT_EQ(a.dtype, DType::F32);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2}));
  float r[2];
  std::memcpy(r, a.data, 8);
  EXPECT_EQ(r[1], -2.f);
  EXPECT_EQ(ck.get("b").nbytes, 6u);
  EXPECT_EQ(ck.find("c"), nullptr);
  try {
    ck.get("c");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor 'c'"), std::string::npos);
  }
}

TEST(Safetensors, TruncatedFile) {
  auto dir = test::temp_dir("st_trunc");
  json h = {{"a", {{"dtype", "F32"}, {"shape", {4}}, {"data_offsets", {0, 16}}}}};
  test::write_safetensors(dir + "/t.safetensors", h, std::string(8, '\0'));  // 8 of 16 bytes
  auto msg = expect_error(dir + "/t.safetensors");
  EXPECT_NE(msg.find("t.safetensors"), std::string::npos) << msg;
  EXPECT_NE(msg.find("'a'"), std::string::npos) << msg;
  // Cut inside the header itself.
  std::ofstream(dir + "/h.safetensors", std::ios::binary) << std::string("\x40\x00\x00\x00\x00\x00\x00\x00{\"a\"", 12);
  msg = expect_error(dir + "/h.safetensors");
  EXPECT_NE(msg.find("header length"), std::string::npos) << msg;
  std::ofstream(dir + "/e.safetensors", std::ios::binary) << "abc";
  EXPECT_NE(expect_error(dir + "/e.safetensors").find("truncated"), std::string::npos);
}

TEST(Safetensors, OverlappingTensors) {
  auto dir = test::temp_dir("st_overlap");
  json h = {{"a", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0, 8}}}},
            {"b", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {4, 12}}}}};
  test::write_safetensors(dir + "/o.safetensors", h, std::string(12, '\0'));
  auto msg = expect_error(dir + "/o.safetensors");
  EXPECT_NE(msg.find("overlap"), std::string::npos) << msg;
}

TEST(Safetensors, BadDtypeAndSizeMismatch) {
  auto dir = test::temp_dir("st_bad");
  json h = {{"a", {{"dtype", "F4_E2M1"}, {"shape", {2}}, {"data_offsets", {0, 1}}}}};
  test::write_safetensors(dir + "/d.safetensors", h, std::string(8, '\0'));
  auto msg = expect_error(dir + "/d.safetensors");
  EXPECT_NE(msg.find("unsupported dtype 'F4_E2M1'"), std::string::npos) << msg;
  json h2 = {{"a", {{"dtype", "BF16"}, {"shape", {3}}, {"data_offsets", {0, 8}}}}};
  test::write_safetensors(dir + "/s.safetensors", h2, std::string(8, '\0'));
  msg = expect_error(dir + "/s.safetensors");
  EXPECT_NE(msg.find("needs 6"), std::string::npos) << msg;
  json h3 = {{"a", {{"dtype", "BF16"}, {"shape", "x"}, {"data_offsets", {0, 8}}}}};
  test::write_safetensors(dir + "/j.safetensors", h3, std::string(8, '\0'));
  EXPECT_NE(expect_error(dir + "/j.safetensors").find("malformed"), std::string::npos);
  std::string junk = std::string("\x04\x00\x00\x00\x00\x00\x00\x00", 8) + "{{{{";
  std::ofstream(dir + "/x.safetensors", std::ios::binary) << junk;
  EXPECT_NE(expect_error(dir + "/x.safetensors").find("not valid JSON"), std::string::npos);
}

TEST(Safetensors, ShardedIndex) {
  auto dir = test::temp_dir("st_shards");
  test::write_safetensors(dir + "/s1.safetensors", {{"a", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {0, 4}}}}},
                          std::string(4, '\0'));
  test::write_safetensors(dir + "/s2.safetensors", {{"b", {{"dtype", "I64"}, {"shape", {1}}, {"data_offsets", {0, 8}}}}},
                          std::string(8, '\0'));
  std::ofstream(dir + "/model.safetensors.index.json")
      << json{{"weight_map", {{"a", "s1.safetensors"}, {"b", "s2.safetensors"}}}}.dump();
  Checkpoint ck(dir);
  EXPECT_EQ(ck.num_files(), 2u);
  EXPECT_EQ(*ck.get("b").file, dir + "/s2.safetensors");
  std::ofstream(dir + "/model.safetensors.index.json")
      << json{{"weight_map", {{"a", "s1.safetensors"}, {"c", "gone.safetensors"}}}}.dump();
  try {
    Checkpoint bad(dir);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("gone.safetensors"), std::string::npos);
  }
}
