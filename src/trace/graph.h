// Copyright 2026 The llmem Authors.
// A symbolic autograd: tensors are sizes, ops record what they save, and
// backward frees and allocates exactly as PyTorch's engine would. Every
// allocation and free becomes an Event for the allocator replay.

#ifndef LLMEM_SRC_TRACE_GRAPH_H_
#define LLMEM_SRC_TRACE_GRAPH_H_

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <utility>
#include <vector>

#include "llmem/estimate.h"

namespace llmem::trace {

using Tid = int32_t;
inline constexpr Tid kNone = -1;

/// Memory layout of a [b, heads, s, d] activation, which decides whether a
/// batched matmul must copy its operand (a "bshd" tensor cannot fold b and
/// heads into one batch dimension as a view).
enum class Layout : uint8_t { kContiguous, kBshd };

/// Where a node's backward gets its inputs' gradients.
enum class GradSource : uint8_t {
  /// Allocated by the backward (autograd's default).
  kNew,
  /// The node's i-th saved tensor is input i's gradient, written in place or
  /// computed in forward: Liger's SwiGLU backward writes da and db into the
  /// saved a and b; its fused linear cross-entropy computes both gradients
  /// during forward and saves them.
  kSaved,
  /// The first input's gradient is the output's, overwritten in place
  /// (Liger's RMSNorm with in_place=True writes dX into dY).
  kOutputGrad,
  /// Every input's gradient is a slice of the output's (CatBackward0 narrows
  /// the incoming gradient): nothing is allocated, and the buffer lives until
  /// the last slice has been consumed.
  kSlicesOfOutput,
};

struct Event {
  int32_t tensor;
  bool alloc;
  uint8_t step;
  Component component;
  Phase phase;
  int16_t layer;
  int64_t bytes;
};

class Graph {
 public:
  explicit Graph(std::vector<Event>* events) : events_(events) {}

  /// Room for `tensors` tensors and as many nodes (a hint from an earlier trace).
  void reserve(size_t tensors) {
    tensors_.reserve(tensors);
    nodes_.reserve(tensors / 2);
    node_tids_.reserve(tensors);
  }
  void set_phase(Phase p) { phase_ = p; }
  void set_layer(int layer) { layer_ = static_cast<int16_t>(layer); }
  void set_step(int step) { step_ = static_cast<uint8_t>(step); }
  Phase phase() const { return phase_; }
  bool grad_enabled() const { return grad_enabled_; }
  void set_grad_enabled(bool on) { grad_enabled_ = on; }
  /// PyTorch before 2.0 adds two gradients of the same leaf that arrive in
  /// one backward (tied embeddings) out of place: old + new into a third tensor.
  void set_out_of_place_leaf_accumulation(bool on) { out_of_place_leaf_ = on; }
  /// checkpoint() keeps an RNG state of this many bytes per block and takes
  /// another around the recomputation (0: none counted). The reentrant
  /// CheckpointFunction keeps it as a ctx attribute, which lives as long as
  /// the graph (to the end of backward); the non-reentrant closure dies with
  /// the block's saved tensors.
  void set_checkpoint_rng_state_bytes(int64_t bytes, bool until_backward_end) {
    rng_state_bytes_ = bytes;
    rng_until_end_ = until_backward_end;
  }

  /// A tensor that is not produced by a recorded op (parameter, input). The
  /// caller holds one reference.
  Tid leaf(int64_t numel, int elem, Component c, bool requires_grad);
  /// A leaf that owns no memory: the caller accounts for its storage
  /// (ZeRO-3 / FSDP parameters, whose shards and gathered copies are buffers).
  Tid virtual_leaf(int64_t numel, int elem, bool requires_grad);
  /// A tensor sharing another's storage (a detached view): no memory of its own.
  Tid alias(Tid base, bool requires_grad);
  /// A slice view of `base` (split / tensor_split): `numel` elements, no
  /// memory of its own; its gradient accumulates into the base's.
  Tid view(Tid base, int64_t numel);

  /// torch.Tensor.register_post_accumulate_grad_hook on every leaf. The hook
  /// belongs to the leaf's AccumulateGrad node, which the autograd engine runs
  /// once per backward, when every edge into it has delivered its gradient
  /// (torch/csrc/autograd/engine.cpp dependencies; the contributions wait,
  /// summed, in the node's InputBuffer). A leaf used by several ops (a tied
  /// embedding and lm_head) thus gets the hook once, after its last use in
  /// backward order, with the sum; a leaf used once gets it right away.
  void set_post_accumulate_grad_hook(std::function<void(Tid)> hook) {
    post_accumulate_ = std::move(hook);
  }
  /// Activation offloading (torchtune OffloadActivations): the inputs that
  /// checkpointed blocks save in forward are copied to the CPU and leave GPU
  /// memory once the last `stash` of them have been offloaded (the copy
  /// stream's pending tensors); backward brings each back for its block.
  void set_offload_checkpoint_inputs(bool on, int stash = 5) {
    offload_ = on;
    offload_stash_limit_ = stash;
  }

  /// Runs an op: allocates the output (numel × elem bytes, caller holds one
  /// reference), and when grad mode is on and any input requires grad,
  /// records a node that keeps `saved` alive until its backward, plus
  /// `saved_new` tensors the op allocates for itself (mean/rstd, masks,
  /// logsumexp; each {numel, elem}). `backward_temp` bytes are allocated and
  /// freed inside the node's backward.
  Tid op(int64_t numel, int elem, std::initializer_list<Tid> inputs,
         std::initializer_list<Tid> saved, Component c = Component::kActivations,
         std::initializer_list<std::pair<int64_t, int>> saved_new = {}, int64_t backward_temp = 0,
         bool save_output = false);

  /// An in-place op on `self` (index_add_, an in-place add or division): the
  /// output shares self's storage (nothing is allocated) and receives its own
  /// gradient. With grad on and any input requiring grad, records a node like
  /// op()'s; when `self` requires grad its gradient is the output's, passed
  /// through (autograd returns `grad` itself for self of index_add_ and add_).
  /// The caller holds one reference to the output and keeps its own on `self`.
  Tid inplace(Tid self, std::initializer_list<Tid> inputs, std::initializer_list<Tid> saved,
              std::initializer_list<std::pair<int64_t, int>> saved_new = {});

  /// torch.cat of `parts` (their total numel, in `elem`): saves nothing; its
  /// backward hands each part a slice of the output's gradient.
  Tid concat(const std::vector<Tid>& parts, int elem, Component c = Component::kActivations);

  /// How the backward of the node that produced `out` (the latest op) gets
  /// its inputs' gradients; kNew unless set. With kSaved the op's `saved`
  /// list holds exactly one tensor per input that requires grad, in order.
  void set_grad_source(Tid out, GradSource src) {
    if (!nodes_.empty() && nodes_.back().output == out)
      nodes_.back().grad_source = src;
  }

  /// Marks where one backward call would end when several forwards share one
  /// simulated backward (pipeline micro-batches): gradients arriving on the
  /// far side of the mark accumulate into .grad as a separate backward's do.
  void pass_boundary();

  /// Reentrant activation checkpointing: runs `fn` without grad now and again
  /// with grad during backward.
  Tid checkpoint(Tid input, const std::function<Tid(Tid)>& fn);

  /// tensor.requires_grad_(True) on a tensor without history: it becomes a
  /// leaf whose .grad lives as long as it does.
  void mark_requires_grad(Tid t) {
    tensors_[static_cast<size_t>(t)].requires_grad = true;
    tensors_[static_cast<size_t>(t)].is_leaf = true;
  }
  void retain(Tid t) { ++tensors_[static_cast<size_t>(t)].refs; }
  void release(Tid t);
  /// Allocates a plain buffer (optimizer state, temporaries).
  Tid buffer(int64_t bytes, Component c);

  /// Runs backward from `loss` (a scalar). Parameter gradients stay (or are
  /// accumulated); everything else the graph held is freed.
  void backward(Tid loss);

  bool requires_grad(Tid t) const { return tensors_[static_cast<size_t>(t)].requires_grad; }
  int64_t numel(Tid t) const { return tensors_[static_cast<size_t>(t)].numel; }
  int elem(Tid t) const { return tensors_[static_cast<size_t>(t)].elem; }
  int64_t bytes(Tid t) const { return numel(t) * elem(t); }
  Layout layout(Tid t) const { return tensors_[static_cast<size_t>(t)].layout; }
  void set_layout(Tid t, Layout l) { tensors_[static_cast<size_t>(t)].layout = l; }
  Component component(Tid t) const { return tensors_[static_cast<size_t>(t)].component; }
  Tid grad(Tid param) const { return tensors_[static_cast<size_t>(param)].grad; }
  /// Drops a parameter's gradient (zero_grad(set_to_none=True)).
  void clear_grad(Tid param);
  /// Called during backward whenever the engine moves from one decoder layer
  /// to another (-1: outside the layers), before the new layer's first node
  /// runs; distributed wrappers gather parameters and reduce gradients here.
  void set_layer_hook(std::function<void(int from, int to)> hook) { layer_hook_ = std::move(hook); }

 private:
  struct Tensor {
    int64_t numel = 0;
    int elem = 0;
    int32_t refs = 0;
    Tid grad = kNone;     // accumulated gradient (param .grad, or pending grad in backward)
    Tid storage = kNone;  // the tensor whose memory this one uses (aliases)
    bool requires_grad = false;
    bool is_leaf = false;
    bool live = false;
    bool grad_this_pass = false;  // .grad was set during the current backward
    int32_t pending_edges = 0;    // recorded nodes not yet run that send it a gradient
    bool grad_arrived = false;    // a gradient is waiting for the AccumulateGrad node
    bool owns_memory = true;      // false: a virtual leaf
    bool own_grad = false;        // an in-place op's output: its gradient is its own
    Layout layout = Layout::kContiguous;
    Component component = Component::kActivations;
  };
  // A node's tensors live in node_tids_ (no allocation per node): first the
  // inputs requiring grad, then the saved tensors. Nodes are created and run
  // last in, first out, so node_tids_ is a stack too.
  struct Node {
    uint32_t tids = 0;        // offset of the node's tensors in node_tids_
    uint32_t num_inputs = 0;  // inputs that require grad
    uint32_t num_saved = 0;
    Tid output = kNone;
    int64_t backward_temp = 0;
    int16_t layer = -1;
    int32_t checkpoint = -1;  // index into checkpoints_
    bool offloaded = false;   // the checkpoint input lives on the CPU
    bool boundary = false;    // pass_boundary(): no op, ends a backward pass
    GradSource grad_source = GradSource::kNew;
  };

  Node new_node() const;  // in the current layer, its tensors to be pushed next
  /// Pushes a new node's inputs that require grad (one edge each), its saved
  /// tensors (one more reference each) and the op's scratch_ tensors.
  void push_edges_and_saved(Node* node, std::initializer_list<Tid> inputs,
                            std::initializer_list<Tid> saved);
  /// Grad mode is on and some input requires grad: the op records a node.
  bool any_requires_grad(std::initializer_list<Tid> inputs) const;
  /// scratch_ = the buffers an op allocates for its own backward (none
  /// without a node).
  void make_scratch(bool needs_grad, std::initializer_list<std::pair<int64_t, int>> saved_new,
                    Component c);
  // push_tensor and emit run for every tensor and event; declared inline (and
  // defined in graph.cc, their only user) so that GCC inlines them there.
  inline Tid push_tensor(int64_t numel, int elem, Component c);  // no event
  Tid share(Tid base);  // a tensor on base's storage (alias, view)
  Tid new_tensor(int64_t numel, int elem, Component c);
  inline void emit(Tid t, bool alloc);
  /// The tensor a gradient for `t` lands in: a view's base, else `t`.
  Tid grad_target(Tid t) const;
  /// Whether `t` is a leaf whose gradient goes through an AccumulateGrad node.
  bool accumulates(Tid t) const;
  void count_edge(Tid input);  // a recorded node will send `input` a gradient
  /// One edge into `input`'s AccumulateGrad has been served; with `g` (kNone:
  /// the node sent nothing) its gradient is added first.
  void serve_edge(Tid input, Tid g);
  /// Runs the post-accumulate hooks of the leaves in ready_[from..], then drops them.
  void run_ready(size_t from);
  void accumulate(Tid target, Tid g);
  /// Whether a gradient for `input` would be summed out of place with one
  /// already waiting (a tied leaf before PyTorch 2.0).
  bool sums_out_of_place(Tid input) const;
  void run_backward(size_t begin);
  void enter_layer(int16_t layer);

  std::vector<Event>* events_;
  std::vector<Tensor> tensors_;
  std::vector<Node> nodes_;
  std::vector<Tid> node_tids_;  // every node's inputs and saved tensors, in node order
  std::vector<Tid> scratch_;    // op()'s saved_new tensors
  std::vector<std::function<Tid(Tid)>> checkpoints_;
  Phase phase_ = Phase::kSetup;
  int16_t layer_ = -1;
  uint8_t step_ = 1;
  bool grad_enabled_ = true;
  bool out_of_place_leaf_ = false;
  int64_t rng_state_bytes_ = 0;
  bool rng_until_end_ = false;
  std::vector<Tid> graph_end_;  // freed with the graph, at the end of backward
  std::function<void(int, int)> layer_hook_;
  std::vector<Tid> touched_;  // leaves whose .grad was set in the current backward
  std::vector<Tid> orphans_;  // dead leaves given a .grad in this backward (see accumulate)
  std::function<void(Tid)> post_accumulate_;
  std::vector<Tid> ready_;                    // leaves whose AccumulateGrad has all its inputs
  std::vector<std::pair<Tid, Tid>> outputs_;  // run_backward: gradients summed after the node
  bool offload_ = false;
  int offload_stash_limit_ = 5;
  std::vector<Tid> offload_stash_;  // offloaded tensors still on the GPU (copy in flight)
};

}  // namespace llmem::trace

#endif  // LLMEM_SRC_TRACE_GRAPH_H_
