"""Dynamic sampling (DAPO) inside `GRPOTrainer._generate_and_score_completions`: generate, score, keep the groups
that carry a learning signal, refill from a stream of its own, merge the kept rows into one batch.

TRL computes the old-policy and reference log-probs of a generation batch before its rewards, so a round would pay
one or two forward passes for groups it then drops (about 40% of the groups in our runs). Here those passes are
deferred: during the rounds `_get_per_token_logps_and_entropies` records which model was asked and returns zeros,
and the log-probs are computed once, for the merged batch only. Neither model changes between the rounds (no
optimizer step), so the values are the ones TRL would have computed. Not deferred with vLLM (its importance
sampling uses the old log-probs at once) or a PEFT reference (it needs TRL's adapter context).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from accelerate.utils import gather
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import RepeatSampler, nanstd

from prorl.trainer.fillers import FILLER_KEY
from prorl.trainer.sampling import concat_rows, group_by_length, group_keep_mask, num_rows, select_rows

log = logging.getLogger(__name__)

# The log-prob keys of TRL's generation output, in the order TRL computes them.
LOGP_KEYS = ("old_per_token_logps", "ref_per_token_logps")
# TRL's per-micro-batch metrics that are token means (0 for a micro-batch without a loss token).
TOKEN_MEAN_METRICS = ("kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
                      "cispo_clip_ratio")


class DynamicSamplingMixin:
    """Mixed into `ProRLTrainer` before `GRPOTrainer`; uses its `args` (ProRLConfig), `resets` and `_round_rewards`
    (the rewards of the latest generation round, set by `_calculate_rewards`)."""

    _deferred_models: list | None = None  # set during a dynamic-sampling round whose log-probs are deferred
    _defer_logps = True  # False: compute them in every round, as TRL does (tests compare the two)
    _pending_logps: list = []  # (key, model) passes deferred to the micro-batches of the latest generation

    def _total_rewards(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """Per-completion weighted total reward, NaN where every reward function abstained (as TRL computes it)."""
        weights = self.reward_weights.to(rewards_per_func.device)
        total = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        total[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        return total

    def _advantage_rewards(self, rewards_per_func: torch.Tensor) -> torch.Tensor:
        """Per-completion rewards whose spread within a group is what TRL's advantages see: the weighted total,
        or under `multi_objective_aggregation='normalize_then_sum'` the weighted sum of each function's rewards
        normalised within the group (two functions can trade off to a constant total whose normalised sum still
        varies, and TRL then trains on the group)."""
        if self.multi_objective_aggregation != "normalize_then_sum":
            return self._total_rewards(rewards_per_func)
        grouped = rewards_per_func.view(-1, self.num_generations, rewards_per_func.size(1))
        normalized = (grouped - torch.nanmean(grouped, dim=1, keepdim=True)) / (nanstd(grouped, dim=1, keepdim=True)
                                                                                 + 1e-4)  # as TRL
        return self._total_rewards(normalized.view_as(rewards_per_func))

    def _generate_and_score_completions(self, inputs):
        if not self.model.training:
            return super()._generate_and_score_completions(inputs)
        metrics = self._metrics["train"]
        marks = {name: len(values) for name, values in metrics.items()}
        if self.args.dynamic_sampling:
            out = self._dynamic_sampling(inputs)
        elif self.args.group_micro_batches_by_length:  # log-probs left for the micro-batches (_regroup_buffer)
            out, deferred = self._generate_round(inputs)
            self._fill_logps(out, deferred)
        else:
            out = self._mask_unscored(super()._generate_and_score_completions(inputs))
        # What this generation logged (over its rounds), for `step_metric`: TRL's per-micro-batch metric lists may
        # be cleared by a log before the steps that train on a buffered generation end.
        self.generation_metrics = {name: sum(new) / len(new) for name, values in metrics.items()
                                   if (new := values[marks.get(name, 0):])}
        return out

    def _dynamic_sampling(self, inputs):
        target = len(inputs)
        kept, spare, deferred = [], None, []
        kept_local = kept_groups = dropped_groups = rounds = 0
        batch = inputs
        while True:
            rounds += 1
            out, deferred = self._generate_round(batch)
            keep = group_keep_mask(self._advantage_rewards(self._round_rewards), self.num_generations,
                                   self.args.dynamic_sampling_accuracy_window, self.args.dynamic_sampling_std_tol,
                                   accuracy=self._round_verdicts)
            keep &= self._trainable_groups(out).to(keep.device)
            kept_groups += int(keep.sum())
            dropped_groups += int((~keep).sum())
            n = num_rows(out)
            start = self.accelerator.process_index * n
            keep_rows = keep.repeat_interleave(self.num_generations)[start:start + n].to(out["advantages"].device)
            kept.append(select_rows(out, keep_rows))
            spare = select_rows(out, ~keep_rows)
            kept_local += int(keep_rows.sum())
            # Every process must agree on whether to go on: stop when the emptiest one is full.
            least = gather(torch.tensor([kept_local], device=keep_rows.device)).min().item()
            if least >= target or rounds > self.args.dynamic_sampling_max_rounds:
                break
            batch = self._refill_batch()
            if self.args.dynamic_sampling_refill == "adaptive":
                batch = batch[:self._adaptive_refill_rows(target - kept_local, kept_groups, dropped_groups,
                                                          len(batch))]
        filler_rows = max(0, target - kept_local)
        if filler_rows:
            # Rows that keep the batch shape but train nothing: no advantage, no loss tokens (as TRL masks
            # truncated completions), marked FILLER_KEY so that the losses that count rows or micro-batches leave
            # them out of their normalisers (fillers.py): the step trains on exactly the groups it kept.
            spare = select_rows(spare, torch.arange(min(filler_rows, num_rows(spare))))
            spare["advantages"] = torch.zeros_like(spare["advantages"])
            spare["completion_mask"] = torch.zeros_like(spare["completion_mask"])
            kept.append(spare)
        filled = gather(torch.tensor([filler_rows], device=keep_rows.device)).sum().item()
        if filled:
            log.warning("dynamic sampling: step %d hit the cap of %d extra rounds with %d rows missing; they are "
                        "filled with masked rows (no loss)", self.state.global_step + 1,
                        self.args.dynamic_sampling_max_rounds, filled)
        merged = concat_rows(kept, self._tokenizer.pad_token_id, self._token_level_keys())
        merged = select_rows(merged, torch.arange(target))
        merged[FILLER_KEY] = torch.arange(target, device=merged["advantages"].device) >= kept_local
        self._fill_logps(merged, deferred)
        loss_mask = merged["completion_mask"] * merged.get("tool_mask", 1)
        merged["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/kept_groups"].append(float(kept_groups))
        metrics["dynamic_sampling/dropped_groups"].append(float(dropped_groups))
        metrics["dynamic_sampling/rounds"].append(float(rounds))
        metrics["dynamic_sampling/filled_rows"].append(float(filled))
        return merged

    def _fill_logps(self, batch: dict, deferred: list[tuple[str, Any]]) -> None:
        """Run the deferred log-prob passes on `batch`; with group_micro_batches_by_length leave them (the zeros
        `_get_per_token_logps_and_entropies` put there) for `_regroup_buffer`, which runs them on each micro-batch
        at its own width."""
        if self.args.group_micro_batches_by_length:
            self._pending_logps = deferred
        else:
            for key, model in deferred:
                batch[key] = self._batch_logps(model, batch)

    def _check_length_grouping(self) -> None:
        """Refuse group_micro_batches_by_length where the update depends on how rows are batched beyond what the
        config can see: a Mixture-of-Experts load-balancing loss is a per-micro-batch statistic of the routing."""
        if self.args.group_micro_batches_by_length and getattr(self, "aux_loss_enabled", False):
            raise ValueError("group_micro_batches_by_length: the model's router load-balancing loss is computed per "
                             "micro-batch, so grouping would change the update; set router_aux_loss_coef 0 or "
                             "turn group_micro_batches_by_length off")

    def _regroup_buffer(self) -> None:
        """After a generation (TRL has shuffled and split it into `steps_per_generation` micro-batches): re-deal
        each optimizer step's rows by completion length (sampling.group_by_length), then run the deferred log-prob
        passes per micro-batch, so that neither the training nor the no-grad forwards compute the generation's
        padding."""
        ga, spg = self.current_gradient_accumulation_steps, self.args.steps_per_generation
        if spg % ga == 0:  # else a stage broke it (refused at parse time): TRL's micro-batches as they are
            self._buffered_inputs = group_by_length(self._buffered_inputs, ga, self._token_level_keys())
        for batch in self._buffered_inputs:
            for key, model in self._pending_logps:
                batch[key] = self._batch_logps(model, batch)
        self._pending_logps = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """TRL's loss; with group_micro_batches_by_length, the token-mean metrics of a micro-batch without a loss
        token on any process are NaN (left out of the step's mean) rather than TRL's 0: grouping gathers the
        masked rows (truncated, dynamic sampling's fillers) into the same micro-batches, which TRL's 0s would turn
        into a step entropy or KL pulled towards 0."""
        metrics = self._metrics["train"]
        marks = {k: len(metrics[k]) for k in TOKEN_MEAN_METRICS if k in metrics}
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.model.training and self.args.group_micro_batches_by_length:
            tokens = (inputs["completion_mask"] * inputs.get("tool_mask", 1)).sum().reshape(1)
            if self.accelerator.gather(tokens).sum() == 0:
                for key in TOKEN_MEAN_METRICS:
                    if key in metrics:
                        metrics[key][marks.get(key, 0):] = [float("nan")] * (len(metrics[key]) - marks.get(key, 0))
        return loss

    def _token_level_keys(self) -> tuple[str, ...]:
        """Batch keys of shape (rows, completion tokens) beyond sampling.COMPLETION_KEYS."""
        return ("importance_sampling_ratio",) if self.vllm_importance_sampling_mode.startswith("token") else ()

    def _generate_round(self, batch) -> tuple[dict, list[tuple[str, Any]]]:
        """TRL's generate-and-score on `batch`, its log-probs deferred when possible: returns the output (zeros in
        place of the deferred log-probs) and the (output key, model) pairs still to compute."""
        if not self._defer_logps or self.use_vllm or (self.beta != 0 and self.ref_model is None):
            return self._mask_unscored(super()._generate_and_score_completions(batch)), []
        self._deferred_models = []
        try:
            out = super()._generate_and_score_completions(batch)
        finally:
            models, self._deferred_models = self._deferred_models, None
        keys = [k for k in LOGP_KEYS if k in out]
        if len(keys) != len(models):  # a TRL version that computes log-probs elsewhere: fail, do not mislabel
            raise RuntimeError(f"dynamic sampling: TRL asked for {len(models)} log-prob passes but returned {keys}")
        return self._mask_unscored(out), list(zip(keys, models))

    def _mask_unscored(self, out: dict) -> dict:
        """Take this round's unscored completions (every reward function abstained: a timeout or infra_error that
        no no-EOS penalty replaced) out of the loss. TRL only zeroes their advantage: their tokens would still get
        the KL gradient, count in the token normaliser of the scored rows, and a step of nothing but unscored
        samples (a sandbox outage) would still move the weights."""
        n = num_rows(out)
        start = self.accelerator.process_index * n
        unscored = torch.isnan(self._round_rewards).all(dim=1)[start:start + n].to(out["completion_mask"].device)
        out["completion_mask"] = out["completion_mask"] * (~unscored).unsqueeze(1).to(out["completion_mask"].dtype)
        loss_mask = out["completion_mask"] * out.get("tool_mask", 1)
        out["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        return out

    def _trainable_groups(self, out: dict) -> torch.Tensor:
        """Per group (all processes): whether a completion with loss tokens has a non-zero advantage. A group of
        varied rewards whose completions are all masked (truncated under mask_truncated_completions, unscored)
        would fill the batch with nothing to learn."""
        n = num_rows(out)
        tokens = (out["completion_mask"] * out.get("tool_mask", 1)).reshape(n, -1).sum(dim=1) > 0
        useful = tokens & (out["advantages"].reshape(n, -1) != 0).any(dim=1)
        return gather(useful.int()).view(-1, self.num_generations).bool().any(dim=1)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        if self._deferred_models is None:
            return super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                              *args, **kwargs)
        self._deferred_models.append(model)
        return torch.zeros(input_ids.size(0), logits_to_keep, device=input_ids.device), None, None

    def _batch_logps(self, model, batch: dict) -> torch.Tensor:
        """Per-token log-probs of `model` for the completions of a generation batch, as TRL computes them."""
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logps, _, _ = self._get_per_token_logps_and_entropies(
                model, ids, mask, batch["completion_ids"].size(1), batch_size=self.args.per_device_train_batch_size)
        return logps

    def _adaptive_refill_rows(self, missing_rows: int, kept_groups: int, dropped_groups: int, full: int) -> int:
        """Rows of the next refill round under `dynamic_sampling_refill='adaptive'`: the missing groups divided by
        the step's keep rate so far, in whole groups, between the missing groups and a full batch; the same on every
        process (TRL's generation gathers equal shares), so the largest need decides. Each process keeps the first
        groups of its share of the drawn batch, which holds whole groups when `full` is a multiple of the group."""
        g = self.num_generations
        if full % g:  # a group spans two processes: slicing would cut it; refill with whole batches
            if not getattr(self, "_warned_refill", False):
                log.warning("dynamic_sampling_refill='adaptive' needs whole groups on each process "
                            "(per_device_train_batch_size x steps_per_generation = %d is not a multiple of "
                            "num_generations = %d): refilling with full batches", full, g)
                self._warned_refill = True
            return full
        need = -(-max(0, missing_rows) // g)  # groups this process still lacks (ceil)
        if kept_groups == 0:  # nothing kept yet: no keep rate to go by
            groups = full // g
        else:  # need / keep rate, rounded up: need * (kept + dropped) / kept
            groups = min(full // g, -(-need * (kept_groups + dropped_groups) // kept_groups))
        groups = int(gather(torch.tensor([groups], device=self.accelerator.device)).max().item())
        return max(1, groups) * g

    def _refill_batch(self) -> list[dict[str, Any]]:
        """The next generation batch of the refill stream: its own shuffled passes over the train set, grouped and
        sharded across processes like TRL's, resumable (the number of batches drawn is checkpointed).

        The stream leaves torch's global RNG as it found it. Each pass's DataLoader iterator draws its base seed
        from that RNG, and a resumed run opens its first pass (and the passes it skips) at another point of the run
        than the uninterrupted one: the draw shifted every later sample (a run resumed at step 2 sampled other
        completions from the first refill round of step 3 on)."""
        while True:
            with torch.random.fork_rng(devices=[]):  # the draws are CPU ones, whatever the accelerator
                if self._refill_iter is None:
                    self._refill_iter = iter(self._refill_dataloader())
                batch = next(self._refill_iter, None)  # DataLoaderShard opens the pass in its first next()
            if batch is None:
                self._refill_iter, self._refill_epoch = None, self._refill_epoch + 1
            elif self._refill_skip:  # drawn by the run this one resumes
                self._refill_skip -= 1
            else:
                self.resets.state.refill_batches += 1
                return batch

    def _refill_dataloader(self):
        def sampler(dataset):
            return RepeatSampler(dataset, mini_repeat_count=self.num_generations,
                                 batch_size=self.args.generation_batch_size // self.num_generations,
                                 repeat_count=1, shuffle=self.shuffle_dataset,
                                 seed=self.args.seed + 1 + self._refill_epoch)

        batch_size = self._train_batch_size * self.args.steps_per_generation
        return self._get_dataloader(self.train_dataset, "Refill", batch_size, sampler_fn=sampler, is_training=True)
