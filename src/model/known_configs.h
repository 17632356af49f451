// Configs of real DeepSeek-V4 shapes for benchmarks and tests with random weights: the full V4-Flash
// dimensions with any number of layers, and a mid-size model with the full head dimensions.
#pragma once
#include <nlohmann/json.hpp>

namespace dsv4 {

// DeepSeek-V4-Flash's config.json (spec §1.1) with the first n_layers layers (ratios as the real model:
// 0, 0, then 4 and 128 alternating) and no MTP layer.
nlohmann::json v4_flash_config_json(int n_layers = 43);
// 8 layers covering every layer kind (ratios 0, 0, 4, 128, 4, 128, 4, 0; 2 hash-routed), V4-Flash head
// dimensions (head_dim 512, rope 64, window 128, indexer 128 x top-64), narrower elsewhere (hidden 1024,
// 16 heads, 16 experts top-4, vocab 4096). Small enough for the CPU reference, big enough to load every
// kernel the way the real model does.
nlohmann::json mid_size_config_json();

}  // namespace dsv4
