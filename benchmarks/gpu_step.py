"""GRPO step speed on one GPU: vanilla TRL against ProRLTrainer, the generation backends, and the hardware limits.

Issue 7, item 1. A randomly initialised model of DeepSeek-R1-Distill-Qwen-1.5B's shape (Qwen2: hidden 1536, 28 layers,
12 heads, 2 KV heads, intermediate 8960, vocab 151936, bf16, sdpa; built from config, weights do not change speed),
a locally built word-level tokenizer padded to the vocabulary, completions forced to L tokens (min_new_tokens), 8
prompts x 16 generations per optimizer step, gradient checkpointing, beta 1e-4. Parts (`--parts`, all by default):

  hw     the bf16 matmul ceiling (8192^3) and the copy bandwidth of this device, measured in this call;
  gen    the generation backends alone at each `--gen-lengths` L (batch 128, 128-token prompts): HF generate
         (what TRL runs) against prorl's static-cache backend (compiled decode step + CUDA graphs, with and without
         the pack_gqa decode override): new tokens/s, ms per decode step and its memory-bandwidth floor;
  train  (a) trl.GRPOTrainer, (b) ProRLTrainer with dynamic sampling and resets (same HF generation), (c) ProRLTrainer
         with the static generation backend: step time split into generation / scoring / reference log-probs /
         training, completion and training tokens/s, training-phase MFU (6*N*tokens/time over the measured matmul
         ceiling and over the spec peak), peak memory. Dynamic sampling's extra rounds are reported separately.
         A trainer name may add training-phase changes, each a run of its own (`prorl_static+fused+mb32`:
         TRAIN_VARIANTS), so that each change's effect on MFU is measured.

Every part appends to the JSON at `--out` as soon as it is done (a run stopped by a time limit keeps what it had).
`--smoke` runs a tiny shape on CPU end to end in well under a minute (what tests/test_generation_benchmark.py runs).

    .venv/bin/python benchmarks/gpu_step.py --smoke --out /tmp/gpu_step_smoke.json
    python benchmarks/gpu_step.py --parts hw,gen --out $OUT/gen.json         # on the GPU, see README_gpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import zlib
from datetime import datetime, timezone
from pathlib import Path

import torch
from measure import PhaseClock, copy_gbs, matmul_tflops, peak_memory, reset_memory, spec_tflops, summarize, timed

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHAPES = {
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=131072, rope_theta=10000.0,
                 rms_norm_eps=1e-6, tie_word_embeddings=False),
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=False),
}
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # pad, unused, eos
PAD_ID, EOS_ID = 0, 2


# -- Device and hardware limits ------------------------------------------------------------------------------------
def build_tokenizer(vocab_size: int):
    """A word-level tokenizer with one token per model id: special tokens, then 'w3', 'w4', ... 'w<vocab-1>'."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL)} | {f"w{i}": i for i in range(len(SPECIAL), vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=SPECIAL[PAD_ID], eos_token=SPECIAL[EOS_ID],
                                   unk_token=SPECIAL[0], padding_side="left")


def build_model(shape: dict, dtype: torch.dtype, device: torch.device):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(**shape, pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=None,
                         attn_implementation="sdpa")
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(config, dtype=dtype)
    model.generation_config.update(pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=None)
    return model.eval()


def prompt_dataset(n: int, words: int, vocab_size: int, seed: int = 0):
    """`n` prompts of `words` tokens; every 4th prompt is 'constant' (its reward is the same for all completions, so
    dynamic sampling drops its group and draws more prompts)."""
    from datasets import Dataset

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(len(SPECIAL), vocab_size, (n, words), generator=gen)
    return Dataset.from_dict({"prompt": [" ".join(f"w{i}" for i in row) for row in ids.tolist()],
                              "kind": ["constant" if i % 4 == 0 else "random" for i in range(n)]})


def coin_reward(prompts, completions, kind, **kwargs) -> list[float]:
    """0 for every completion of a 'constant' prompt, else a fair coin from a hash of the completion text."""
    return [0.0 if k == "constant" else float(zlib.crc32(c.encode()) % 2) for c, k in zip(completions, kind)]


# -- Part "gen": generation backends alone ---------------------------------------------------------------------------
GEN_VARIANTS = {  # name -> generate() keyword arguments
    "hf": {"backend": "hf"},
    "static": {"backend": "static", "pack_gqa": True},
    "static_nopack": {"backend": "static", "pack_gqa": False},
    "static_eager": {"backend": "static", "compile": False},
}


def matmul_params(model) -> int:
    """Parameters that take part in matmuls: all but the input-embedding table (a lookup; the LM head counts)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight
    tied = any(p is embedding for p in model.get_output_embeddings().parameters())
    return total if tied else total - embedding.numel()


def decode_floor_ms(model, batch: int, context: float, gbs: float) -> float:
    """Bytes one decode step must read at least (all weights once, the K/V cache up to the mean context) over the
    measured copy bandwidth."""
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    itemsize = next(model.parameters()).element_size()
    weights = matmul_params(model) * itemsize  # the input embedding is a lookup: B rows, not the table
    kv = 2 * c.num_hidden_layers * batch * c.num_key_value_heads * head_dim * context * itemsize
    return (weights + kv) / (gbs * 1e9) * 1e3


def bench_generation(model, lengths: list[int], batch: int, prompt_len: int, variants: list[str], gbs: float,
                     device: torch.device) -> dict:
    from transformers import GenerationConfig

    from prorl.trainer.generation import generate

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(len(SPECIAL), model.config.vocab_size, (batch, prompt_len), generator=gen).to(device)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        _, prefill_s = timed(lambda: model(input_ids=ids, attention_mask=mask, logits_to_keep=1), device)
    results = {}
    for length in lengths:
        # TRL's generation config (GRPOTrainer.__init__), with the completion length forced
        config = GenerationConfig(max_new_tokens=length, min_new_tokens=length, do_sample=True, temperature=1.0,
                                  top_p=1.0, top_k=0, repetition_penalty=1.0, pad_token_id=PAD_ID,
                                  eos_token_id=EOS_ID, disable_compile=True)
        floor = decode_floor_ms(model, batch, prompt_len + length / 2, gbs)
        row = {"batch": batch, "prompt_len": prompt_len, "prefill_s": prefill_s, "floor_ms_per_step": floor}
        for name in variants:
            torch._dynamo.reset()  # each (length, variant) compiles afresh: no shape falls past dynamo's limit to eager
            reset_memory(device)
            run = lambda: generate(model, ids, mask, config, **GEN_VARIANTS[name])  # noqa: E731
            if name == "hf":  # warm the allocator with a short run; HF has nothing to compile
                generate(model, ids, mask, GenerationConfig(**{**config.to_dict(), "max_new_tokens": 16,
                                                               "min_new_tokens": 16}), backend="hf")
                cold_s = None
            else:
                _, cold_s = timed(run, device)  # includes compile + CUDA-graph capture for this shape
            out, warm_s = timed(run, device)
            if tuple(out.shape) != (batch, length):
                raise RuntimeError(f"{name}: completions of shape {tuple(out.shape)}, expected {(batch, length)}")
            step_ms = (warm_s - prefill_s) / length * 1e3
            row[name] = {"cold_s": cold_s, "warm_s": warm_s, "new_tok_per_s": batch * length / warm_s,
                         "ms_per_decode_step": step_ms, "x_floor": step_ms / floor, **peak_memory(device)}
            print(f"gen L={length} {name:14s} {row[name]['new_tok_per_s']:10.0f} tok/s {step_ms:8.2f} ms/step "
                  f"(floor {floor:.2f} ms, x{step_ms / floor:.1f}) warm {warm_s:.1f}s cold {cold_s}", flush=True)
        if "hf" in row:
            for name in variants:
                if name != "hf":
                    row[f"speedup_{name}_vs_hf"] = row["hf"]["warm_s"] / row[name]["warm_s"]
        results[f"L{length}"] = row
    return results


# -- Part "train": trainers (timed by measure.PhaseClock) ------------------------------------------------------
# Training-phase changes a trainer name can add with "+" (e.g. prorl_static+fused+mb32), each measured as its own run
# so that every change's effect on the training phase (MFU) is reported: config overrides of (Pro)GRPOConfig.
TRAIN_VARIANTS = {
    "fused": {"optim": "adamw_torch_fused"},  # one fused AdamW kernel instead of a loop over tensors
    "nockpt": {"gradient_checkpointing": False},  # no recomputation: more memory, ~1/4 fewer FLOPs
    "mb32": {"per_device_train_batch_size": 32},  # larger micro-batches (fewer, bigger matmuls)
    "mb64": {"per_device_train_batch_size": 64},
    "liger": {"use_liger_kernel": True},  # Liger's fused kernels (needs the liger-kernel package)
    "ckpt2": {"activation_checkpointing_kwargs": {"every_n_layers": 2}},  # selective: every 2nd layer recomputed
    "pack": {"padding_free": True},  # padding-free packed rows (prorl trainers; forced lengths: prompt padding only)
}
PRORL_ONLY_VARIANTS = {"ckpt2": "vanilla TRL 1.16 raises 'Unexpected keyword arguments: every_n_layers' after its "
                                "first generation", "pack": "padding_free is a ProRLConfig field"}


def trainer_kind(name: str) -> tuple[str, dict]:
    """`base+variant+...` -> (base trainer, merged config overrides)."""
    base, *variants = name.split("+")
    unknown = [v for v in variants if v not in TRAIN_VARIANTS]
    if base not in ("trl", "prorl", "prorl_static") or unknown:
        raise SystemExit(f"--trainers: {name!r}: base must be trl, prorl or prorl_static and variants of "
                         f"{sorted(TRAIN_VARIANTS)}")
    for variant in variants:
        if base == "trl" and variant in PRORL_ONLY_VARIANTS:  # ckpt2: tests/test_trainer_checkpointing.py
            raise SystemExit(f"--trainers: {name!r}: {PRORL_ONLY_VARIANTS[variant]}; {variant} is for the prorl "
                             "trainers")
    return base, {k: v for variant in variants for k, v in TRAIN_VARIANTS[variant].items()}


def run_trainer(name: str, model_dir: str, tokenizer, dataset, args, device, dtype) -> tuple[list[dict], dict]:
    from trl import GRPOConfig, GRPOTrainer

    from prorl.trainer import ProRLConfig, ProRLTrainer

    kind, overrides = trainer_kind(name)
    common = dict(
        output_dir=tempfile.mkdtemp(prefix=f"gpu_step_{kind}_"), per_device_train_batch_size=args.micro_batch,
        num_generations=args.generations, max_completion_length=args.length,
        generation_kwargs={"min_new_tokens": args.length}, beta=1e-4, loss_type="dapo", epsilon=0.2,
        epsilon_high=0.4, temperature=1.0, learning_rate=1e-6, lr_scheduler_type="constant",
        gradient_checkpointing=True, bf16=dtype == torch.bfloat16, use_cpu=device.type == "cpu",
        max_steps=args.steps, logging_steps=args.steps, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
        dataloader_num_workers=0, model_init_kwargs={"dtype": dtype, "attn_implementation": "sdpa"},
    )
    common.update(overrides)
    common["gradient_accumulation_steps"] = args.prompts * args.generations // common["per_device_train_batch_size"]
    hook = None
    if kind == "trl":
        trainer_cls, config = GRPOTrainer, GRPOConfig(**common)
    else:
        prorl = dict(dynamic_sampling=True, reset_every_steps=2)
        trainer_cls = ProRLTrainer
        if kind == "prorl_static":
            prorl["generation_backend"] = "static"
            hook = "ProRLConfig.generation_backend='static'"
        config = ProRLConfig(**common, **prorl)
    trainer = trainer_cls(model=model_dir, reward_funcs=coin_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    clock = PhaseClock(device)
    clock.attach(trainer)
    reset_memory(device)
    trainer.train()
    info = {"hook": hook, "overrides": overrides, **peak_memory(device)}
    if kind != "trl":
        info["resets"] = trainer.resets.state.reset_count
    del trainer
    torch._dynamo.reset()  # drop compiled decode steps (and their CUDA graphs) of this run's model
    reset_memory(device)
    return clock.steps, info


# -- Main ---------------------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="JSON file to write (rewritten after each part)")
    p.add_argument("--smoke", action="store_true", help="tiny shape on CPU, small sizes: checks the script")
    p.add_argument("--parts", default="hw,gen,train", help="comma list of hw, gen, train")
    p.add_argument("--length", type=int, default=512, help="completion length L of the trainer runs")
    p.add_argument("--gen-lengths", default="512,2048", help="completion lengths of the generation part")
    p.add_argument("--gen-batch", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=128, help="prompt tokens")
    p.add_argument("--variants", default="hf,static,static_nopack", help=f"of {sorted(GEN_VARIANTS)}")
    p.add_argument("--trainers", default="trl,prorl,prorl_static",
                   help="comma list of trl, prorl, prorl_static, each optionally +" + "+".join(TRAIN_VARIANTS))
    p.add_argument("--prompts", type=int, default=8, help="prompts per optimizer step")
    p.add_argument("--generations", type=int, default=16, help="completions per prompt")
    p.add_argument("--micro-batch", type=int, default=16, help="per-device train batch (completions)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per trainer")
    p.add_argument("--warmup-steps", type=int, default=1, help="first steps left out of the means")
    p.add_argument("--matmul-n", type=int, default=8192)
    p.add_argument("--cudnn-sdp", choices=["on", "off"], default="on", help="torch's cuDNN SDPA backend")
    args = p.parse_args(argv)
    if args.smoke:
        args.length, args.gen_lengths, args.gen_batch, args.prompt_len = 8, "8,16", 8, 16
        args.prompts, args.generations, args.micro_batch, args.steps, args.matmul_n = 2, 4, 4, 2, 256
        args.variants = ",".join(v for v in args.variants.split(",") if v in ("hf", "static", "static_eager"))
    completions = args.prompts * args.generations
    for name in args.trainers.split(","):
        micro = trainer_kind(name)[1].get("per_device_train_batch_size", args.micro_batch)
        if completions % micro:
            p.error(f"{name}: the micro-batch ({micro}) must divide --prompts x --generations ({completions})")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    parts = set(args.parts.split(","))
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        torch.set_num_threads(1)  # tiny tensors: one thread beats contending ones on a shared CPU
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.backends.cuda.enable_cudnn_sdp(args.cudnn_sdp == "on")
    shape = SHAPES["smoke" if args.smoke else "1.5b"]
    import transformers
    import trl

    results = {"meta": {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "args": vars(args), "shape": shape,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "dtype": str(dtype), "torch": torch.__version__, "transformers": transformers.__version__,
        "trl": trl.__version__}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save = lambda: out.write_text(json.dumps(results, indent=1) + "\n")  # noqa: E731

    hw = results["hardware"] = {"spec_bf16_tflops": spec_tflops(device)}
    if parts & {"hw", "gen", "train"}:  # every other part needs the two ceilings
        hw["matmul_tflops"] = matmul_tflops(args.matmul_n, dtype, device)
        hw["copy_gbs"] = copy_gbs(2**31 if device.type == "cuda" else 2**25, device)
        print(f"hw: {args.matmul_n}^3 matmul {hw['matmul_tflops']:.4g} TFLOP/s, copy {hw['copy_gbs']:.4g} GB/s")
        save()
    model = build_model(shape, dtype, device)
    n_params = {"all": sum(p.numel() for p in model.parameters()), "matmul": matmul_params(model)}
    results["meta"]["n_params"] = n_params
    if "gen" in parts:
        lengths = [int(x) for x in args.gen_lengths.split(",")]
        results["generation"] = bench_generation(model, lengths, args.gen_batch, args.prompt_len,
                                                 args.variants.split(","), hw["copy_gbs"], device)
        save()
    if "train" in parts:
        with tempfile.TemporaryDirectory(prefix="gpu_step_model_") as model_dir:
            model.save_pretrained(model_dir)
            tokenizer = build_tokenizer(shape["vocab_size"])
            tokenizer.save_pretrained(model_dir)
            del model
            reset_memory(device)
            dataset = prompt_dataset(max(256, 16 * args.prompts * args.steps), args.prompt_len, shape["vocab_size"])
            trainers = results["trainer"] = {}
            for kind in args.trainers.split(","):
                steps, info = run_trainer(kind, model_dir, tokenizer, dataset, args, device, dtype)
                trainers[kind] = {**info, **summarize(steps, args.warmup_steps, n_params, hw["matmul_tflops"],
                                                      hw["spec_bf16_tflops"]), "steps": steps}
                s = trainers[kind]
                print(f"train {kind:22s} step {s['step_s']:.2f}s (gen {s['generation_s']:.2f}, score "
                      f"{s['scoring_s']:.2f}, ref {s['reference_logps_s']:.2f}, train {s['train_s']:.2f}) "
                      f"rounds {s['rounds']:.1f} gen {s['completion_tok_per_s']:.0f} tok/s, train "
                      f"{s['train_tok_per_s']:.0f} tok/s, MFU {s['mfu_vs_measured_matmul']:.3f}", flush=True)
                save()
            ratios = trainers["ratios"] = {}
            if "trl" in trainers and "prorl" in trainers:
                ratios["prorl_over_trl_step_equal_work"] = (trainers["prorl"]["step_s_equal_work"]
                                                            / trainers["trl"]["step_s"])
            if "trl" in trainers and "prorl_static" in trainers:
                ratios["trl_over_prorl_static_step_equal_work"] = (trainers["trl"]["step_s"]
                                                                   / trainers["prorl_static"]["step_s_equal_work"])
                ratios["generation_speedup_static"] = (trainers["prorl_static"]["completion_tok_per_s"]
                                                       / trainers["trl"]["completion_tok_per_s"])
            print("ratios", json.dumps(ratios))
            save()
    return results


if __name__ == "__main__":
    main()
