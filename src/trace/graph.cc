// Copyright 2026 The llmem Authors.

#include "trace/graph.h"

#include <utility>

namespace llmem::trace {

Tid Graph::push_tensor(int64_t numel, int elem, Component c) {
  Tensor t;
  t.numel = numel;
  t.elem = elem;
  t.refs = 1;
  t.live = true;
  t.component = c;
  tensors_.push_back(t);
  return static_cast<Tid>(tensors_.size() - 1);
}

Tid Graph::new_tensor(int64_t numel, int elem, Component c) {
  Tid id = push_tensor(numel, elem, c);
  emit(id, true);
  return id;
}

void Graph::emit(Tid t, bool alloc) {
  const Tensor& x = tensors_[static_cast<size_t>(t)];
  if (x.storage != kNone)
    return;  // aliases own no memory
  if (!x.owns_memory)
    return;
  events_->push_back({t, alloc, step_, x.component, phase_, layer_, x.numel * x.elem});
}

Tid Graph::leaf(int64_t numel, int elem, Component c, bool requires_grad) {
  Tid t = new_tensor(numel, elem, c);
  tensors_[static_cast<size_t>(t)].is_leaf = true;
  tensors_[static_cast<size_t>(t)].requires_grad = requires_grad;
  return t;
}

Tid Graph::virtual_leaf(int64_t numel, int elem, bool requires_grad) {
  Tid id = push_tensor(numel, elem, Component::kParameters);
  Tensor& t = tensors_[static_cast<size_t>(id)];
  t.owns_memory = false;
  t.is_leaf = true;
  t.requires_grad = requires_grad;
  return id;
}

void Graph::enter_layer(int16_t layer) {
  if (layer == layer_)
    return;
  int16_t from = layer_;
  layer_ = layer;
  if (layer_hook_)
    layer_hook_(from, layer);
}

Tid Graph::share(Tid base) {
  Tensor t = tensors_[static_cast<size_t>(base)];
  Tid storage = t.storage == kNone ? base : t.storage;
  retain(storage);
  t.storage = storage;
  t.refs = 1;
  t.grad = kNone;
  tensors_.push_back(t);
  return static_cast<Tid>(tensors_.size() - 1);
}

Tid Graph::alias(Tid base, bool requires_grad) {
  Tid id = share(base);
  tensors_[static_cast<size_t>(id)].requires_grad = requires_grad;
  tensors_[static_cast<size_t>(id)].is_leaf = true;
  return id;
}

Tid Graph::view(Tid base, int64_t numel) {
  Tid id = share(base);
  tensors_[static_cast<size_t>(id)].numel = numel;
  tensors_[static_cast<size_t>(id)].is_leaf = false;
  return id;
}

Tid Graph::buffer(int64_t bytes, Component c) {
  return new_tensor(bytes, 1, c);
}

void Graph::release(Tid id) {
  Tensor& t = tensors_[static_cast<size_t>(id)];
  if (--t.refs > 0)
    return;
  t.live = false;
  emit(id, false);
  Tid storage = t.storage;
  // A leaf's .grad dies with it; a non-leaf's pending gradient belongs to the
  // engine's input buffer and is freed when its producer's backward runs.
  Tid grad = t.is_leaf ? t.grad : kNone;
  if (grad != kNone) {
    t.grad = kNone;
    release(grad);
  }
  if (storage != kNone)
    release(storage);
}

bool Graph::any_requires_grad(std::initializer_list<Tid> inputs) const {
  if (!grad_enabled_)
    return false;
  for (Tid i : inputs) {
    if (i != kNone && requires_grad(i))
      return true;
  }
  return false;
}

void Graph::make_scratch(bool needs_grad, std::initializer_list<std::pair<int64_t, int>> saved_new,
                         Component c) {
  scratch_.clear();
  if (!needs_grad)
    return;
  for (const auto& [n, e] : saved_new)
    scratch_.push_back(new_tensor(n, e, c));
}

void Graph::push_edges_and_saved(Node* node, std::initializer_list<Tid> inputs,
                                 std::initializer_list<Tid> saved) {
  for (Tid i : inputs) {
    if (i != kNone && requires_grad(i)) {
      node_tids_.push_back(i);
      count_edge(i);
      ++node->num_inputs;
    }
  }
  for (Tid t : saved) {
    if (t == kNone)
      continue;
    retain(t);
    node_tids_.push_back(t);
    ++node->num_saved;
  }
  for (Tid e : scratch_) {
    node_tids_.push_back(e);  // the node holds the only reference
    ++node->num_saved;
  }
}

Tid Graph::op(int64_t numel, int elem, std::initializer_list<Tid> inputs,
              std::initializer_list<Tid> saved, Component c,
              std::initializer_list<std::pair<int64_t, int>> saved_new, int64_t backward_temp,
              bool save_output) {
  bool needs_grad = any_requires_grad(inputs);
  // Buffers the op allocates for its own backward come first (mean/rstd are
  // produced alongside the output).
  make_scratch(needs_grad, saved_new, c);
  Tid out = new_tensor(numel, elem, c);
  if (!needs_grad)
    return out;
  tensors_[static_cast<size_t>(out)].requires_grad = true;
  Node node = new_node();
  node.output = out;
  node.backward_temp = backward_temp;
  push_edges_and_saved(&node, inputs, saved);
  if (save_output) {
    retain(out);
    node_tids_.push_back(out);
    ++node.num_saved;
  }
  nodes_.push_back(node);
  return out;
}

Tid Graph::inplace(Tid self, std::initializer_list<Tid> inputs, std::initializer_list<Tid> saved,
                   std::initializer_list<std::pair<int64_t, int>> saved_new) {
  bool self_grad = grad_enabled_ && requires_grad(self);
  bool needs_grad = self_grad || any_requires_grad(inputs);
  make_scratch(needs_grad, saved_new, tensors_[static_cast<size_t>(self)].component);
  Tid out = share(self);
  Tensor& o = tensors_[static_cast<size_t>(out)];
  o.is_leaf = false;
  o.own_grad = true;
  o.requires_grad = needs_grad;
  if (!needs_grad)
    return out;
  Node node = new_node();
  node.output = out;
  if (self_grad) {
    node_tids_.push_back(self);
    count_edge(self);
    ++node.num_inputs;
    node.grad_source = GradSource::kOutputGrad;
  }
  push_edges_and_saved(&node, inputs, saved);
  nodes_.push_back(node);
  return out;
}

Tid Graph::concat(const std::vector<Tid>& parts, int elem, Component c) {
  int64_t numel = 0;
  bool needs_grad = false;
  for (Tid p : parts) {
    numel += tensors_[static_cast<size_t>(p)].numel;
    needs_grad = needs_grad || (grad_enabled_ && requires_grad(p));
  }
  Tid out = new_tensor(numel, elem, c);
  if (!needs_grad)
    return out;
  tensors_[static_cast<size_t>(out)].requires_grad = true;
  Node node = new_node();
  node.output = out;
  node.grad_source = GradSource::kSlicesOfOutput;
  for (Tid p : parts) {
    if (requires_grad(p)) {
      node_tids_.push_back(p);
      count_edge(p);
      ++node.num_inputs;
    }
  }
  nodes_.push_back(node);
  return out;
}

Tid Graph::checkpoint(Tid input, const std::function<Tid(Tid)>& fn) {
  // CheckpointFunction.forward (torch/utils/checkpoint.py): ctx.fwd_cpu_state
  // = torch.get_rng_state() before running the block.
  Tid rng = rng_state_bytes_ > 0 ? new_tensor(rng_state_bytes_, 1, Component::kTemporaries) : kNone;
  bool was = grad_enabled_;
  grad_enabled_ = false;
  Tid out = fn(input);
  grad_enabled_ = was;
  if (!was || !requires_grad(input)) {
    if (rng != kNone)
      release(rng);  // no node: the ctx dies with the call
    return out;
  }
  tensors_[static_cast<size_t>(out)].requires_grad = true;
  Node node = new_node();
  node.output = out;
  node_tids_.push_back(input);
  count_edge(input);
  node.num_inputs = 1;
  if (offload_) {
    // torchtune/training/_activation_offloading.py pack_tensor: the saved
    // input is copied to pinned CPU memory on a side stream; the GPU tensor
    // is kept in fwd_stash until max_fwd_stash_size (5) newer tensors have
    // been packed, then dereferenced.
    node.offloaded = true;
    retain(input);
    offload_stash_.push_back(input);
    if (static_cast<int>(offload_stash_.size()) > offload_stash_limit_) {
      release(offload_stash_.front());
      offload_stash_.erase(offload_stash_.begin());
    }
  } else {
    retain(input);
    node_tids_.push_back(input);
    node.num_saved = 1;
  }
  if (rng != kNone && rng_until_end_) {
    graph_end_.push_back(rng);
  } else if (rng != kNone) {
    node_tids_.push_back(rng);  // the node holds the only reference
    ++node.num_saved;
  }
  checkpoints_.push_back(fn);
  node.checkpoint = static_cast<int32_t>(checkpoints_.size() - 1);
  nodes_.push_back(node);
  return out;
}

Graph::Node Graph::new_node() const {
  Node node;
  node.tids = static_cast<uint32_t>(node_tids_.size());
  node.layer = layer_;
  return node;
}

void Graph::pass_boundary() {
  Node node = new_node();
  node.boundary = true;
  nodes_.push_back(node);
}

Tid Graph::grad_target(Tid t) const {
  const Tensor& x = tensors_[static_cast<size_t>(t)];
  return x.storage != kNone && !x.is_leaf && !x.own_grad ? x.storage : t;
}

bool Graph::accumulates(Tid t) const {
  const Tensor& x = tensors_[static_cast<size_t>(t)];
  return x.is_leaf && x.storage == kNone;
}

void Graph::count_edge(Tid input) {
  Tid target = grad_target(input);
  if (accumulates(target))
    ++tensors_[static_cast<size_t>(target)].pending_edges;
}

void Graph::serve_edge(Tid input, Tid g) {
  Tid target = grad_target(input);
  bool counted = accumulates(target) && tensors_[static_cast<size_t>(target)].pending_edges > 0;
  if (counted)
    --tensors_[static_cast<size_t>(target)].pending_edges;
  if (g != kNone) {
    accumulate(target, g);
    if (counted)
      tensors_[static_cast<size_t>(target)].grad_arrived = true;
  }
  Tensor& t = tensors_[static_cast<size_t>(target)];
  if (!counted || t.pending_edges > 0 || !t.grad_arrived)
    return;
  // The AccumulateGrad node has all its inputs: it is ready, and runs (then
  // its hook) once the node that fed it has returned.
  t.grad_arrived = false;
  if (post_accumulate_)
    ready_.push_back(target);
}

void Graph::run_ready(size_t from) {
  // By index: a hook may run ops that grow ready_ (it does not today).
  for (size_t k = from; k < ready_.size(); ++k) {
    Tid p = ready_[k];
    if (tensors_[static_cast<size_t>(p)].grad != kNone)
      post_accumulate_(p);
  }
  ready_.resize(from);
}

bool Graph::sums_out_of_place(Tid input) const {
  if (!out_of_place_leaf_)
    return false;
  const Tensor& dst = tensors_[static_cast<size_t>(grad_target(input))];
  return dst.is_leaf && dst.grad != kNone && dst.grad_this_pass;
}

void Graph::accumulate(Tid target, Tid g) {
  target = grad_target(target);
  Tensor& dst = tensors_[static_cast<size_t>(target)];
  if (dst.grad == kNone) {
    dst.grad = g;  // AccumulateGrad / InputBuffer steal the first gradient
    if (dst.is_leaf && dst.storage == kNone) {
      // A parameter's .grad: relabel it (no copy is made).
      Tensor& gt = tensors_[static_cast<size_t>(g)];
      emit(g, false);
      gt.component = Component::kGradients;
      emit(g, true);
      dst.grad_this_pass = true;
      touched_.push_back(target);
      // A leaf that no name holds any more (Gemma's embedding output made to
      // require grad by PEFT's input hook, once its model forward returned):
      // its AccumulateGrad node keeps it, and so its .grad, until the graph
      // is freed after backward.
      if (!dst.live)
        orphans_.push_back(target);
    }
  } else if (out_of_place_leaf_ && dst.is_leaf && dst.grad_this_pass) {
    // Both contributions are in the node's input buffer: old + new.
    Tid old = dst.grad;
    Tid sum = new_tensor(tensors_[static_cast<size_t>(old)].numel,
                         tensors_[static_cast<size_t>(old)].elem, Component::kGradients);
    tensors_[static_cast<size_t>(target)].grad = sum;
    release(old);
    release(g);
  } else {
    release(g);  // added in place into the existing buffer
  }
}

void Graph::clear_grad(Tid param) {
  Tensor& t = tensors_[static_cast<size_t>(param)];
  if (t.grad != kNone) {
    Tid g = t.grad;
    t.grad = kNone;
    release(g);
  }
}

void Graph::run_backward(size_t begin) {
  for (size_t k = nodes_.size(); k-- > begin;) {
    const Node node = nodes_[k];
    nodes_.pop_back();
    if (node.boundary) {
      for (Tid t : touched_)
        tensors_[static_cast<size_t>(t)].grad_this_pass = false;
      touched_.clear();
      // That backward call's graph is freed, and with it its dead leaves.
      for (Tid t : orphans_)
        clear_grad(t);
      orphans_.clear();
      continue;
    }
    Tid out_grad = tensors_[static_cast<size_t>(node.output)].grad;
    bool saved_released = false;
    enter_layer(node.layer);
    size_t ready_from = ready_.size();
    if (out_grad != kNone) {
      tensors_[static_cast<size_t>(node.output)].grad = kNone;
      if (node.checkpoint >= 0) {
        // Recompute the block with grad, then backpropagate through it.
        Tid input = node_tids_[node.tids];
        // An offloaded input comes back from the CPU as a new GPU tensor
        // (unpack_tensor: cpu_tensor.to("cuda")).
        Tid detached = node.offloaded ? leaf(tensors_[static_cast<size_t>(input)].numel,
                                             tensors_[static_cast<size_t>(input)].elem,
                                             Component::kActivations, true)
                                      : alias(input, true);
        size_t mark = nodes_.size();
        // torch.random.fork_rng around the recomputation: the surrounding
        // state, saved on entry and restored on exit.
        Tid fork =
            rng_state_bytes_ > 0 ? new_tensor(rng_state_bytes_, 1, Component::kTemporaries) : kNone;
        bool was = grad_enabled_;
        grad_enabled_ = true;
        Tid sub_out = checkpoints_[static_cast<size_t>(node.checkpoint)](detached);
        grad_enabled_ = was;
        if (fork != kNone)
          release(fork);
        tensors_[static_cast<size_t>(sub_out)].grad = out_grad;
        out_grad = kNone;
        release(sub_out);
        run_backward(mark);
        enter_layer(node.layer);
        Tid g = tensors_[static_cast<size_t>(detached)].grad;
        tensors_[static_cast<size_t>(detached)].grad = kNone;
        release(detached);
        const Tensor& in = tensors_[static_cast<size_t>(input)];
        if (g != kNone && in.is_leaf && !in.live) {
          release(g);  // a leaf already gone (offloaded embedding output): nothing to keep
          g = kNone;
        }
        serve_edge(input, g);
      } else {
        Tid temp =
            node.backward_temp > 0 ? buffer(node.backward_temp, Component::kTemporaries) : kNone;
        // By index: node_tids_ may grow while the tensors are made.
        outputs_.clear();
        for (uint32_t i = 0; i < node.num_inputs; ++i) {
          Tid in = node_tids_[node.tids + i];
          const Tensor& t = tensors_[static_cast<size_t>(in)];
          Tid g;
          if (node.grad_source == GradSource::kSaved && i < node.num_saved) {
            g = node_tids_[node.tids + node.num_inputs + i];
            retain(g);
          } else if ((node.grad_source == GradSource::kOutputGrad && i == 0) ||
                     node.grad_source == GradSource::kSlicesOfOutput) {
            g = out_grad;
            retain(g);
          } else {
            g = new_tensor(t.numel, t.elem, Component::kTemporaries);
          }
          if (sums_out_of_place(in))
            outputs_.emplace_back(in, g);
          else
            serve_edge(in, g);
        }
        if (temp != kNone)
          release(temp);
        release(out_grad);
        if (!outputs_.empty()) {
          // engine.cpp evaluate_function: the incoming gradient (the argument
          // apply() consumes) and the saved tensors (release_variables) are
          // gone before the outputs are added to the next input buffers,
          // where a tied leaf's two gradients are summed out of place.
          for (uint32_t i = 0; i < node.num_saved; ++i)
            release(node_tids_[node.tids + node.num_inputs + i]);
          saved_released = true;
          for (const auto& [in, g] : outputs_)
            serve_edge(in, g);
        }
      }
    } else {
      // No gradient reached this node: its edges are served empty.
      for (uint32_t i = 0; i < node.num_inputs; ++i)
        serve_edge(node_tids_[node.tids + i], kNone);
    }
    if (!saved_released) {
      for (uint32_t i = 0; i < node.num_saved; ++i)
        release(node_tids_[node.tids + node.num_inputs + i]);
    }
    // Every node created after this one has run: its tensors are the top of the stack.
    node_tids_.resize(node.tids);
    // engine.cpp evaluate_function: the node's incoming gradient and saved
    // tensors (release_variables) are gone before the AccumulateGrad nodes it
    // made ready run; those run first among the ready nodes (sequence_nr
    // UINT64_MAX).
    run_ready(ready_from);
  }
}

void Graph::backward(Tid loss) {
  Phase was = phase_;
  phase_ = Phase::kBackward;
  // OffloadActivations: the first backward hook drops what fwd_stash still holds.
  for (Tid t : offload_stash_)
    release(t);
  offload_stash_.clear();
  Tid seed = new_tensor(1, elem(loss), Component::kTemporaries);
  tensors_[static_cast<size_t>(loss)].grad = seed;
  run_backward(0);
  for (Tid t : touched_)
    tensors_[static_cast<size_t>(t)].grad_this_pass = false;
  touched_.clear();
  for (Tid t : orphans_)
    clear_grad(t);
  orphans_.clear();
  for (Tid t : graph_end_)
    release(t);
  graph_end_.clear();
  enter_layer(-1);
  phase_ = was == Phase::kBackward ? was : Phase::kBackward;
}

}  // namespace llmem::trace
