// The background thread that computes prefetched grammar masks (CompiledGrammar::prefetch) while the model
// runs its forward pass. One thread: the CPU backend runs a step on one thread, and a GPU step leaves the
// host idle. Tasks run in submission order; a task the sampler got to first finds its mask taken and
// returns. DSV4_GRAMMAR_PREFETCH=0 turns prefetching off (every mask is then computed when sampled).
#pragma once
#include <functional>

namespace dsv4::grammar {

bool mask_prefetch_enabled();
void set_mask_prefetch(bool on);  // benchmarks and tests: compare with and without
void mask_worker_submit(std::function<void()> task);
void mask_worker_drain();  // waits until every submitted task has run (tests, benchmarks)

}  // namespace dsv4::grammar
