"""Run TRL trainers (GRPO or RLOO) with use_vllm=True for a few steps on CPU, in this fresh process.

Colocate: check that training changed the weights the in-process engine generates with. One run per process, or
with "runs" several that ask for the same engine, sharing it (pytest_vllmcompat/testing/shared_engine.py).
Server (several runs in one process: no engine lives here, each trainer only talks HTTP to the cell's
`trl vllm-serve`): record every request the trainer sends, and the weights it pushes. On the CPU lane the NCCL
weight transport is replaced by pytest_vllmcompat.testing.lane_substitutes (and only it); on the CUDA lane it is
real, and the server's greedy output must follow the trained weights.

Usage: python trainer_run.py '{"mode": "colocate", "trainer": "grpo", "dataset": "plain"|"chat"|"images", "model": DIR,
                               ...}'   (optional: "lora", "model_impl", "sleep_mode", "fsdp": 1|2, "zero3", "bnb": QLoRA)
       python trainer_run.py '{"mode": "colocate", "model": DIR, "out": DIR, "runs": [{"trainer": ..., "dataset": ...}, ...]}'
                              (a run may add "model": DIR and "own_engine": true: an engine of its own, after the others)
       python trainer_run.py '{"mode": "server", "lane": "cpu"|"cuda", "base_url": URL, "model": DIR, "out": DIR,
                               "runs": [{"trainer": ..., "dataset": ..., "tools": bool}, ...]}'
A single colocate run asserts inside; several colocate runs, and server runs, report each run's outcome (summary,
skip or traceback). The last stdout line is JSON.
Used by tests/compat/test_trainers.py.
"""

import inspect
import json
import os
import random
import sys
import time
from pathlib import Path

from pytest_vllmcompat.process.ports import late_bind_port
from pytest_vllmcompat.testing.server_log import lines_of_client

GENERATIONS, MAX_COMPLETION, TEMPERATURE = 4, 8, 2.0  # what every run configures; the server tests check them
# The engine holds the bf16 checkpoint's dtype: round-to-nearest into bf16 (8 significand bits) moves a value by at
# most 2**-8 of itself (the unit roundoff), so that is the exact bound for "the engine holds these weights" (was 1e-2).
BF16_ROUNDING = 2.0 ** -8
EVAL_GENERATIONS = 2  # num_generations_eval of the runs that also evaluate
GREETING_TEMPLATE = "{% if greeting is defined %}{{ greeting + '\\n' }}{% endif %}"  # reads a chat_template_kwarg
PROMPTS = ["The quick brown fox", "def add(a, b):", "Once upon a time", "1, 2, 3, 4,",
           "Hello, my name is", "The capital of France is", "import numpy as", "Roses are red,"]


REWARD_EXTRA_FIELDS = []  # the extra fields each reward call received (a rollout_func's are forwarded to it)


def even_tokens(completions, completion_ids=None, **kw):
    """Reward: the number of even token ids in the completion, plus a tie-breaker of 0.01 x its place in its group.

    The trainers group a batch's completions by prompt, num_generations in a row. Counts alone can all be equal
    in a group: once (vLLM 0.10.2 tf4, server mode, whose sampling is unseeded) both steps drew four equal counts,
    so every advantage was zero and nothing trained. The tie-breaker makes the rewards in every group differ, so
    the advantages are non-zero whenever the completions differ. It is below 0.04, less than one count, so it
    never reorders completions with different counts."""
    if "rollout_tag" in kw:
        REWARD_EXTRA_FIELDS.append(list(kw["rollout_tag"]))
    return [float(sum(t % 2 == 0 for t in ids)) + 0.01 * (i % GENERATIONS) for i, ids in enumerate(completion_ids)]


ROLLOUT_CALLS = []  # what each rollout_func call received: the number of prompts and their Python type


def rollout(prompts, trainer):
    """A user's `rollout_func(prompts, trainer)`: one completion per prompt it is given, generated through the
    trainer's own VLLMClient at the trainer's settings, plus an extra field that TRL forwards to the rewards.

    The logprobs it must return differ by release: where VLLMGeneration runs the rollout (0.28.0, 0.29.0), TRL
    post-processes them as it does the client's own answer (0.29.0 keeps `lp[0]` of each position's rank-sorted
    list, so they must stay lists; 0.28.0's client gives one float per position); where the trainer calls it
    (0.29.1+) they are used as they are: one float per position. So they are handed back in the client's form
    there, and as the sampled token's float here."""
    from trl.generation.vllm_generation import VLLMGeneration

    ROLLOUT_CALLS.append({"count": len(prompts), "type": type(prompts[0]).__name__})
    out = trainer.vllm_generation.vllm_client.generate(prompts=list(prompts), n=1, temperature=TEMPERATURE,
                                                       max_tokens=MAX_COMPLETION)
    logprobs = out["logprobs"]
    if "rollout_func" not in inspect.signature(VLLMGeneration.__init__).parameters:  # the trainer calls it
        logprobs = [[lp[0] if isinstance(lp, list) else lp for lp in row] for row in logprobs]
    return {"prompt_ids": out["prompt_ids"], "completion_ids": out["completion_ids"], "logprobs": logprobs,
            "rollout_tag": [f"rollout-{len(ROLLOUT_CALLS)}"] * len(prompts)}


# A conversation whose history holds an assistant tool call with dict arguments (the datasets form), then the
# tool's answer: TRL 0.28.0/0.29.0 json.dumps the arguments before LLM.chat / /chat/; 0.29.1 hands the dicts to
# transformers' template. The tiny model's template renders arguments either way (a string as is, a dict tojson).
TOOL_CALL_ARGUMENTS = {"city": "Paris"}


def tool_call_history(prompt):
    return [{"role": "user", "content": "What time is it in Paris?"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"type": "function", "function": {"name": "get_time", "arguments": TOOL_CALL_ARGUMENTS}}]},
            {"role": "tool", "name": "get_time", "content": "12:00"},
            {"role": "user", "content": prompt}]


def get_time(city: str) -> str:
    """
    Get the current time in a city.

    Args:
        city: The name of the city.

    Returns:
        The time.
    """
    return "12:00"


# The images run: a conversational prompt per row with an image column (one solid colour per row, all different),
# on the tiny LLaVA (pytest_vllmcompat/testing/tiny_vlm.py). What the engine is handed is recorded
# (record_engine_inputs): each prompt must arrive with its own row's image.
IMAGE_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (128, 128, 128),
                 (255, 128, 0)]
IMAGE_SIZE = 40  # not the vision tower's 32: the processors must resize


def solid_image(colour):
    from PIL import Image

    return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), colour)


def record_engine_inputs(llm, tokenizer, image_token_id):
    """Wrap the colocate engine's LLM.generate (LLM.chat, TRL 0.28.0/0.29.0's conversational path, ends in it too):
    for every prompt handed to vLLM, which of PROMPTS its text holds, the colours of its images ([]: none), and
    how many image tokens vLLM's prompt had (the processor's expansion of `<image>`)."""
    seen, original = [], llm.generate

    def generate(prompts, *args, **kwargs):
        outputs = original(prompts, *args, **kwargs)
        for prompt, output in zip(prompts if isinstance(prompts, list) else [prompts], outputs):
            text = prompt.get("prompt") or tokenizer.decode(prompt.get("prompt_token_ids", []))
            image = (prompt.get("multi_modal_data") or {}).get("image")
            images = image if isinstance(image, list) else [image] if image is not None else []
            seen.append({"row": next((i for i, p in enumerate(PROMPTS) if p in text), None),
                         "colours": [list(img.convert("RGB").getpixel((0, 0))) for img in images],
                         "image_tokens": list(output.prompt_token_ids).count(image_token_id)})
        return outputs

    llm.generate = generate
    return seen


LORA_TARGET = "o_proj"  # one projection vLLM keeps unfused under the HF name (q/k/v become qkv_proj)


def trained_weight(trainer, name):
    """The HF weight `name` as the trainer holds it now: with a LoRA adapter, merged into its base layer (what
    TRL's sync_weights pushes, under the name without `base_model.model.` and `.base_layer`)."""
    wrapped = trainer.model  # FSDP wraps it in train(): FSDP1 around it, FSDP2 in place (DTensor parameters)
    if type(wrapped).__name__ == "FullyShardedDataParallel" or any(type(p).__name__ == "DTensor"
                                                                   for p in wrapped.parameters()):
        # sharded (FSDP1: flat and prefixed names): accelerate's gathered state dict has the HF names
        return trainer.accelerator.get_state_dict(wrapped)[name].detach().float().cpu().clone()
    model = trainer.accelerator.unwrap_model(trainer.model)
    if any(hasattr(p, "ds_id") for p in model.parameters()):  # ZeRO-3 partitioned them in train(): gather this one
        import deepspeed

        param = dict(model.named_parameters())[name]
        with deepspeed.zero.GatheredParameters([param]):
            return param.detach().float().cpu().clone()
    if not hasattr(model, "merge_adapter"):
        return dict(model.named_parameters())[name].detach().float().cpu().clone()
    model.merge_adapter()
    try:
        params = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p for n, p in model.named_parameters()}
        return params[name].detach().float().cpu().clone()
    finally:
        model.unmerge_adapter()


def engine_model(trainer):
    return trainer.vllm_generation.llm.llm_engine.model_executor.driver_worker.model_runner.model


def engine_tensor(trainer, name):
    """The engine's weight for the HF weight `name`: under the same name, or (a vision-language model, whose vLLM
    names differ: `model.language_model.X` is `language_model.model.X`) the one name ending like it."""
    params = dict(engine_model(trainer).named_parameters())
    if name not in params:
        tail = name.split(".language_model.")[-1]
        (name,) = [n for n in params if n.endswith("." + tail)]
    return params[name].detach().float().cpu().clone()


def greedy(trainer, prompt_ids):
    from vllm import SamplingParams

    outs = trainer.vllm_generation.llm.generate([{"prompt_token_ids": p} for p in prompt_ids],
                                               SamplingParams(temperature=0.0, max_tokens=8), use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


class NotApplicable(Exception):
    """This run does not exist in the installed release (e.g. a trainer without `tools`)."""


def build_trainer(spec, run, mode, **config):
    """(trainer, model, tokenizer) for one run: the tiny model in float32 on CPU, 8 prompts, 4 generations each."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    random.seed(0)
    torch.manual_seed(0)
    kind, model_dir = run["trainer"], spec["model"]
    if run["dataset"] == "images":  # the tiny LLaVA: its processor is the processing class
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processing_class = AutoProcessor.from_pretrained(model_dir)
        tokenizer = processing_class.tokenizer
        model = AutoModelForImageTextToText.from_pretrained(model_dir).to(device="cpu", dtype=torch.float32)
    elif run.get("bnb"):  # QLoRA: 4-bit bitsandbytes weights on the GPU (CUDA only), trained through a LoRA adapter
        from transformers import BitsAndBytesConfig

        tokenizer = processing_class = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, device_map={"": 0},
            quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32))
    else:
        tokenizer = processing_class = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir).to(device="cpu", dtype=torch.float32)
    if run.get("chat_template_kwargs"):  # a template that shows whether the kwargs reached it
        tokenizer.chat_template = GREETING_TEMPLATE + tokenizer.chat_template
        config = {**config, "chat_template_kwargs": dict(run["chat_template_kwargs"])}
    if run["dataset"] == "chat":
        data = {"prompt": [[{"role": "user", "content": p}] for p in PROMPTS]}
    elif run["dataset"] == "images":
        data = {"prompt": [[{"role": "user", "content": p}] for p in PROMPTS],
                "image": [solid_image(c) for c in IMAGE_COLOURS]}
    elif run["dataset"] == "chat-tool-calls":
        data = {"prompt": [tool_call_history(p) for p in PROMPTS]}
    else:
        data = {"prompt": PROMPTS}
    # One prompt x 4 generations per step; temperature 2 so that the tiny model's samples differ within a group
    # (even_tokens makes their rewards differ); lr 1e-2 so that updates survive
    # the engine's bf16 rounding.
    common = dict(output_dir=run.get("out", spec["out"]), use_cpu=spec.get("lane", "cpu") == "cpu", bf16=False,
                  fp16=False, per_device_train_batch_size=4, num_generations=GENERATIONS,
                  max_completion_length=MAX_COMPLETION, max_steps=int(run.get("steps", 2)),
                  temperature=TEMPERATURE, learning_rate=1e-2, report_to="none", logging_steps=1,
                  save_strategy="no", seed=0, dataloader_num_workers=0, use_vllm=True, vllm_mode=mode, **config)
    if run.get("model_impl"):  # vllm_model_impl: the engine's model implementation (colocate only)
        common["vllm_model_impl"] = run["model_impl"]
    if run.get("fsdp"):  # FSDP 1 or 2 over this one process (accelerate's process group: RANK/WORLD_SIZE set by main)
        common.update(fsdp="full_shard", fsdp_config={"fsdp_version": int(run["fsdp"])})
    if run.get("zero3"):  # DeepSpeed ZeRO-3 over this one process (RANK/WORLD_SIZE set by main). No "optimizer"
        # section: the HF Trainer hands DeepSpeed its own AdamW (and sets zero_allow_untested_optimizer itself).
        common["deepspeed"] = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": "auto",
                               "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
                               "gradient_clipping": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}
    if run.get("sleep_mode"):  # vllm_enable_sleep_mode (CUDA only in vLLM)
        common["vllm_enable_sleep_mode"] = True
    config_cls, trainer_cls = (GRPOConfig, GRPOTrainer) if kind == "grpo" else (RLOOConfig, RLOOTrainer)
    extra = {}
    if run.get("lora"):  # peft_config: TRL wraps the model; each sync merges the adapter and pushes base weights
        from peft import LoraConfig

        extra["peft_config"] = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=[LORA_TARGET])
        # LoRA's update starts from B = 0: at 1e-2 two steps moved o_proj by at most 0.015 (measured), too little
        # to change the tiny model's greedy tokens; 1e-1 (LoRA is usually trained at higher rates) does.
        common["learning_rate"] = 1e-1
    if run.get("rollout"):
        os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
        extra["rollout_func"] = rollout
    if run.get("tools"):
        if "tools" not in inspect.signature(trainer_cls.__init__).parameters:
            raise NotApplicable(f"not applicable: TRL {trl.__version__}: {trainer_cls.__name__} has no `tools` argument")
        extra["tools"] = [get_time]
        if not getattr(tokenizer, "response_schema", None):  # the tiny model's template is not one TRL knows
            from trl.chat_template_utils import qwen3_schema
            tokenizer.response_schema = qwen3_schema  # what trl.chat_template_utils.add_response_schema sets
    if run.get("eval"):  # an evaluation pass generates num_generations_eval completions per prompt
        if "num_generations_eval" not in inspect.signature(config_cls.__init__).parameters:
            raise NotApplicable(f"not applicable: TRL {trl.__version__}: {config_cls.__name__} has no "
                                "num_generations_eval")
        common.update(num_generations_eval=EVAL_GENERATIONS, per_device_eval_batch_size=EVAL_GENERATIONS)
        extra["eval_dataset"] = Dataset.from_dict({k: v[:1] for k, v in data.items()})
    trainer = trainer_cls(model=model, reward_funcs=even_tokens, args=config_cls(**common),
                          train_dataset=Dataset.from_dict(data), processing_class=processing_class, **extra)
    return trainer, model, tokenizer


def colocate_quantized_main(spec):
    """QLoRA (CUDA only): TRL must start the engine with quantization="bitsandbytes" (the model has bnb Linear4bit
    layers), train, and load each sync (adapter merged into the 4-bit base, pushed, unmerged) into the 4-bit engine,
    which then still generates. The packed 4-bit weights are not compared with the trained ones."""
    t0 = time.monotonic()
    import trl

    trainer, model, tokenizer = build_trainer(spec, spec, "colocate", vllm_max_model_length=512)
    probe_ids = [tokenizer(p)["input_ids"] for p in PROMPTS[:4]]
    greedy_before = greedy(trainer, probe_ids)
    result = trainer.train()
    trainer.vllm_generation.sync_weights()  # what the next step would do
    greedy_synced = greedy(trainer, probe_ids)
    config = trainer.vllm_generation.llm.llm_engine.vllm_config
    base = trainer.accelerator.unwrap_model(trainer.model).get_submodule(
        f"base_model.model.model.layers.0.self_attn.{LORA_TARGET}.base_layer")
    summary = {"trl": trl.__version__, "quantization": config.model_config.quantization,
               "base_layer": type(base).__name__, "global_step": trainer.state.global_step,
               "train_loss": result.training_loss,
               "peft_model": type(trainer.accelerator.unwrap_model(trainer.model)).__name__,
               "greedy_lengths": [len(g) for g in greedy_synced],
               "greedy_changed_after_final_sync": greedy_before != greedy_synced,
               "seconds": round(time.monotonic() - t0, 1)}
    print(json.dumps(summary), flush=True)
    os._exit(0)


def colocate_main(spec):
    """One colocate run in this process; its summary, or a skip, is the last stdout line (a failed check raises)."""
    try:
        summary = colocate_run(spec)
    except NotApplicable as exc:
        summary = {"skip": str(exc)}
    print(json.dumps(summary), flush=True)
    os._exit(0)  # skip interpreter teardown of the in-process engine (threads, gloo) in this throwaway process


def colocate_runs_main(spec):
    """Several colocate runs in this one process, one engine for all (pytest_vllmcompat/testing/shared_engine.py:
    they ask for the same engine; each run starts it on the checkpoint's weights); a run with "own_engine" (another
    model, after the runs that share) gets a new one. Each run's outcome: its summary, a skip, or the traceback of
    what raised, and which engine it had (1, 2, ...: the build it got); a line "[trainer_run] run K starts" on
    stderr and stdout (vLLM logs to stdout) before each, so that the test can show each run's own output."""
    import gc
    import traceback

    from pytest_vllmcompat.testing.shared_engine import SharedEngineFailed, share_engine

    shared = share_engine(Path(spec["model"]))
    # Each run starts with the environment a fresh child would have. TRL's colocate VLLMGeneration sets RANK,
    # LOCAL_RANK and WORLD_SIZE in os.environ for vLLM; left set, the next run's accelerate takes a CPU process with
    # LOCAL_RANK for a distributed one (MULTI_CPU) and wraps the model in DDP, which a user's single process is not
    # (measured: the LLaVA's unused vision-tower layer then fails DDP's reduction check).
    fresh_environment = dict(os.environ)
    outcomes = []
    for i, run in enumerate(spec["runs"]):
        shared.run = i
        os.environ.clear()
        os.environ.update(fresh_environment)
        if run.get("own_engine"):
            shared.release(Path(run.get("model", spec["model"])))
            gc.collect()  # the dropped engine (its KV cache) before the next one is built
        for stream in (sys.stderr, sys.stdout):
            print(f"[trainer_run] run {i} starts", file=stream, flush=True)
        try:
            outcome = {"summary": colocate_run({**spec, **run, "out": os.path.join(spec["out"], str(i))})}
        except NotApplicable as exc:
            outcome = {"skip": str(exc)}
        except SharedEngineFailed as exc:
            outcome = {"error": traceback.format_exc(), "engine_failed_in": exc.failed_in}
        except Exception:
            outcome = {"error": traceback.format_exc()}
        outcomes.append({**outcome, "engine": shared.built})
        gc.collect()  # the finished run's trainer (its model, optimizer); the engine stays
    print(json.dumps({"outcomes": outcomes}), flush=True)
    os._exit(0)


def colocate_run(spec):
    t0 = time.monotonic()
    import torch
    import trl

    steps = int(spec.get("steps", 2))
    trainer, model, tokenizer = build_trainer(spec, spec, "colocate", vllm_max_model_length=512)
    t_built = time.monotonic()
    kind = spec["trainer"]

    # A LoRA run trains only the adapter of o_proj: watch that weight (merged), else the embeddings.
    name = f"model.layers.0.self_attn.{LORA_TARGET}.weight" if spec.get("lora") else "model.embed_tokens.weight"
    images = spec["dataset"] == "images"
    if images:
        name = "model.language_model.embed_tokens.weight"  # LlavaForConditionalGeneration, transformers 4.52+ and 5
    hf_before = trained_weight(trainer, name)
    probe_ids = [tokenizer(p)["input_ids"] for p in PROMPTS[:4]]
    sleep_mode = bool(spec.get("sleep_mode"))
    llm = trainer.vllm_generation.llm
    if sleep_mode:  # TRL put the engine to sleep (level 2: weights dropped) once built; wake it as its generate does
        llm.wake_up(tags=["weights"])
        llm.collective_rpc("reload_weights")
        llm.wake_up(tags=["kv_cache"])
    eng_before = engine_tensor(trainer, name)[: hf_before.shape[0]]
    greedy_before = greedy(trainer, probe_ids)
    if sleep_mode:
        llm.sleep(level=2)
    # The engine starts on the checkpoint's weights (bf16): same as the HF model's within bf16 rounding.
    assert torch.allclose(eng_before, hf_before, atol=0, rtol=BF16_ROUNDING), "engine does not start on the HF weights"

    if images:  # what the trainer hands the engine while it trains (not this script's probes)
        engine_inputs = record_engine_inputs(llm, tokenizer, model.config.image_token_index)
    result = trainer.train()
    t_trained = time.monotonic()
    if images:
        del llm.generate  # the instance attribute: LLM.generate again

    hf_after = trained_weight(trainer, name)
    hf_delta = (hf_after - hf_before).abs().max().item()
    if not sleep_mode:  # asleep, the engine holds no weights between TRL's generations
        eng_after = engine_tensor(trainer, name)[: hf_after.shape[0]]
        greedy_after = greedy(trainer, probe_ids)
        eng_delta = (eng_after - eng_before).abs().max().item()
    # How far the engine's weights are from the trained HF weights. TRL syncs before each generation, i.e. at the
    # start of each optimizer step, so the engine holds the weights of the last sync (before the last step).
    # Sync once more (what the next step would do; under sleep mode TRL wakes the weights first) and compare
    # (equal up to the engine's bf16 rounding).
    trainer.vllm_generation.sync_weights()
    if sleep_mode:
        llm.wake_up(tags=["kv_cache"])
    eng_synced = engine_tensor(trainer, name)[: hf_after.shape[0]]
    if sleep_mode:
        eng_delta = (eng_synced - eng_before).abs().max().item()
    synced_err = (eng_synced - hf_after).abs().max().item()
    ok_sync = torch.allclose(eng_synced, hf_after.to(eng_synced.dtype), atol=1e-6, rtol=BF16_ROUNDING)
    greedy_synced = greedy(trainer, probe_ids)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    config = trainer.vllm_generation.llm.llm_engine.vllm_config  # what the trainer's arguments became in vLLM
    deepspeed_plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    summary = {
        "engine_config": {"max_num_seqs": config.scheduler_config.max_num_seqs,
                          "max_num_batched_tokens": config.scheduler_config.max_num_batched_tokens,
                          "max_model_len": config.model_config.max_model_len,
                          "model_impl": str(getattr(config.model_config.model_impl, "value",
                                                    config.model_config.model_impl)),
                          "gpu_memory_utilization": config.cache_config.gpu_memory_utilization},
        # what accelerate made of this process: "NO" (not distributed) for a plain single-process run
        "distributed_type": str(getattr(trainer.accelerator.distributed_type, "value", trainer.accelerator.distributed_type)),
        "trl": trl.__version__, "trainer": kind, "dataset": spec["dataset"], "tools": bool(spec.get("tools")),
        "lora": bool(spec.get("lora")), "peft_model": type(trainer.accelerator.unwrap_model(trainer.model)).__name__,
        "watched": name,
        "global_step": trainer.state.global_step, "train_loss": result.training_loss,
        "rewards": [h.get("reward") for h in logs], "reward_std": [h.get("reward_std") for h in logs],
        "hf_max_delta": hf_delta, "engine_max_delta_during_training": eng_delta,
        "engine_vs_trained_after_sync": synced_err, "engine_matches_trained": ok_sync,
        "greedy_changed_during_training": None if sleep_mode else greedy_before != greedy_after,
        "sleep_mode": sleep_mode,
        # DeepSpeed in use, and the parameters partitioned (ZeRO-3 gives each a ds_id): the sync had to gather them
        "zero_stage": deepspeed_plugin.zero_stage if deepspeed_plugin else None,
        "zero3_partitioned": any(hasattr(p, "ds_id") for p in trainer.accelerator.unwrap_model(trainer.model).parameters()),
        "greedy_changed_after_final_sync": greedy_before != greedy_synced,
        "tool_metrics": {k: v for h in logs for k, v in h.items() if k.startswith("tools/")},
        "engine_inputs": engine_inputs if images else None,
        "seconds": {"build": round(t_built - t0, 1), "train": round(t_trained - t_built, 1),
                    "total": round(time.monotonic() - t0, 1)},
    }
    assert trainer.state.global_step == steps, summary
    assert hf_delta > 0, f"training did not change the HF weights: {summary}"
    if steps >= 2:  # the sync at the start of step 2 pushed step 1's update into the engine
        assert eng_delta > 0, f"the engine's weights did not change during training: {summary}"
    assert ok_sync, f"after sync_weights() the engine does not hold the trained weights: {summary}"
    return summary


GENERATION_PATHS = ("/generate/", "/chat/", "/v1/completions", "/v1/chat/completions")  # TRL's own; 1.11+: vLLM's


def record_requests(base_url, client_ports):
    """Every request sent through a requests.Session to `base_url` (VLLMClient's own session), as sent: the
    requests stay real, this only keeps (method, path, JSON body) without the prompts' bulk, and for a generation
    the first prompt's ids in the answer (what the trainer's prompt became on the server). `client_ports` (a set)
    gets the local port of every connection this process opens to the server: which lines of the shared server's
    log are this process's (pytest_vllmcompat/testing/server_log.py)."""
    from urllib.parse import urlsplit

    import requests
    import urllib3.connection

    server = urlsplit(base_url)
    connect = urllib3.connection.HTTPConnection.connect

    def connect_recording(self):
        connect(self)
        if (self.host, self.port) == (server.hostname, server.port):
            client_ports.add(self.sock.getsockname()[1])

    urllib3.connection.HTTPConnection.connect = connect_recording
    sent, original = [], requests.Session.request

    def request(self, method, url, *args, **kwargs):
        if str(url).startswith(base_url):
            body = dict(kwargs.get("json") or {})
            for key in ("prompts", "messages", "prompt"):
                if key in body:
                    body[key] = {"count": len(body[key]), "first": body[key][0] if body[key] else None}
            entry = {"method": method.upper(), "path": str(url)[len(base_url.rstrip("/")):], "json": body}
            sent.append(entry)
            response = original(self, method, url, *args, **kwargs)
            if entry["path"] in GENERATION_PATHS and response.ok:  # the prompt ids the trainer got back
                answer = response.json()
                first = (answer.get("prompt_ids") or [None])[0]  # TRL's own server; vLLM's: per choice, or top level
                choices = answer.get("choices") or [{}]
                entry["first_prompt_ids"] = first or choices[0].get("prompt_token_ids") or answer.get("prompt_token_ids")
            return response
        return original(self, method, url, *args, **kwargs)

    requests.Session.request = request
    return sent


def server_greedy(trainer):
    client = trainer.vllm_generation.vllm_client
    out = client.generate(prompts=PROMPTS[:4], n=1, temperature=0.0, max_tokens=MAX_COMPLETION)
    return out["completion_ids"]


def param_digests(model):
    """{name: digest} of the model's parameters, as the replaced transport records what it is sent."""
    from pytest_vllmcompat.testing.lane_substitutes import tensor_digest

    return {name: tensor_digest(param.data) for name, param in model.named_parameters()}


def server_run(spec, run, sent, transport):
    """One trainer against the server; returns its summary (the caller catches what it raises)."""
    t0, first_request = time.monotonic(), len(sent)
    del ROLLOUT_CALLS[:], REWARD_EXTRA_FIELDS[:]
    if transport:
        transport.clear()
    if run.get("address") == "host-port":  # GRPOConfig's other way to name the server (and the NCCL host)
        from urllib.parse import urlsplit

        url = urlsplit(spec["base_url"])
        address = dict(vllm_server_host=url.hostname, vllm_server_port=url.port)
    else:
        address = dict(vllm_server_base_url=spec["base_url"])
    trainer, model, tokenizer = build_trainer(spec, run, "server", vllm_server_timeout=60, **address)
    greedy_before = server_greedy(trainer) if not transport else None
    hf_before = param_digests(trainer.model)
    result = trainer.train()
    trainer.vllm_generation.sync_weights()  # what the next step would do: push the trained weights
    hf_after = param_digests(trainer.model)
    requests_made = sent[first_request:]
    pushed = json.loads(json.dumps(transport.to_json())) if transport else None  # before evaluate() syncs again
    eval_requests = None
    if run.get("eval"):
        before_eval = len(sent)
        trainer.evaluate()
        eval_requests = sent[before_eval:]
    summary = {
        "trainer": run["trainer"], "dataset": run["dataset"], "tools": bool(run.get("tools")),
        "global_step": trainer.state.global_step, "train_loss": result.training_loss,
        "requests": requests_made, "eval_requests": eval_requests, "hf_changed": sorted(n for n in hf_after if hf_after[n] != hf_before[n]),
        "hf_after": hf_after, "seconds": round(time.monotonic() - t0, 1),
        "rollout_calls": list(ROLLOUT_CALLS), "reward_extra_fields": list(REWARD_EXTRA_FIELDS),
    }
    if transport:
        summary["transport"] = pushed
    else:  # CUDA lane: the weights really went over NCCL; the server must now generate with them
        summary["greedy_changed_after_sync"] = server_greedy(trainer) != greedy_before
    return summary


def log_since(spec, offset, client_ports, limit=6000):
    """What the server logged during a run for this process's connections or for no request (its side of a
    failure; other clients of the shared server left out: server_log.py), progress bars left out."""
    with open(spec["server_log"], "rb") as f:
        f.seek(offset)
        lines = lines_of_client(f.read().decode("utf-8", errors="replace").splitlines(), client_ports)
    kept = [line for line in lines if not line.startswith(("Adding requests", "Processed prompts"))]
    return "\n".join(kept)[-limit:]


def server_main(spec):
    """All server runs in this one process, one after the other (no engine here; each trainer builds its own
    Accelerator, VLLMGeneration and VLLMClient)."""
    import traceback

    import trl
    from trl.generation.vllm_client import VLLMClient

    transport = None
    if spec["lane"] == "cpu":
        from pytest_vllmcompat.testing.lane_substitutes import replace_server_weight_transport

        transport = replace_server_weight_transport(VLLMClient)
    client_ports = set()
    sent = record_requests(spec["base_url"], client_ports)
    outcomes = []
    for i, run in enumerate(spec["runs"]):
        run = {**run, "out": os.path.join(spec["out"], str(i))}
        log_offset = os.path.getsize(spec["server_log"])
        client_ports.clear()  # this run's connections (each trainer's VLLMClient opens its own)
        try:
            outcomes.append({"run": run, "summary": server_run(spec, run, sent, transport)})
        except NotApplicable as exc:
            outcomes.append({"run": run, "skip": str(exc)})
        except Exception:
            outcomes.append({"run": run, "error": traceback.format_exc(),
                             "server_log": log_since(spec, log_offset, client_ports)})
    from pytest_vllmcompat.process import procfs  # after torch and trl: the libc every library was loaded with

    print(json.dumps({"trl": trl.__version__, "outcomes": outcomes, "libc": procfs.mapped_library("self", "libc.so.")}),
          flush=True)
    os._exit(0)


def main(spec):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if spec.get("fsdp") or spec.get("zero3"):  # accelerate's FSDP / DeepSpeed need a process group: rank 0 of 1
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(late_bind_port())
    if spec.get("mode") == "server":
        server_main(spec)
    elif spec.get("runs"):
        colocate_runs_main(spec)
    else:
        (colocate_quantized_main if spec.get("bnb") else colocate_main)(spec)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
