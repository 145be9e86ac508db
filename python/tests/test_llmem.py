"""The llmem Python package as a training script would use it, checked against the CLI.

The CLI binary comes from $LLMEM_CLI, else build/ci/tools/llmem/llmem, else `llmem` on PATH.
"""

import enum
import json
import os
import pathlib
import shutil
import subprocess

import pytest

import llmem

ROOT = pathlib.Path(__file__).resolve().parents[2]


def cli_path():
    for candidate in (os.environ.get("LLMEM_CLI"), ROOT / "build/ci/tools/llmem/llmem",
                      shutil.which("llmem")):
        if candidate and pathlib.Path(candidate).is_file():
            return str(candidate)
    pytest.fail("no llmem CLI: build the ci preset or set LLMEM_CLI")


def cli(*args, expect=0):
    p = subprocess.run([cli_path(), *args], capture_output=True, text=True)
    assert p.returncode == expect, p.stderr
    return p


OPT_CONFIG = {
    "_name_or_path": "my/opt-tiny",
    "model_type": "opt",
    "architectures": ["OPTForCausalLM"],
    "hidden_size": 256,
    "ffn_dim": 1024,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "vocab_size": 1000,
    "max_position_embeddings": 512,
    "word_embed_proj_dim": 256,
    "do_layer_norm_before": True,
    "torch_dtype": "float16",
    "id2label": {"0": "LABEL_0"},
    "use_cache": True,
}


def test_estimate_equals_the_cli():
    r = llmem.estimate(model="facebook/opt-1.3b", batch=4, seq=512)
    out = cli("estimate", "--model", "facebook/opt-1.3b", "--batch", "4", "--seq", "512",
              "--format", "json").stdout
    assert r.peak.device_bytes == json.loads(out)["peak"]["device_bytes"]
    assert r.to_json() == out
    assert r.to_dict() == json.loads(out)


def test_options_equal_the_cli():
    r = llmem.estimate("meta-llama/Llama-3.2-1B", batch=2, seq=256, gpu="RTX4090",
                       precision="bf16", attention="sdpa", grad_ckpt=True, lora_rank=16,
                       lora_targets=["q_proj", "v_proj"], quant="nf4", optimizer="adamw-8bit")
    out = cli("estimate", "--model", "meta-llama/Llama-3.2-1B", "--batch", "2", "--seq", "256",
              "--gpu", "RTX4090", "--precision", "bf16", "--attention", "sdpa", "--grad-ckpt",
              "--lora-rank", "16", "--lora-targets", "q_proj,v_proj", "--quant", "nf4",
              "--optimizer", "adamw-8bit", "--format", "json").stdout
    assert r.to_json() == out
    assert r.setup.finetune == "qlora"


def test_paper_estimator_equals_the_cli():
    r = llmem.estimate("facebook/opt-1.3b", estimator="both", grad_ckpt=True)
    out = cli("estimate", "--model", "facebook/opt-1.3b", "--estimator", "both", "--grad-ckpt",
              "--format", "json").stdout
    assert r.to_json() == out
    assert r.paper.peak_bytes == json.loads(out)["paper"]["peak_bytes"]


def test_attribute_access():
    r = llmem.estimate("facebook/opt-125m", batch=2, seq=128, gpu="RTX4090")
    assert r.peak.allocated_bytes == r["peak"]["allocated_bytes"]
    assert sum(r.components.values()) == r.peak.allocated_bytes
    assert r.components.parameters > 0
    assert set(r.components) >= {"parameters", "gradients", "optimizer_states", "activations"}
    assert isinstance(r.fits, bool)
    assert r.gpu.name == "RTX4090"
    assert r.model.params == r.model.trainable_params
    assert r.ranks == []
    assert isinstance(r.notes, list)
    assert "peak" in dir(r)
    with pytest.raises(AttributeError, match="no field 'peek'"):
        r.peek
    with pytest.raises(AttributeError):
        r.fits = False
    d = r.to_dict()
    d["fits"] = "changed"
    assert r.fits != "changed"


def test_dict_model_equals_the_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(OPT_CONFIG))
    from_dict = llmem.estimate(OPT_CONFIG, batch=2, seq=64)
    from_file = llmem.estimate(str(path), batch=2, seq=64)
    from_path = llmem.estimate(path, batch=2, seq=64)
    assert from_dict.peak == from_file.peak == from_path.peak
    assert from_dict.model.name == "my/opt-tiny"
    out = cli("estimate", "--model", str(path), "--batch", "2", "--seq", "64", "--format",
              "json").stdout
    assert from_file.to_json() == out


class FakePretrainedConfig:
    """What transformers' PretrainedConfig offers llmem: to_dict()."""

    def to_dict(self):
        return dict(OPT_CONFIG)


def test_config_object_model():
    r = llmem.estimate(FakePretrainedConfig(), batch=1, seq=32)
    assert r.model.name == "my/opt-tiny"
    assert llmem.inspect(FakePretrainedConfig()).layers == 2


class PeftType(str, enum.Enum):
    LORA = "LORA"


def test_lora_config_dict_equals_lora_options():
    lora = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
            "target_modules": {"q_proj", "v_proj"},  # PEFT turns lists into sets
            "bias": "none", "task_type": "CAUSAL_LM", "peft_type": PeftType.LORA,
            "modules_to_save": None, "use_dora": False, "fan_in_fan_out": False}
    a = llmem.estimate("meta-llama/Llama-3.2-1B", seq=256, lora=lora)
    b = llmem.estimate("meta-llama/Llama-3.2-1B", seq=256, lora_rank=16, lora_alpha=32,
                       lora_dropout=0.05, lora_targets=["q_proj", "v_proj"])
    assert a.to_json() == b.to_json()
    assert a.setup.finetune == "lora"
    with pytest.warns(llmem.Warning, match="lora.new_peft_field"):
        c = llmem.estimate("meta-llama/Llama-3.2-1B", seq=256, lora=dict(lora, new_peft_field=None))
    assert c.to_json() == a.to_json()
    all_linear = llmem.estimate("meta-llama/Llama-3.2-1B", seq=256,
                                lora={"r": 16, "target_modules": "all-linear"})
    assert all_linear.model.trainable_params > a.model.trainable_params


def test_inspect_and_models_equal_the_cli():
    out = cli("inspect", "--model", "facebook/opt-1.3b", "--format", "json").stdout
    spec = llmem.inspect("facebook/opt-1.3b")
    assert spec.to_json() == out
    assert spec.params == 1315758080
    assert spec.tensors[0].name == "model.decoder.embed_tokens.weight"
    catalog = llmem.models()
    assert catalog.to_json() == cli("models", "--format", "json").stdout
    assert "facebook/opt-1.3b" in [m.name for m in catalog.models]
    assert "batch" in llmem.request_keys()


def error(call):
    with pytest.raises(llmem.Error) as info:
        call()
    assert isinstance(info.value, ValueError)
    return info.value


def test_errors_name_the_key():
    e = error(lambda: llmem.estimate("facebook/opt-125m", batch=0))
    assert str(e) == "request: key 'batch': expected a micro-batch between 1 and 2^20, got 0"
    assert e.key == "batch" and e.source == "request"
    # The same message as the CLI's, which names its option instead.
    cli_err = cli("estimate", "--model", "facebook/opt-125m", "--batch", "0", expect=2).stderr
    assert cli_err.strip().endswith(str(e).split(": ", 2)[2])

    cases = {
        "batch": dict(batch="4"),
        "seq": dict(seq=1),
        "grad_accum": dict(grad_accum=0),
        "precision": dict(precision="bf17"),
        "optimizer": dict(optimizer="adamx"),
        "attention": dict(attention=3),
        "grad_ckpt": dict(grad_ckpt="yes"),
        "gpu": dict(gpu="A100-81GB"),
        "gpu_mem": dict(gpu_mem=-1),
        "device": dict(device="tpu"),
        "method": dict(method="zero4"),
        "dp": dict(dp=0),
        "lora_rank": dict(lora_rank=-1),
        "lora_targets": dict(lora_targets=5),
        "lora": dict(lora="r=8"),
        "lora.r": dict(lora={"r": 0}),
        "lora.use_dora": dict(lora={"r": 8, "use_dora": True}),
        "lora.target_modules": dict(lora={"r": 8, "target_modules": "nothing"}),
        "quant": dict(quant="nf4"),
        "quant_block": dict(quant="nf4", lora_rank=8, quant_block=3),
        "torch_version": dict(torch_version="two"),
        "max_split_size_mb": dict(max_split_size_mb=1),
        "framework": dict(framework="jax"),
        "estimator": dict(estimator="guess"),
        "freeze_layers": dict(freeze_layers=-1),
        "dropout": dict(dropout=2.0),
        "fsdp_sharding": dict(fsdp_sharding="full"),
        "schedule": dict(schedule="zb"),
        "lora_dtype": dict(lora_rank=8, lora_dtype="int8"),
        "expandable_segments": dict(expandable_segments=1),
        "chunk_elems": dict(chunk_elems=-1),
        "batch ": dict(batch=object()),  # not JSON at all
    }
    for key, kwargs in cases.items():
        e = error(lambda: llmem.estimate("facebook/opt-125m", **kwargs))
        assert f"key '{key.strip()}'" in str(e), (key, str(e))
        assert e.key == key.strip(), (key, e.key)


def test_run_time_errors_name_the_key():
    e = error(lambda: llmem.estimate("facebook/opt-125m", lora_rank=8, lora_targets=["nope"]))
    assert e.key == "lora_targets"


def test_unknown_keys_and_models():
    e = error(lambda: llmem.estimate("facebook/opt-125m", batchsize=4))
    assert str(e) == "request: unknown key 'batchsize' (did you mean 'batch'?)"
    e = error(lambda: llmem.estimate("facebook/opt-1.3c"))
    assert e.key == "model"
    assert 'did you mean "facebook/opt-1.3b"' in str(e)
    e = error(lambda: llmem.estimate(12))
    assert e.key == "model"
    e = error(lambda: llmem.estimate({"model_type": "llamaa"}))
    assert e.source == "model" and e.key == "model_type"
    assert "did you mean \"llama\"" in str(e)
    e = error(lambda: llmem.inspect("facebook/opt-1.3c"))
    assert e.key == "model"
    e = error(lambda: llmem.estimate("facebook/opt-125m", seq=float("nan")))
    assert e.key == "seq"


def test_distributed_ranks_equal_the_cli():
    r = llmem.estimate("meta-llama/Llama-3.2-1B", method="zero3", dp=4)
    out = cli("estimate", "--model", "meta-llama/Llama-3.2-1B", "--method", "zero3", "--dp", "4",
              "--format", "json").stdout
    assert r.to_json() == out
    assert r.ranks[0].ranks == [0, 1, 2, 3]
    assert r.ranks[0].device_bytes == r.peak.device_bytes
    e = error(lambda: llmem.estimate("meta-llama/Llama-3.2-1B", method="megatron", tp=5))
    assert e.key == "tp" and "not divisible by tp 5" in str(e)
    f = llmem.estimate("meta-llama/Llama-3.2-1B", method="fsdp", dp=2, fsdp_sharding="SHARD_GRAD_OP")
    g = cli("estimate", "--model", "meta-llama/Llama-3.2-1B", "--method", "fsdp", "--dp", "2",
            "--fsdp-sharding", "shard-grad-op", "--format", "json").stdout
    assert f.to_json() == g


def test_deepspeed_config_dict_and_file(tmp_path):
    ds = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}},
          "bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto"}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    a = llmem.estimate("meta-llama/Llama-3.2-1B", dp=4, deepspeed_config=ds)
    b = llmem.estimate("meta-llama/Llama-3.2-1B", dp=4, deepspeed_config=str(path))
    out = cli("estimate", "--model", "meta-llama/Llama-3.2-1B", "--dp", "4", "--deepspeed-config",
              str(path), "--format", "json").stdout
    assert a.to_json() == b.to_json() == out
    assert a.setup.method == "zero3"
    with pytest.warns(llmem.Warning, match="activation_checkpointing"):
        llmem.estimate("meta-llama/Llama-3.2-1B", dp=2, deepspeed_config={
            "zero_optimization": {"stage": 2},
            "activation_checkpointing": {"partition_activations": True}})
    e = error(lambda: llmem.estimate("facebook/opt-125m", deepspeed_config=3))
    assert e.key == "deepspeed_config"


def test_fsdp_config_dict_and_file(tmp_path):
    text = ("distributed_type: FSDP\nmixed_precision: bf16\nnum_machines: 1\nnum_processes: 4\n"
            "fsdp_config:\n  fsdp_sharding_strategy: FULL_SHARD\n  fsdp_offload_params: false\n"
            "  fsdp_activation_checkpointing: true\n  fsdp_version: 1\n")
    cfg = {"distributed_type": "FSDP", "mixed_precision": "bf16", "num_machines": 1,
           "num_processes": 4,
           "fsdp_config": {"fsdp_sharding_strategy": "FULL_SHARD", "fsdp_offload_params": False,
                           "fsdp_activation_checkpointing": True, "fsdp_version": 1}}
    path = tmp_path / "fsdp.yaml"
    path.write_text(text)
    a = llmem.estimate("meta-llama/Llama-3.2-1B", fsdp_config=cfg)
    b = llmem.estimate("meta-llama/Llama-3.2-1B", fsdp_config=str(path))
    out = cli("estimate", "--model", "meta-llama/Llama-3.2-1B", "--fsdp-config", str(path),
              "--format", "json").stdout
    assert a.to_json() == b.to_json() == out
    assert a.setup.method == "fsdp"
    with pytest.warns(llmem.Warning, match="fsdp_forward_prefetch"):
        llmem.estimate("meta-llama/Llama-3.2-1B", fsdp_config={
            "distributed_type": "FSDP", "num_processes": 2,
            "fsdp_config": {"fsdp_forward_prefetch": True}})
    e = error(lambda: llmem.estimate("facebook/opt-125m", fsdp_config={"distributed_type": "NO"}))
    assert e.key == "distributed_type"


def test_non_ascii_and_long_values_in_messages():
    e = error(lambda: llmem.estimate("facebook/opt-125m", precision="é" * 80))
    assert e.key == "precision"
    e = error(lambda: llmem.estimate("facebook/opt-125m", batch=["é" * 40]))
    assert e.key == "batch" and str(e).endswith("...")


def test_threads_share_the_engine():
    from concurrent.futures import ThreadPoolExecutor
    args = [dict(seq=64 * (i % 3 + 1), batch=i % 2 + 1) for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda a: llmem.estimate("facebook/opt-125m", **a).to_json(),
                                 args))
    assert together == [llmem.estimate("facebook/opt-125m", **a).to_json() for a in args]


def test_results_and_errors_pickle():
    import pickle
    r = llmem.estimate("facebook/opt-125m", seq=64)
    back = pickle.loads(pickle.dumps(r))
    assert back.to_json() == r.to_json() and back.peak == r.peak
    assert pickle.loads(pickle.dumps(r.peak)) == r.peak
    e = error(lambda: llmem.estimate("facebook/opt-125m", seq=1))
    e2 = pickle.loads(pickle.dumps(e))
    assert (str(e2), e2.source, e2.key) == (str(e), "request", "seq")


def test_every_key_is_documented():
    doc = (ROOT / "docs/python.md").read_text()
    missing = [k for k in llmem.request_keys() if k != "model" and f"`{k}`" not in doc]
    assert not missing, f"keys missing from docs/python.md: {missing}"


def test_none_means_default():
    a = llmem.estimate("facebook/opt-125m", seq=64, gpu=None, lora=None, dropout=None)
    b = llmem.estimate("facebook/opt-125m", seq=64)
    assert a.to_json() == b.to_json()


def test_plan_equals_the_cli():
    p = llmem.plan("meta-llama/Llama-3.2-1B", gpus=2, gpu="A100-40GB", methods=["ddp", "fsdp"],
                   top=3)
    out = cli("plan", "--model", "meta-llama/Llama-3.2-1B", "--gpus", "2", "--gpu", "A100-40GB",
              "--methods", "ddp,fsdp", "--top", "3", "--format", "json")
    assert out.returncode == 0
    assert p.to_json() == out.stdout
    assert p.choice.method in ("ddp", "fsdp")
    assert p.choice.peak_bytes > 0
    e = error(lambda: llmem.plan("meta-llama/Llama-3.2-1B", gpus=0))
    assert e.key == "gpus"
    e = error(lambda: llmem.plan("meta-llama/Llama-3.2-1B", gpus=2, allow=["lora", "lorax"]))
    assert e.key == "allow" and "did you mean" in str(e)


def test_plan_around_a_recipe_warns_like_the_cli():
    recipe = str(ROOT / "tests/data/recipes/torchtune-llama3_2-3B_lora_single_device.yaml")
    with pytest.warns(Warning, match="loss._component_"):
        p = llmem.plan("meta-llama/Llama-3.2-3B", gpus=1, gpu="RTX4090", seq=1024, recipe=recipe)
    assert p.framework == "torchtune"
    assert p.choice.label == "single +ckpt +lora"
    assert p.choice.micro_batch >= 1
