"""Run one TRL trainer (GRPO or RLOO) with use_vllm=True, vllm_mode="colocate" for a few steps on CPU, in this fresh
process, and check that training changed the weights the in-process engine generates with.

Usage: python trainer_run.py '{"trainer": "grpo", "dataset": "plain"|"chat", "model": DIR, "out": DIR, ...}'
Asserts inside; the last stdout line is a JSON summary. Used by tests/compat/test_trainers.py (one process per run:
a colocate engine owns torch.distributed state, and a second one in the pytest process is not needed).
"""

import json
import os
import random
import sys
import time

from pytest_vllmcompat.process.ports import rendezvous_port

PROMPTS = ["The quick brown fox", "def add(a, b):", "Once upon a time", "1, 2, 3, 4,",
           "Hello, my name is", "The capital of France is", "import numpy as", "Roses are red,"]


def even_tokens(completions, completion_ids=None, **kw):
    """Reward: number of even token ids in the completion (varies between samples, so advantages are non-zero)."""
    return [float(sum(t % 2 == 0 for t in ids)) for ids in completion_ids]


def get_time(city: str) -> str:
    """
    Get the current time in a city.

    Args:
        city: The name of the city.

    Returns:
        The time.
    """
    return "12:00"


def engine_model(trainer):
    return trainer.vllm_generation.llm.llm_engine.model_executor.driver_worker.model_runner.model


def engine_tensor(trainer, name):
    params = dict(engine_model(trainer).named_parameters())
    return params[name].detach().float().clone()


def greedy(trainer, prompt_ids):
    from vllm import SamplingParams

    outs = trainer.vllm_generation.llm.generate([{"prompt_token_ids": p} for p in prompt_ids],
                                               SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def main(spec):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(rendezvous_port())
    t0 = time.monotonic()
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    random.seed(0)
    torch.manual_seed(0)
    kind, model_dir = spec["trainer"], spec["model"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device="cpu", dtype=torch.float32)
    if spec["dataset"] == "chat":
        data = {"prompt": [[{"role": "user", "content": p}] for p in PROMPTS]}
    else:
        data = {"prompt": PROMPTS}
    dataset = Dataset.from_dict(data)
    steps = int(spec.get("steps", 2))
    # One prompt x 4 generations per step; temperature 2 so that the tiny model's samples (and rewards) differ
    # within a group (at 1.0 they can all be equal: zero advantages, no update); lr 1e-2 so that updates survive
    # the engine's bf16 rounding.
    common = dict(output_dir=spec["out"], use_cpu=True, bf16=False, fp16=False, per_device_train_batch_size=4,
                  num_generations=4, max_completion_length=8, max_steps=steps,
                  temperature=float(spec.get("temperature", 2.0)), learning_rate=1e-2,
                  report_to="none", logging_steps=1, save_strategy="no", seed=0, dataloader_num_workers=0,
                  use_vllm=True, vllm_mode="colocate", vllm_max_model_length=512)
    config_cls, trainer_cls = (GRPOConfig, GRPOTrainer) if kind == "grpo" else (RLOOConfig, RLOOTrainer)
    extra = {}
    if spec.get("tools"):
        import inspect

        if "tools" not in inspect.signature(trainer_cls.__init__).parameters:
            print(json.dumps({"skip": f"not applicable: TRL {trl.__version__}: {trainer_cls.__name__} has no `tools` argument"}))
            os._exit(0)
        extra["tools"] = [get_time]
        if not getattr(tokenizer, "response_schema", None):  # the tiny model's template is not one TRL knows
            from trl.chat_template_utils import qwen3_schema
            tokenizer.response_schema = qwen3_schema  # what trl.chat_template_utils.add_response_schema sets
    trainer = trainer_cls(model=model, reward_funcs=even_tokens, args=config_cls(**common),
                          train_dataset=dataset, processing_class=tokenizer, **extra)
    t_built = time.monotonic()

    name = "model.embed_tokens.weight"
    hf_before = dict(model.named_parameters())[name].detach().clone()
    probe_ids = [tokenizer(p)["input_ids"] for p in PROMPTS[:4]]
    eng_before = engine_tensor(trainer, name)[: hf_before.shape[0]]
    greedy_before = greedy(trainer, probe_ids)
    # The engine starts on the checkpoint's weights (bf16): same as the HF model's within bf16 rounding.
    assert torch.allclose(eng_before, hf_before, atol=0, rtol=1e-2), "engine does not start on the HF weights"

    result = trainer.train()
    t_trained = time.monotonic()

    hf_after = dict(trainer.model.named_parameters())[name].detach().clone()
    eng_after = engine_tensor(trainer, name)[: hf_after.shape[0]]
    greedy_after = greedy(trainer, probe_ids)
    hf_delta = (hf_after - hf_before).abs().max().item()
    eng_delta = (eng_after - eng_before).abs().max().item()
    # How far the engine's weights are from the trained HF weights. TRL syncs before each generation, i.e. at the
    # start of each optimizer step, so the engine holds the weights of the last sync (before the last step).
    # Sync once more (what the next step would do) and compare (equal up to the engine's bf16 rounding).
    trainer.vllm_generation.sync_weights()
    eng_synced = engine_tensor(trainer, name)[: hf_after.shape[0]]
    synced_err = (eng_synced - hf_after).abs().max().item()
    ok_sync = torch.allclose(eng_synced, hf_after.to(eng_synced.dtype), atol=1e-6, rtol=1e-2)
    greedy_synced = greedy(trainer, probe_ids)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    summary = {
        "trl": trl.__version__, "trainer": kind, "dataset": spec["dataset"], "tools": bool(spec.get("tools")),
        "global_step": trainer.state.global_step, "train_loss": result.training_loss,
        "rewards": [h.get("reward") for h in logs], "reward_std": [h.get("reward_std") for h in logs],
        "hf_max_delta": hf_delta, "engine_max_delta_during_training": eng_delta,
        "engine_vs_trained_after_sync": synced_err, "engine_matches_trained": ok_sync,
        "greedy_changed_during_training": greedy_before != greedy_after,
        "greedy_changed_after_final_sync": greedy_before != greedy_synced,
        "tool_metrics": {k: v for h in logs for k, v in h.items() if k.startswith("tools/")},
        "seconds": {"build": round(t_built - t0, 1), "train": round(t_trained - t_built, 1),
                    "total": round(time.monotonic() - t0, 1)},
    }
    assert trainer.state.global_step == steps, summary
    assert hf_delta > 0, f"training did not change the HF weights: {summary}"
    if steps >= 2:  # the sync at the start of step 2 pushed step 1's update into the engine
        assert eng_delta > 0, f"the engine's weights did not change during training: {summary}"
    assert ok_sync, f"after sync_weights() the engine does not hold the trained weights: {summary}"
    print(json.dumps(summary), flush=True)
    os._exit(0)  # skip interpreter teardown of the in-process engine (threads, gloo) in this throwaway process


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
