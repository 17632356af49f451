#include "runtime/dspark_drafting.h"

#include <algorithm>

#include "core/error.h"

namespace dsv4 {

void dspark_draft(ModelRunner& runner, std::vector<DSparkJob>& jobs, uint64_t& next_step) {
  if (jobs.empty()) return;
  const ModelConfig& c = runner.config();
  const StepLimits& lim = runner.options().limits;
  const int B = c.dspark_block_size;
  const int64_t V = c.vocab_size;
  DSV4_CHECK(B > 0 && c.dspark_noise_token_id >= 0 && c.dspark_noise_token_id < V,
             "DSpark: block size {} / noise token {} invalid", B, c.dspark_noise_token_id);
  // Block passes: as many blocks per pass as the step limits take. base[j] = job j's [B, V] block logits.
  const int64_t per_pass = std::max<int64_t>(1, std::min({lim.max_rows / B, lim.max_logit_rows / B, lim.max_items}));
  DSV4_CHECK(lim.max_rows >= B && lim.max_logit_rows >= B, "DSpark: a step must hold one block of {} rows", B);
  std::vector<std::vector<float>> base(jobs.size());
  for (size_t j0 = 0; j0 < jobs.size(); j0 += size_t(per_pass)) {
    const size_t j1 = std::min(jobs.size(), j0 + size_t(per_pass));
    StepPlan p;
    p.step = next_step++;
    p.batch.dspark = DSparkPass::Block;
    for (size_t j = j0; j < j1; ++j) {
      DSV4_CHECK(jobs[j].k >= 1 && jobs[j].k <= B, "DSpark: {} drafts from a block of {}", jobs[j].k, B);
      StepItem it;
      it.slot = jobs[j].slot;
      it.start = jobs[j].start;
      it.tokens.assign(size_t(B), c.dspark_noise_token_id);
      it.tokens[0] = jobs[j].last;
      it.logits = LogitRows::All;
      p.batch.items.push_back(std::move(it));
    }
    const StepResult res = runner.execute(p);
    DSV4_CHECK(res.rows == int64_t(j1 - j0) * B && res.vocab == V, "DSpark block pass: {} logit rows", res.rows);
    for (size_t j = j0; j < j1; ++j) {
      const float* r = res.logits.data() + int64_t(j - j0) * B * V;
      base[j].assign(r, r + B * V);
    }
  }
  // Draft i of every job that wants it: one Markov pass over the previous tokens, then the draws.
  std::vector<int32_t> prev(jobs.size());
  for (size_t j = 0; j < jobs.size(); ++j) prev[j] = jobs[j].last;
  std::vector<float> row(static_cast<size_t>(V));
  for (int i = 0; i < B; ++i) {
    std::vector<size_t> active;
    for (size_t j = 0; j < jobs.size(); ++j)
      if (jobs[j].k > i) active.push_back(j);
    if (active.empty()) break;
    const size_t step_items = size_t(std::max<int64_t>(1, std::min(lim.max_items, lim.max_logit_rows)));
    for (size_t a0 = 0; a0 < active.size(); a0 += step_items) {
      const size_t a1 = std::min(active.size(), a0 + step_items);
      StepPlan p;
      p.step = next_step++;
      p.batch.dspark = DSparkPass::Markov;
      for (size_t a = a0; a < a1; ++a) {
        StepItem it;
        it.slot = jobs[active[a]].slot;
        it.start = jobs[active[a]].start + i;
        it.tokens = {prev[active[a]]};
        it.logits = LogitRows::Last;
        p.batch.items.push_back(std::move(it));
      }
      const StepResult res = runner.execute(p);
      DSV4_CHECK(res.rows == int64_t(a1 - a0), "DSpark Markov pass: {} logit rows", res.rows);
      for (size_t a = a0; a < a1; ++a) {
        DSparkJob& J = jobs[active[a]];
        const float* b = base[active[a]].data() + int64_t(i) * V;
        const float* m = res.logits.data() + int64_t(a - a0) * V;
        for (int64_t v = 0; v < V; ++v) row[size_t(v)] = b[v] + m[v];
        Draft d;
        d.q = J.sampler.distribution(row);
        d.token = draw_token(d.q, J.rng->uniform());
        J.sampler.record_output(d.token);
        prev[active[a]] = d.token;
        J.out->push_back(std::move(d));
      }
    }
  }
}

}  // namespace dsv4
