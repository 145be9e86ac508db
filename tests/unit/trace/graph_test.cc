// Copyright 2026 The llmem Authors.
// The symbolic autograd against hand-computed allocation sequences.

#include "trace/graph.h"

#include <gtest/gtest.h>

#include "trace/events.h"

namespace llmem::trace {
namespace {

// Live bytes after replaying `events` exactly.
int64_t live_bytes(const std::vector<Event>& events) {
  int64_t live = 0;
  for (const Event& e : events)
    live += e.alloc ? e.bytes : -e.bytes;
  return live;
}

using test_util::peak_live;

TEST(Graph, LinearKeepsItsInputOnlyWhenTheWeightNeedsAGradient) {
  std::vector<Event> ev;
  Graph g(&ev);
  Tid w = g.leaf(100, 4, Component::kParameters, true);  // 400 B
  Tid x = g.leaf(10, 4, Component::kInputs, false);      // 40 B
  Tid y = g.op(10, 4, {x, w}, {x});                      // 40 B, saves x
  Tid loss = g.op(1, 4, {y}, {});                        // 4 B
  g.release(x);                                          // still saved by the linear node
  g.release(y);                                          // not saved by anyone
  EXPECT_EQ(live_bytes(ev), 400 + 40 + 4);
  g.backward(loss);
  g.release(loss);
  // Backward: the loss node turns the seed (4) into grad_y (40) and frees the
  // seed; the linear node then allocates grad_w (400, kept as .grad) while
  // grad_y and the saved x are alive. Peak: 400 + 40 + 4 + 40 + 400.
  EXPECT_EQ(live_bytes(ev), 400 + 400);
  EXPECT_EQ(peak_live(ev), 400 + 40 + 4 + 40 + 400);
  EXPECT_NE(g.grad(w), kNone);
  g.clear_grad(w);
  EXPECT_EQ(live_bytes(ev), 400);
}

TEST(Graph, GradientsComputedInForwardAreHandedOverWithoutAllocation) {
  // Liger's fused linear cross-entropy: forward allocates the input's and the
  // weight's gradients and saves them; backward allocates nothing.
  std::vector<Event> ev;
  Graph g(&ev);
  Tid w = g.leaf(100, 4, Component::kParameters, true);  // 400 B
  Tid x0 = g.leaf(10, 4, Component::kInputs, true);      // 40 B
  Tid x = g.op(10, 4, {x0}, {});                         // 40 B, its backward needs nothing
  Tid gx = g.leaf(10, 4, Component::kLogitsLoss, false);
  Tid gw = g.leaf(100, 4, Component::kGradients, false);
  Tid loss = g.op(1, 4, {x, w}, {gx, gw});
  g.set_grad_source(loss, GradSource::kSaved);
  g.release(gx);
  g.release(gw);
  g.release(x);
  EXPECT_EQ(live_bytes(ev), 400 + 40 + 40 + 400 + 4);
  size_t before = ev.size();
  g.backward(loss);
  g.release(loss);
  // Allocated: the seed (4 B), then x0's gradient (40 B) in x's node; the
  // saved gradients became w's .grad and x's gradient.
  int64_t allocated = 0;
  for (size_t i = before; i < ev.size(); ++i)
    allocated += ev[i].alloc && ev[i].component != Component::kGradients ? ev[i].bytes : 0;
  EXPECT_EQ(allocated, 4 + 40);
  // Peak in x's node: w, x0, gx (x's gradient), gw (w's .grad), the loss and
  // x0's new gradient.
  EXPECT_EQ(peak_live(ev), 400 + 40 + 40 + 400 + 4 + 40);
  EXPECT_NE(g.grad(w), kNone);
  EXPECT_NE(g.grad(x0), kNone);
  EXPECT_EQ(live_bytes(ev), 400 + 40 + 400 + 40);  // w, x0 and their .grad
}

TEST(Graph, AnInPlaceBackwardReusesTheOutputGradient) {
  // Liger's RMSNorm (in_place): dX is written into dY.
  auto run = [](GradSource src) {
    std::vector<Event> ev;
    Graph g(&ev);
    Tid x0 = g.leaf(10, 4, Component::kInputs, true);  // 40 B
    Tid x = g.op(10, 4, {x0}, {});
    Tid y = g.op(10, 4, {x}, {x});
    g.set_grad_source(y, src);
    g.release(x);
    Tid loss = g.op(1, 4, {y}, {});
    g.release(y);
    g.backward(loss);
    g.release(loss);
    return peak_live(ev);
  };
  // Default: in y's backward its gradient, x's new gradient, the saved x, x0
  // and the loss (4 B). In place there is no new gradient there, and the peak
  // moves to the loss's backward: x0, x, y's gradient, the loss and the seed.
  EXPECT_EQ(run(GradSource::kNew), 4 * 40 + 4);
  EXPECT_EQ(run(GradSource::kOutputGrad), 3 * 40 + 4 + 4);
}

TEST(Graph, FrozenWeightSavesNothingWithoutInputGradient) {
  std::vector<Event> ev;
  Graph g(&ev);
  Tid w = g.leaf(100, 4, Component::kParameters, false);
  Tid x = g.leaf(10, 4, Component::kInputs, false);
  Tid y = g.op(10, 4, {x, w}, {x});
  EXPECT_FALSE(g.requires_grad(y));
  g.release(x);
  EXPECT_EQ(live_bytes(ev), 400 + 40);  // x freed: no node was recorded
  g.release(y);
}

TEST(Graph, GradientsAccumulateInPlaceAcrossMicroBatches) {
  std::vector<Event> ev;
  Graph g(&ev);
  Tid w = g.leaf(100, 4, Component::kParameters, true);
  for (int micro = 0; micro < 3; ++micro) {
    Tid x = g.leaf(10, 4, Component::kInputs, false);
    Tid y = g.op(10, 4, {x, w}, {x});
    g.release(x);
    Tid loss = g.op(1, 4, {y}, {});
    g.release(y);
    g.backward(loss);
    g.release(loss);
  }
  EXPECT_EQ(live_bytes(ev), 400 + 400);  // one .grad buffer, not three
}

TEST(Graph, CheckpointKeepsOnlyTheBlockInput) {
  auto run = [](bool checkpoint) {
    std::vector<Event> ev;
    Graph g(&ev);
    Tid w = g.leaf(1000, 4, Component::kParameters, true);
    Tid x = g.leaf(1000, 4, Component::kInputs, false);
    Tid h = g.op(1000, 4, {x, w}, {x});  // requires grad from here on
    auto block = [&g](Tid in) {
      Tid a = g.op(1000, 4, {in}, {in});  // e.g. GELU saves its input
      Tid b = g.op(1000, 4, {a}, {a});
      g.release(a);
      return b;
    };
    Tid out = checkpoint ? g.checkpoint(h, block) : block(h);
    g.release(h);
    Tid loss = g.op(1, 4, {out}, {});
    g.release(out);
    g.release(x);
    int64_t forward_live = live_bytes(ev);
    g.backward(loss);
    g.release(loss);
    g.clear_grad(w);
    EXPECT_EQ(live_bytes(ev), 4000);  // only the parameter remains
    return forward_live;
  };
  // After the forward (b is saved by no one and dies with its Python name):
  // without checkpointing w, x, h and a stay saved; with it only w, x and h
  // (the checkpoint's input). Plus the 4-byte loss.
  EXPECT_EQ(run(false), 4000 + 4000 + 4000 + 4000 + 4);
  EXPECT_EQ(run(true), 4000 + 4000 + 4000 + 4);
}

TEST(Graph, SavedOutputsAndExtraBuffersLiveUntilBackward) {
  std::vector<Event> ev;
  Graph g(&ev);
  Tid w = g.leaf(8, 4, Component::kParameters, true);
  Tid x = g.leaf(8, 4, Component::kInputs, false);
  Tid h = g.op(8, 4, {x, w}, {x});
  // A layer norm: saves its input and mean/rstd (2 × 2 rows × 4 B).
  Tid n = g.op(8, 4, {h}, {h}, Component::kActivations, {{2, 4}, {2, 4}});
  g.release(h);
  // A softmax saving its output.
  Tid s = g.op(8, 4, {n}, {}, Component::kActivations, {}, 0, true);
  g.release(n);
  g.release(x);
  Tid loss = g.op(1, 4, {s}, {});
  g.release(s);
  EXPECT_EQ(live_bytes(ev), 32 + 32 + 32 + 16 + 32 + 4);  // w, x, h, mean/rstd, s, loss
  g.backward(loss);
  g.release(loss);
  EXPECT_EQ(live_bytes(ev), 32 + 32);  // w and its .grad
}
}  // namespace
}  // namespace llmem::trace

namespace llmem::trace {
namespace {

// A tied weight used twice (embedding and lm_head): before PyTorch 2.0 the
// engine adds the two gradients into a third tensor (all three alive); with
// in-place accumulation only two. The sum happens after the embedding's
// backward has returned (engine.cpp evaluate_function), when its incoming
// gradient (10 x 4 B) and its saved ids (8 B, the last reference) are gone:
// 400 - 40 - 8 more at the peak.
TEST(Graph, TiedWeightGradientsAccumulateOutOfPlaceBeforeTorch2) {
  auto peak_of = [](bool out_of_place) {
    std::vector<Event> ev;
    Graph g(&ev);
    g.set_out_of_place_leaf_accumulation(out_of_place);
    Tid w = g.leaf(100, 4, Component::kParameters, true);  // 400 B
    Tid ids = g.leaf(1, 8, Component::kInputs, false);
    Tid x = g.op(10, 4, {w, ids}, {ids});  // embedding
    Tid y = g.op(10, 4, {x, w}, {x});      // lm_head (tied)
    g.release(x);
    Tid loss = g.op(1, 4, {y}, {});
    g.release(y);
    g.release(ids);
    g.backward(loss);
    g.release(loss);
    EXPECT_EQ(live_bytes(ev), 400 + 400);  // one .grad remains either way
    return peak_live(ev);
  };
  EXPECT_EQ(peak_of(true) - peak_of(false), 400 - 40 - 8);
}

// torch/utils/checkpoint.py: a checkpoint keeps torch.get_rng_state() (a
// 5056-byte tensor on the CPU) from its forward to its backward, and fork_rng
// takes one more while the block is recomputed.
TEST(Graph, CheckpointKeepsTheRngStateUntilItsBackward) {
  auto run = [](int64_t rng_bytes, int64_t* peak) {
    std::vector<Event> ev;
    Graph g(&ev);
    g.set_checkpoint_rng_state_bytes(rng_bytes, true);  // reentrant: until the graph dies
    Tid w = g.leaf(1000, 4, Component::kParameters, true);
    Tid x = g.leaf(1000, 4, Component::kInputs, false);
    Tid h = g.op(1000, 4, {x, w}, {x});
    Tid out = g.checkpoint(h, [&g](Tid in) { return g.op(1000, 4, {in}, {in}); });
    g.release(h);
    Tid loss = g.op(1, 4, {out}, {});
    g.release(out);
    g.release(x);
    int64_t forward_live = live_bytes(ev);
    g.backward(loss);
    g.release(loss);
    g.clear_grad(w);
    EXPECT_EQ(live_bytes(ev), 4000);  // the RNG states are gone with the checkpoint
    *peak = peak_live(ev);
    return forward_live;
  };
  int64_t peak0 = 0;
  int64_t peak1 = 0;
  EXPECT_EQ(run(0, &peak0), 4000 + 4000 + 4000 + 4);
  EXPECT_EQ(run(5056, &peak1), 4000 + 4000 + 4000 + 4 + 5056);
  // The backward peak (the recomputation, 20004 B without states: w, x, h,
  // the loss, grad_out and the recomputed output) has both states alive.
  EXPECT_EQ(peak0, 4000 * 5 + 4);
  EXPECT_EQ(peak1 - peak0, 2 * 5056);
}

// torch.Tensor.register_post_accumulate_grad_hook runs in the leaf's
// AccumulateGrad node, which the engine runs once all edges into it have
// delivered (torch/csrc/autograd/engine.cpp dependency counts): a weight used
// by the lm_head and by the embedding gets one call, after the embedding's
// backward, with both gradients summed in the node's input buffer. The
// optimizer_in_bwd hook (step, then free .grad) thus frees the tied gradient
// only at the end of backward.
TEST(Graph, PostAccumulateHookWaitsForEveryUseOfATiedWeight) {
  std::vector<Event> ev;
  Graph g(&ev);
  Tid w = g.leaf(100, 4, Component::kParameters, true);  // 400 B, tied
  Tid v = g.leaf(50, 4, Component::kParameters, true);   // 200 B, used once
  std::vector<std::pair<Tid, int64_t>> calls;            // (leaf, live bytes then)
  g.set_post_accumulate_grad_hook([&](Tid p) {
    calls.emplace_back(p, live_bytes(ev));
    g.clear_grad(p);
  });
  Tid ids = g.leaf(1, 8, Component::kInputs, false);  // 8 B
  Tid x = g.op(10, 4, {w, ids}, {ids});               // embedding, 40 B
  Tid h = g.op(10, 4, {x, v}, {x});                   // a layer, 40 B
  g.release(x);
  Tid y = g.op(10, 4, {h, w}, {h});  // lm_head (tied), 40 B
  g.release(h);
  Tid loss = g.op(1, 4, {y}, {});
  g.release(y);
  g.release(ids);
  g.backward(loss);
  g.release(loss);
  ASSERT_EQ(calls.size(), 2u);
  // The hooks run after the node that fed them has freed its incoming
  // gradient and saved tensors (engine.cpp evaluate_function). v first: the
  // layer's node has made grad_x (40, pending for the embedding) and grad_v
  // (200) and dropped grad_h and the saved x, while the head's gradient of w
  // (400) waits: params 600 + loss 4 + saved ids 8 + 400 + 40 + 200.
  EXPECT_EQ(calls[0].first, v);
  EXPECT_EQ(calls[0].second, 600 + 4 + 8 + 400 + 40 + 200);
  // w once, at the end: the embedding's contribution added in place into the
  // head's (one 400 B buffer), grad_x and ids gone.
  EXPECT_EQ(calls[1].first, w);
  EXPECT_EQ(calls[1].second, 600 + 4 + 400);
  EXPECT_EQ(live_bytes(ev), 600);
}

}  // namespace
}  // namespace llmem::trace
