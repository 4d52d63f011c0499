"""Sampling n completions per prompt from a local model: batched Hugging Face `generate`, or vLLM when installed.

Used by `prorl eval` (pass@k) and by the difficulty filter of `prorl data build`. Prompts are chat messages,
rendered with the tokenizer's chat template (a tokenizer without one gets the messages' contents joined by blank
lines). With the HF backend, sequences are batched across prompts (similar lengths together, left padding) and
sampling is reproducible for a seed and batch size. Only temperature and top_p shape the distribution: whatever
else a model's generation_config carries (top-k, min-p, typical-p, repetition penalties, suppressed tokens...)
is left out while sampling, as vLLM's path leaves it out; only its special token ids are kept. The vLLM path (one
`LLM.generate` call with `n` samples per prompt) is not exercised by the test suite: vLLM needs a GPU, which CI
does not have.

`sample(..., checkpoint=PATH)` (HF backend) appends each finished batch to a JSONL file with the random state after
it; a later call with the same file, model, prompts, n and settings starts after the last batch there and draws the
samples an uninterrupted call would have drawn (what `prorl eval --resume` uses).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

Messages = list[dict[str, str]]
BACKENDS = ("auto", "hf", "vllm")


@dataclass
class SamplingConfig:
    """How completions are sampled (defaults: the ProRL paper's evaluation protocol)."""

    temperature: float = field(default=0.6, metadata={"help": "sampling temperature (the paper evaluates at 0.6)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling mass (the paper: 0.95)"})
    max_new_tokens: int = field(default=1024, metadata={"help": "completion length cap in tokens"})
    batch_size: int = field(default=64, metadata={"help": "sequences per HF generate call"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    backend: str = field(default="auto", metadata={"help": "hf, vllm, or auto (vLLM when importable and on GPU)"})

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if not self.temperature > 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(f"bad sampling settings: {self}")

    def to_dict(self) -> dict:
        return asdict(self)


def neutral_generation_config(shipped):
    """A GenerationConfig with only `shipped`'s special token ids: generate() fills every option left unset from
    the model's own config, so a shipped min_p or no_repeat_ngram_size would otherwise shape the samples."""
    from transformers import GenerationConfig

    keys = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
    return GenerationConfig(**{k: getattr(shipped, k, None) for k in keys if getattr(shipped, k, None) is not None})


def render(tokenizer, messages: Messages) -> str:
    """The prompt text of a chat: the chat template with the generation prompt, or the contents joined."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def resolve_backend(backend: str) -> str:
    if backend != "auto":
        return backend
    import torch

    return "vllm" if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available() else "hf"


class Sampler:
    """Loads a model once; `sample(prompts, n)` returns n completions (strings) per prompt."""

    def __init__(self, model_dir: str, config: SamplingConfig | None = None, device: str | None = None):
        self.model_dir = str(model_dir)
        self.config = config or SamplingConfig()
        self.backend = resolve_backend(self.config.backend)
        if self.backend == "vllm":
            from vllm import LLM

            self.llm = LLM(model=self.model_dir, seed=self.config.seed)
            self.tokenizer = self.llm.get_tokenizer()
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype).to(self.device).eval()

    @classmethod
    def from_model(cls, model, tokenizer, config: SamplingConfig | None = None) -> "Sampler":
        """A sampler (HF backend) over a model already in memory, e.g. the policy inside a trainer during training.
        The tokenizer is set to pad on the left, as generation needs."""
        self = cls.__new__(cls)
        self.model_dir, self.config, self.backend = getattr(model, "name_or_path", ""), config or SamplingConfig(), "hf"
        self.model, self.tokenizer, self.device = model, tokenizer, str(model.device)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return self

    def sample(self, prompts: Sequence[Messages], n: int, progress: Callable[[int], None] | None = None,
               checkpoint: str | Path | None = None) -> list[list[str]]:
        """`n` completions for each prompt, in prompt order. `progress(k)` is called as k more sequences finish.
        `checkpoint` (HF backend): a JSONL file that keeps the finished batches, to go on from after a stop."""
        texts = [render(self.tokenizer, p) for p in prompts]
        if self.backend == "vllm":
            return self._sample_vllm(texts, n, progress)
        return self._sample_hf(texts, n, progress, checkpoint)

    def _sample_vllm(self, texts: list[str], n: int, progress) -> list[list[str]]:
        from vllm import SamplingParams

        c = self.config
        params = SamplingParams(n=n, temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_new_tokens,
                                seed=c.seed)
        # token ids, so the rendered chat template's own special tokens are not doubled by a second BOS
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        outputs = self.llm.generate([{"prompt_token_ids": x} for x in ids], params)
        if progress:
            progress(len(texts) * n)
        return [[o.text for o in out.outputs] for out in outputs]

    def _sample_hf(self, texts: list[str], n: int, progress, checkpoint=None) -> list[list[str]]:
        import torch

        c, tok = self.config, self.tokenizer
        lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
        jobs = sorted(((i, j) for i in range(len(texts)) for j in range(n)), key=lambda ij: (lengths[ij[0]], ij))
        results: list[list[str | None]] = [[None] * n for _ in texts]
        devices = [torch.device(self.device).index or 0] if self.device.startswith("cuda") else []
        header = {"model": self.model_dir, "n": n, "sampling": c.to_dict(), "device": self.device,
                  "prompts_sha256": hashlib.sha256(json.dumps(texts).encode()).hexdigest()}
        done, state = _load_checkpoint(Path(checkpoint), header, results) if checkpoint else (0, None)
        if done and progress:
            progress(min(done * c.batch_size, len(jobs)))
        shipped = self.model.generation_config
        self.model.generation_config = neutral_generation_config(shipped)  # restored below (a model in memory)
        try:
            with torch.random.fork_rng(devices=devices):  # seeded sampling without touching the caller's RNG state
                torch.manual_seed(c.seed)
                if state:  # the random state after the last batch kept: the draws go on as if never stopped
                    torch.set_rng_state(torch.tensor(list(base64.b64decode(state["cpu"])), dtype=torch.uint8))
                    if devices and state.get("cuda"):
                        torch.cuda.set_rng_state(torch.tensor(list(base64.b64decode(state["cuda"])),
                                                              dtype=torch.uint8), devices[0])
                for b, start in enumerate(range(0, len(jobs), c.batch_size)):
                    if b < done:
                        continue
                    batch = jobs[start:start + c.batch_size]
                    enc = tok([texts[i] for i, _ in batch], return_tensors="pt", padding=True, add_special_tokens=False)
                    enc = {k: v.to(self.device) for k, v in enc.items()}
                    with torch.no_grad():
                        out = self.model.generate(**enc, do_sample=True, temperature=c.temperature, top_p=c.top_p,
                                                  top_k=0, repetition_penalty=1.0, max_new_tokens=c.max_new_tokens,
                                                  pad_token_id=tok.pad_token_id)
                    decoded = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
                    for (i, j), text in zip(batch, decoded):
                        results[i][j] = text
                    if checkpoint:
                        _append_batch(Path(checkpoint), header, b, [(i, j, results[i][j]) for i, j in batch], devices)
                    if progress:
                        progress(len(batch))
        finally:
            self.model.generation_config = shipped
        return results  # type: ignore[return-value]


def _load_checkpoint(path: Path, header: dict, results: list) -> tuple[int, dict | None]:
    """Fill `results` from a checkpoint file; returns (batches done, random state after the last). A last line
    cut short by a kill is dropped; a file written for other prompts or settings is an error, not a mix."""
    if not path.exists():
        return 0, None
    lines = path.read_text().splitlines()
    try:
        records = [json.loads(line) for line in lines]
    except json.JSONDecodeError:
        records = [json.loads(line) for line in lines[:-1]]  # only the last line can be partial (appends)
        path.write_text("".join(line + "\n" for line in lines[:-1]))  # so that the next batch starts a line
    if records and records[0].get("header") != header:
        have = records[0].get("header") or {}
        diff = sorted(k for k in set(have) | set(header) if have.get(k) != header.get(k))
        raise ValueError(f"{path}: written for other {', '.join(diff)} than this run's: run without --resume to "
                         f"start over, or with the same model, data and settings")
    batches = [r for r in records[1:] if "batch" in r]
    if [r["batch"] for r in batches] != list(range(len(batches))):
        raise ValueError(f"{path}: batches out of order (two runs wrote to it?): run without --resume")
    for r in batches:
        for i, j, text in r["samples"]:
            results[i][j] = text
    return len(batches), (batches[-1]["rng"] if batches else None)


def _append_batch(path: Path, header: dict, b: int, samples: list, devices: list) -> None:
    import torch

    state = {"cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
             "cuda": base64.b64encode(torch.cuda.get_rng_state(devices[0]).numpy().tobytes()).decode()
             if devices else None}
    with path.open("a") as f:
        if f.tell() == 0:
            f.write(json.dumps({"header": header}) + "\n")
        f.write(json.dumps({"batch": b, "samples": samples, "rng": state}) + "\n")
        f.flush()
