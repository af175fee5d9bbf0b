"""TRL's trainers end to end with use_vllm=True: GRPOTrainer and RLOOTrainer, a few optimizer steps on the tiny
model, plain and conversational prompts (GRPO also with tools), in both vLLM modes.

Colocate: runs happen in child interpreters (trainer_run.py next to this file, run with this cell's python): a
colocate engine lives in its process with torch.distributed state, and the session's `colocate_generator` may
already hold one in this pytest process. The four GRPO/RLOO x plain/chat runs share one child and one engine
(their trainers ask for the same one; pytest_vllmcompat/testing/shared_engine.py resets it to the checkpoint's
weights between runs); on the CPU lane the tools run comes after them in that child on the same engine, then the
LLaVA's images run with an engine of its own (in_the_shared_child); any other run whose engine differs (another
model implementation, sleep mode, FSDP, ZeRO-3, QLoRA) has a child of its own. Checked inside trainer_run.py: the
engine starts on the checkpoint's weights; training changes the HF weights; the engine's weights change during
training (TRL syncs before each step's generation); after a final sync_weights() the engine holds exactly the
trained weights (bf16 rounding) and its greedy output changed.

Server: the server runs share one child (no engine lives there; on the CPU lane one RLOO run has a second one,
trainer_children.OWN_CHILD_RUNS) and talk to a real `trl vllm-serve` with the
arguments the trainers choose; every request is recorded and checked against the trainer's settings. On the CPU
lane that is the cell's session server, and only the NCCL weight transport is replaced
(pytest_vllmcompat/testing/lane_substitutes.py; the tests declare "server weight sync not exercised on the cpu
lane"): the weights the trainer pushes are recorded and must be the trained ones. On the CUDA lane the transport
is real, the server has a GPU of its own (its weights change, so not the session's), and its greedy output must
follow the training.

Background (CPU lane): the server runs' children start at the session server's first user (once it is ready), the
Transformers-backend colocate run at the first engine test; both run beside the tests; the tests that wait on them
are marked `vllm_background` and run after the engine tests (trainer_children.py).
"""

import json
import os
from pathlib import Path

import gpu_helpers as gh
import pytest
import trainer_children
import trainer_run
from trainer_children import STEPS, TrainerRun, colocate_gpu, last_line, trainer_child, trainer_env, transformers_5

from pytest_vllmcompat.install import engine_route
from pytest_vllmcompat.testing.lane_substitutes import SERVER_WEIGHT_SYNC

pytestmark = pytest.mark.backend  # the trainers import the backend's vLLM modules
colocate = pytest.mark.vllm_mode("colocate")
server = pytest.mark.vllm_mode("server")
# The server runs' tests wait on their child, which runs from the session server's first user on
# (server_trainer_child).
server_child = pytest.mark.vllm_background("server_trainer_child", beside="server")


def run_trainer(spec: dict, tmp_path, gpu: str | None = None) -> dict:
    """One colocate run in a fresh interpreter, waited for; `gpu`: the CUDA device it gets (the CUDA lane)."""
    return TrainerRun(spec, tmp_path, gpu).start().summary()


# A setting that reaches vLLM rides on one of the four runs (the engine it starts anyway) where its failure cannot
# hide the run's own checks: GRPO on plain prompts trains a LoRA adapter (`peft_config`): TRL merges it into the
# base weights, pushes them under the base names and unmerges; the engine must then hold the merged weights.
RUN_SETTINGS = {("grpo", "plain"): {"lora": True}}


def check_single_process(summary: dict) -> None:
    """Not under FSDP or DeepSpeed: as a user's plain run, accelerate must see no distributed one (a run after
    another in the shared child once did: TRL's VLLMGeneration had left LOCAL_RANK in os.environ)."""
    assert summary["distributed_type"] == "NO", f"accelerate took this run for {summary['distributed_type']}"


def check_colocate_run(summary: dict, settings: dict, single_process: bool = True) -> None:
    if single_process:
        check_single_process(summary)
    assert summary["peft_model"].startswith("Peft") == bool(settings.get("lora")), summary["peft_model"]
    assert summary["global_step"] == 2
    assert summary["hf_max_delta"] > 0 and summary["engine_max_delta_during_training"] > 0
    assert summary["engine_matches_trained"]
    assert summary["greedy_changed_after_final_sync"], "the engine's greedy output did not follow the training"
    # What the trainer's configuration became in the engine (GRPOConfig/RLOOConfig defaults, trainer_run.py's
    # settings): max_num_seqs = per_device_train_batch_size 4 x tensor_parallel_size 1 x steps_per_generation 1;
    # vllm_model_impl "vllm" (or the run's); vllm_gpu_memory_utilization 0.3; vllm_max_model_length 512; TRL's fixed
    # max_num_batched_tokens 4096.
    assert summary["engine_config"] == {"max_num_seqs": 4, "max_num_batched_tokens": 4096, "max_model_len": 512,
                                        "model_impl": settings.get("model_impl", "vllm"),
                                        "gpu_memory_utilization": 0.3}, summary["engine_config"]


COLOCATE_RUNS = [(trainer, dataset) for trainer in ("grpo", "rloo") for dataset in ("plain", "chat")]
IMAGES_RUN = ("grpo", "images")
IMAGES_TEST = "test_grpo_colocate_on_images_hands_vllm_each_prompt_with_its_image"
TOOLS_RUN = ("grpo", "tools")  # GRPO on conversational prompts with tools=[get_time]: the four runs' engine
TOOLS_TEST = "test_grpo_with_tools_colocate"
RUN_MARKER = "[trainer_run] run {} starts"  # what trainer_run.py writes to stderr and stdout before each of several runs


def in_the_shared_child(session: pytest.Session, context, test: str) -> bool:
    """Whether the run of `test` (TOOLS_TEST, IMAGES_TEST) is a run of the shared colocate child, after the four:
    the tools run on their engine (it asks for the same one), then the images run (the LLaVA) with an engine of
    its own. On the CPU lane, when that test is selected, not in an xdist worker. That saves the tools run an
    interpreter and an engine start (45-55 s of a tf5 cell on these CPUs) and the images run an interpreter
    (12-16 CPU seconds of imports). On the CUDA lane each keeps its own child: two engines built one after the other
    in one process on one GPU have not been measured there, nor the tools run on a shared engine. Under xdist a
    worker's items are the whole selection, not the tests it will run, so a worker could not tell whether the test
    is its own."""
    return (context.lane == "cpu" and not os.environ.get("PYTEST_XDIST_WORKER")
            and any(getattr(item, "originalname", "") == test for item in session.items))


def run_spec(trainer: str, dataset: str, **settings) -> dict:
    return {"trainer": trainer, "dataset": dataset, "steps": STEPS, **settings}


TOOLS_SPEC = run_spec("grpo", "chat", tools=True)


@pytest.fixture(scope="module")
def colocate_trainer_outcomes(request, vllmcompat_context, vllm_engine_host, vllm_model_dir, tmp_path_factory) -> dict:
    """The four runs of test_trainer_colocate_trains_and_the_engine_follows in one child with one engine
    (trainer_run.py, pytest_vllmcompat/testing/shared_engine.py): their trainers ask for the same engine, so it is
    started once and each run begins on the checkpoint's weights; then, where in_the_shared_child, the tools run
    on that engine and the images run with an engine of its own. {"runs": {(trainer, dataset): outcome, each with
    its own part of the child's stderr and stdout, and which engine (1, 2, ...) its run had}, "child_seconds"}."""
    out = tmp_path_factory.mktemp("colocate-trainers")
    gpu = colocate_gpu(vllmcompat_context)
    runs = {key: run_spec(*key, **RUN_SETTINGS.get(key, {})) for key in COLOCATE_RUNS}
    if in_the_shared_child(request.session, vllmcompat_context, TOOLS_TEST) and transformers_5():
        runs[TOOLS_RUN] = TOOLS_SPEC  # below transformers 5 its test skips before asking
    if in_the_shared_child(request.session, vllmcompat_context, IMAGES_TEST):
        runs[IMAGES_RUN] = run_spec(*IMAGES_RUN, model=str(request.getfixturevalue("tiny_vlm_dir")), own_engine=True)
    spec = {"mode": "colocate", "lane": vllmcompat_context.lane, "model": str(vllm_model_dir), "out": str(out),
            "runs": list(runs.values())}
    child = trainer_child("colocate-trainers", spec, out, trainer_env(gpu))
    child.start()
    done = child.wait()
    printed = last_line(done, "the colocate trainer runs")

    def part(stream: str, i: int) -> str:
        return stream.split(RUN_MARKER.format(i), 1)[-1].split(RUN_MARKER.format(i + 1), 1)[0]

    logged = done.stdout.rstrip().rpartition("\n")[0]  # what vLLM logged: stdout without the outcomes' JSON line
    outcomes = {}
    for i, (key, outcome) in enumerate(zip(runs, printed["outcomes"])):
        # a run that got the shared engine's failure shows the output of the run whose build failed
        shown = outcome.get("engine_failed_in", i)
        outcome["stderr"], outcome["stdout"] = part(done.stderr, shown)[-4000:], part(logged, shown)
        outcomes[key] = outcome
    return {"runs": outcomes, "child_seconds": done.seconds}


def shared_child_summary(outcomes: dict, key: tuple, vllm_measure) -> dict:
    """The summary of one run of the shared colocate child; its skip, or a failure with what it raised, its output
    (stderr) and the errors vLLM logged (stdout)."""
    outcome = outcomes["runs"][key]
    vllm_measure("trainer_child_seconds", outcomes["child_seconds"])
    if "skip" in outcome:
        pytest.skip(outcome["skip"])
    if "error" in outcome:
        pytest.fail(f"{key[0]} ({key[1]}) in colocate mode raised:\n{outcome['error'][-4000:]}\n--- its output "
                    f"(stderr) ---\n{outcome['stderr']}" + trainer_children.logged_errors(outcome["stdout"]), pytrace=False)
    print(json.dumps(outcome["summary"]))
    return outcome["summary"]


@colocate
@pytest.mark.parametrize("dataset", ["plain", "chat"])
@pytest.mark.parametrize("trainer", ["grpo", "rloo"])
def test_trainer_colocate_trains_and_the_engine_follows(colocate_trainer_outcomes, trainer, dataset, vllm_measure):
    summary = shared_child_summary(colocate_trainer_outcomes, (trainer, dataset), vllm_measure)
    check_colocate_run(summary, RUN_SETTINGS.get((trainer, dataset), {}))
    assert colocate_trainer_outcomes["runs"][(trainer, dataset)]["engine"] == 1, (
        "the four runs ask for one engine configuration: the child's first engine serves all four")


@colocate
@pytest.mark.vllm_background("transformers_impl_run")
def test_trainer_colocate_with_the_transformers_model_impl(transformers_impl_run):
    """`vllm_model_impl="transformers"` (GRPOConfig's default is "vllm"): the engine runs vLLM's Transformers
    backend; the run must train and the engine follow the weights as with vLLM's own model. Its own run (one more
    engine start), in the background beside the engine tests (trainer_children.py): where this backend fails, the
    four runs above still check everything else."""
    check_colocate_run(transformers_impl_run.summary(), trainer_children.TRANSFORMERS_IMPL)


@colocate
def test_grpo_colocate_on_images_hands_vllm_each_prompt_with_its_image(request, vllmcompat_context, vllm_engine_host,
                                                                      tiny_vlm_dir, tmp_path, colocate_trainer_gpu,
                                                                      vllm_measure):
    """A vision-language dataset (an `image` column, conversational prompts) on the tiny LLaVA: GRPO must train and
    the engine follow the weights as with the text model (the LLaVA's language-model weights reach vLLM under its
    own names), and every prompt the trainer hands vLLM must carry its own row's image and become, in vLLM's
    prompt, exactly the image's 16 tokens per image (vLLM expands one `<image>` placeholder itself). TRL 0.28.0 and
    0.29.0 go through LLM.chat with `image_pil` parts; 0.29.1 tokenizes with the processor, which already expanded
    the placeholder, and hands vLLM those ids plus the image (matrix known failure). Server mode is not run with
    images: it would need a second server for the LLaVA (one more start-up per cell). The run is the shared
    colocate child's last on the CPU lane (in_the_shared_child), in a child of its own on the CUDA lane."""
    from pytest_vllmcompat.testing.tiny_vlm import TINY_VISION_SPEC

    if in_the_shared_child(request.session, vllmcompat_context, IMAGES_TEST):
        outcomes = request.getfixturevalue("colocate_trainer_outcomes")
        summary = shared_child_summary(outcomes, IMAGES_RUN, vllm_measure)
        assert outcomes["runs"][IMAGES_RUN]["engine"] != outcomes["runs"][COLOCATE_RUNS[0]]["engine"], (
            "the images run asks for an engine of its own, not the text runs' one")
    else:
        summary = run_trainer(run_spec(*IMAGES_RUN, model=str(tiny_vlm_dir)), tmp_path, colocate_trainer_gpu)
    check_colocate_run(summary, {})
    handed = summary["engine_inputs"]
    assert len(handed) == 2 * trainer_run.GENERATIONS, handed  # one prompt x 4 generations per step
    for entry in handed:
        assert entry["row"] is not None, f"a prompt handed to vLLM holds none of the dataset's prompts: {entry}"
        assert entry["colours"] == [list(trainer_run.IMAGE_COLOURS[entry["row"]])], (
            f"row {entry['row']}'s prompt reached vLLM with the images {entry['colours']}, not its own")
        expected = TINY_VISION_SPEC.image_tokens * len(entry["colours"])
        assert entry["image_tokens"] == expected, (
            f"vLLM's prompt for row {entry['row']} holds {entry['image_tokens']} image tokens, not the image's "
            f"{expected}: vLLM generated from another prompt than the one the trainer scores")


@pytest.fixture
def colocate_trainer_gpu(vllmcompat_context) -> str | None:
    return colocate_gpu(vllmcompat_context)


@pytest.mark.gpu(n=1)
@colocate
def test_grpo_colocate_with_sleep_mode_trains_and_the_engine_follows(vllm_model_dir, tmp_path):
    """`vllm_enable_sleep_mode=True` through GRPOTrainer (vLLM's sleep mode needs CUDA): TRL puts the engine to
    sleep (level 2) once built and after every generation, and wakes it (weights, reload_weights, KV cache) before
    the next; sync_weights wakes the weights first. The run must train, and after a final sync the woken engine
    must hold the trained weights and generate differently than before training."""
    summary = run_trainer({"trainer": "grpo", "dataset": "plain", "model": str(vllm_model_dir), "steps": 2,
                           "sleep_mode": True}, tmp_path, gh.visible_gpus()[-1])
    assert summary["sleep_mode"] and summary["global_step"] == 2
    assert summary["hf_max_delta"] > 0 and summary["engine_max_delta_during_training"] > 0
    assert summary["engine_matches_trained"]
    assert summary["greedy_changed_after_final_sync"], "the engine's greedy output did not follow the training"


@pytest.mark.gpu(n=1)
@colocate
@pytest.mark.parametrize("fsdp", [1, 2])
def test_grpo_colocate_under_fsdp_trains_and_the_engine_follows(vllm_model_dir, tmp_path, fsdp):
    """`fsdp="full_shard"` with fsdp_version 1 or 2, over one process on one GPU: VLLMGeneration.sync_weights takes
    its FSDP path (FSDP1: summon_full_params module by module, `_fsdp_wrapped_module.` stripped from the names; FSDP2:
    the state dict's DTensors gathered with full_tensor()). The run must train, and the engine follow and end on the
    trained weights (the trained ones read back through accelerate's gathered state dict). CUDA only: accelerate
    refuses FSDP without an accelerator device ("There are currently no available devices found", measured on
    CPU), and TRL's FSDP2 sync moves CPU parameters to "cuda"."""
    summary = run_trainer({"trainer": "grpo", "dataset": "plain", "model": str(vllm_model_dir), "steps": 2,
                           "fsdp": fsdp}, tmp_path, gh.visible_gpus()[-1])
    check_colocate_run(summary, {}, single_process=False)


@pytest.mark.gpu(n=1)
@colocate
def test_grpo_colocate_under_zero3_trains_and_the_engine_follows(vllm_model_dir, tmp_path):
    """DeepSpeed ZeRO-3 (`deepspeed={"zero_optimization": {"stage": 3}, ...}`, the backend's `deepspeed` extra) over
    one process on one GPU: the parameters are partitioned, so VLLMGeneration.sync_weights takes its ZeRO-3 path
    (each module's parameters gathered with deepspeed.zero.GatheredParameters, then loaded). The run must train, and
    the engine follow and end on the trained weights (read back gathered the same way). CUDA only: on CPU DeepSpeed
    needs its oneCCL accelerator, which the cells do not install."""
    summary = run_trainer({"trainer": "grpo", "dataset": "plain", "model": str(vllm_model_dir), "steps": 2,
                           "zero3": True}, tmp_path, gh.visible_gpus()[-1])
    assert summary["zero_stage"] == 3 and summary["zero3_partitioned"], summary  # DeepSpeed really sharded them
    check_colocate_run(summary, {}, single_process=False)


@pytest.mark.gpu(n=1)
@colocate
def test_grpo_colocate_qlora_starts_a_bitsandbytes_engine_and_trains(vllm_model_dir, tmp_path):
    """QLoRA: the model loaded in 4 bits (bitsandbytes `BitsAndBytesConfig(load_in_4bit=True)`, TRL's
    `quantization` extra) with a LoRA adapter. VLLMGeneration must see the bnb Linear4bit layers and start the engine
    with `quantization="bitsandbytes"`; the run must train 2 steps, and every sync (the adapter merged into the 4-bit
    base, pushed, unmerged) load into that engine, which still generates afterwards. CUDA only (bitsandbytes' 4-bit
    kernels)."""
    summary = run_trainer({"trainer": "grpo", "dataset": "plain", "model": str(vllm_model_dir), "steps": 2,
                           "bnb": True, "lora": True}, tmp_path, gh.visible_gpus()[-1])
    assert summary["quantization"] == "bitsandbytes", summary
    assert summary["base_layer"] == "Linear4bit" and summary["peft_model"].startswith("Peft"), summary
    assert summary["global_step"] == 2, summary
    assert summary["greedy_lengths"] == [8] * 4, summary  # it still generates (8 tokens: no EOS within them)


def skip_unless_transformers_5():
    from importlib.metadata import version

    if not transformers_5():
        pytest.skip(f"not applicable: TRL refuses tools below transformers 5 ('Using tools with GRPOTrainer requires "
                    f"transformers version 5.0.0 or higher'; installed {version('transformers')})")


@colocate
def test_grpo_with_tools_colocate(request, vllmcompat_context, vllm_engine_host, vllm_model_dir, tmp_path,
                                  colocate_trainer_gpu, vllm_measure):
    """GRPOTrainer(tools=[get_time]) on conversational prompts, as a user gets it: the tiny model's chat template is
    not one TRL knows, so the run sets `tokenizer.response_schema = qwen3_schema`, exactly what TRL's
    add_response_schema() does for a Qwen3 tokenizer. (The tiny model never emits a tool call: this covers the
    tool-enabled generation/parsing path, not tool execution.) On transformers 5.24 this fails at the first
    generation: TRL sets `response_schema`, transformers reads `response_template` (matrix known failure). On the
    CPU lane the run is one of the shared colocate child's, on the four runs' engine (in_the_shared_child)."""
    skip_unless_transformers_5()
    if in_the_shared_child(request.session, vllmcompat_context, TOOLS_TEST):
        outcomes = request.getfixturevalue("colocate_trainer_outcomes")
        summary = shared_child_summary(outcomes, TOOLS_RUN, vllm_measure)
        assert outcomes["runs"][TOOLS_RUN]["engine"] == outcomes["runs"][COLOCATE_RUNS[0]]["engine"], (
            "tools change nothing in the engine TRL asks for: the tools run shares the four runs' engine")
        check_single_process(summary)
    else:
        summary = run_trainer({**TOOLS_SPEC, "model": str(vllm_model_dir)}, tmp_path, colocate_trainer_gpu)
    assert summary["global_step"] == 2 and summary["engine_matches_trained"]


TOOL_CALL = '<tool_call>\n{"name": "get_time", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.mark.parametrize("attribute", ["response_schema", "response_template"])
def test_trl_parses_a_tool_call_on_this_transformers(vllm_model_dir, attribute):
    """What GRPOTrainer(tools=...) does with each completion (no engine needed): trl.chat_template_utils.
    parse_response(tokenizer, completion_ids) must find the tool call. The schema is TRL's own Qwen3 one, set as
    TRL sets it (`response_schema`) or as transformers 5.24 reads it (`response_template`). On transformers 5.24
    both fail (matrix known failure): the first raises AttributeError (no `response_template`); the second makes
    transformers raise ValueError (TRL's schema is not in its new format, and `prefix=` is now required), which TRL
    swallows and falls back to plain text, so tool calls are silently never parsed."""
    skip_unless_transformers_5()
    from transformers import AutoTokenizer
    from trl.chat_template_utils import parse_response, qwen3_schema

    tokenizer = AutoTokenizer.from_pretrained(str(vllm_model_dir))
    setattr(tokenizer, attribute, qwen3_schema)
    ids = tokenizer(TOOL_CALL, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == TOOL_CALL, "precondition: the tokenizer round-trips the tool call"
    try:
        direct = tokenizer.parse_response(ids, schema=qwen3_schema, prefix="")  # transformers' API, used correctly
    except Exception as exc:
        direct = f"{type(exc).__name__}: {exc}"
    parsed = parse_response(tokenizer, ids)
    assert parsed.get("tool_calls"), (f"TRL did not parse the tool call (tokenizer.{attribute} set): got {parsed!r}; "
                                      f"transformers' parse_response(ids, prefix='') gives {direct!r}")


@pytest.fixture
def server_run_summary(server_trainer_outcomes, vllmcompat_context, vllm_lane_substitute, vllm_measure):
    """summary(name, measure=False): that server run's summary (skips or fails as the run did); on the CPU lane the
    test declares first that the weight transport was replaced."""
    def summary(name: str, measure: bool = False) -> dict:
        if vllmcompat_context.lane == "cpu":
            vllm_lane_substitute(SERVER_WEIGHT_SYNC)
        return server_summary(server_trainer_outcomes, name, vllm_measure if measure else None)

    return summary


def server_summary(outcomes: dict, name: str, measure=None) -> dict:
    outcome = outcomes[name]
    if measure is not None:  # where a cell's time goes (issue: a cell costs its engines)
        measure("trainer_child_seconds", outcome["child_seconds"])
        if "summary" in outcome:
            measure("run_seconds", outcome["summary"]["seconds"])
    if "skip" in outcome:
        pytest.skip(outcome["skip"])
    if "error" in outcome:
        pytest.fail(f"{name} in server mode raised:\n{outcome['error'][-4000:]}\n--- what the server logged during "
                    f"this run ---\n{outcome['server_log']}", pytrace=False)
    print(json.dumps({k: v for k, v in outcome["summary"].items() if k not in ("hf_after", "transport")}))
    return outcome["summary"]


def generations(requests: list) -> list:
    """The generation requests among those a server run recorded (every release's paths: trainer_run.py)."""
    return [r for r in requests if r["path"] in trainer_run.GENERATION_PATHS]


def prompts_of(body: dict) -> dict:
    """{count, first} of a recorded generation request's prompts, whatever the release calls the field."""
    return body.get("prompts") or body.get("messages") or body.get("prompt")


def check_server_run(summary: dict, backend, lane: str, chat: bool) -> None:
    """What the trainer sent is what its settings say; on the CPU lane, the weights it pushed are the trained ones."""
    assert summary["global_step"] == STEPS
    assert summary["hf_changed"], "training did not change the HF weights"
    gens = generations(summary["requests"])
    assert len(gens) >= STEPS, f"expected a generation request per step, got {[r['path'] for r in summary['requests']]}"
    # 0.29.1+ tokenize in the trainer and send ids to /generate/ (1.11+: /v1/completions); 0.28.0/0.29.0 send
    # text, chat to /chat/.
    path = backend.server_paths["chat" if chat and not backend.token_id_prompts else "generate"]
    for r in gens:
        body = r["json"]
        assert r["path"] == path, f"{r['path']} instead of {path}"
        # The trainer's settings (trainer_run.py): 4 generations of the step's one unique prompt, T=2, 8 tokens.
        assert (body["n"], body["temperature"], body["max_tokens"]) == (4, 2.0, 8), body
        prompts = prompts_of(body)
        assert prompts["count"] == 1, body
        if path == backend.server_paths["generate"]:
            assert isinstance(prompts["first"], list if backend.token_id_prompts else str), body
    if lane != "cpu":
        assert summary["greedy_changed_after_sync"], "the server's greedy output did not follow the trained weights"
        return
    transport = summary["transport"]
    # The device the trainer hands init_communicator: torch.cuda.current_device() (answered 0 by the substitute off
    # CUDA) up to 1.10, the accelerator's device (cpu here) from 1.11 on.
    device = "cpu" if backend.server_is_vllm_serve else "0"
    assert transport["init_devices"] == [device] and transport["world_sizes"] == [1], transport
    syncs = transport["syncs"]
    # TRL syncs at a step whose global_step differs from the last loaded one, and the run syncs once more at the end.
    assert len(syncs) >= 2, f"{len(syncs)} weight sync round(s)"
    assert set(syncs[-1]) == set(summary["hf_after"]), "the trainer did not push every parameter under its name"
    assert syncs[-1] == summary["hf_after"], "the last sync did not push the trained weights (dtype, shape, bytes)"
    assert syncs[0] != syncs[-1], "every sync pushed the same weights: training never reached the transport"
    reset = backend.server_paths["reset_prefix_cache"]
    resets = [r for r in summary["requests"] if r["path"] == reset]
    assert len(resets) == len(syncs), f"{len(resets)} POST {reset} for {len(syncs)} syncs"


@server
@pytest.mark.parametrize("dataset", ["plain", "chat"])
@pytest.mark.parametrize("trainer", ["grpo", "rloo"])
@server_child
def test_trainer_server_sends_its_settings_and_pushes_trained_weights(server_run_summary, vllm_backend,
                                                                      vllmcompat_context, trainer, dataset):
    summary = server_run_summary(f"{trainer}-{dataset}", measure=True)
    check_server_run(summary, vllm_backend, vllmcompat_context.lane, chat=dataset == "chat")


@server
@server_child
def test_grpo_with_tools_server(server_run_summary, vllm_backend, vllmcompat_context):
    """GRPOTrainer(tools=[get_time]) in server mode (the tiny model never emits a tool call, so this is the
    tool-enabled generation path; TRL's tool loop refuses server mode only once a call appears)."""
    skip_unless_transformers_5()
    summary = server_run_summary("grpo-tools")
    check_server_run(summary, vllm_backend, vllmcompat_context.lane, chat=True)


@server
@server_child
def test_the_trainer_child_runs_on_the_cells_runtime(server_trainer_outcomes):
    """The server-mode trainer child (sys.executable, torch and trl imported) maps the cell's C library: the newer
    runtime's where the cell entered one (tests/compat/test_engine_runtime.py checks the other processes)."""
    seen = {outcome["libc"] for outcome in server_trainer_outcomes.values()}
    assert {str(Path(p).resolve()) for p in seen} == {str(engine_route.cell_libc())}


@server_child
def test_grpo_server_evaluation_uses_num_generations_eval(server_run_summary):
    """`num_generations_eval` replaces num_generations in eval mode: trainer.evaluate() after training sends the
    eval prompt once with n=2 (GRPOTrainer._generate_single_turn), at the trainer's temperature and length."""
    summary = server_run_summary("grpo-plain")
    gens = generations(summary["eval_requests"])
    assert gens, f"evaluate() sent no generation request: {[r['path'] for r in summary['eval_requests']]}"
    for r in gens:
        body = r["json"]
        assert (body["n"], body["temperature"], body["max_tokens"]) == (2, 2.0, 8), body


@server
@server_child
def test_grpo_server_chat_template_kwargs_reach_the_template(server_run_summary, vllm_backend, vllm_model_dir,
                                                             vllmcompat_context):
    """`chat_template_kwargs={"greeting": "Hi"}` with a trainer-side template that prints `greeting`:
    0.29.1 applies it in the trainer (the token ids sent start with "Hi"); 0.28.0/0.29.0 send it with the
    messages to /chat/ for the server's LLM.chat (the request carries it unchanged)."""
    summary = server_run_summary("grpo-chat-kwargs")
    check_server_run(summary, vllm_backend, vllmcompat_context.lane, chat=True)
    gens = generations(summary["requests"])
    if vllm_backend.token_id_prompts:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(vllm_model_dir))
        texts = [tokenizer.decode(prompts_of(r["json"])["first"]) for r in gens]
        assert all(t.startswith("Hi\n") for t in texts), texts
    else:
        assert all(r["json"].get("chat_template_kwargs") == {"greeting": "Hi"} for r in gens), gens


@server
@server_child
def test_grpo_server_rollout_func_replaces_the_trainers_generation(server_run_summary):
    """`GRPOTrainer(rollout_func=f)`: TRL calls f(prompts, trainer) instead of generating (0.28.0/0.29.0 through
    VLLMGeneration with every gathered prompt, duplicates included; 0.29.1 from the trainer with the process's
    prompts), trains on what it returns and forwards its extra fields to the rewards. Here f generates one
    completion per prompt through the trainer's own VLLMClient: every generation request is f's (n=1, the step's 4
    prompts), none the trainer's (n=4), and each step's reward saw f's `rollout_tag`."""
    summary = server_run_summary("grpo-rollout-func")
    assert summary["global_step"] == STEPS and summary["hf_changed"]
    calls = summary["rollout_calls"]
    assert len(calls) == STEPS and all(c == {"count": 4, "type": "str"} for c in calls), calls
    gens = [r["json"] for r in generations(summary["requests"])]
    assert len(gens) == STEPS and all((g["n"], prompts_of(g)["count"]) == (1, 4) for g in gens), gens
    assert summary["reward_extra_fields"] == [[f"rollout-{i}"] * 4 for i in range(1, STEPS + 1)], \
        summary["reward_extra_fields"]


@server
@server_child
def test_grpo_server_tool_call_history_reaches_the_template(server_run_summary, vllm_backend, vllm_model_dir):
    """Conversational prompts whose history holds an assistant tool call with dict arguments (what a datasets
    column holds) and the tool's answer: the prompt the server generated from must be the chat template applied to
    that history with the arguments as JSON. 0.28.0/0.29.0 json.dumps the arguments before sending the messages
    to /chat/ (the request must carry the string); 0.29.1 renders them in the trainer and sends token ids."""
    from transformers import AutoTokenizer

    summary = server_run_summary("grpo-tool-call-history")
    assert summary["global_step"] == STEPS and summary["hf_changed"]
    gens = generations(summary["requests"])
    assert gens, [r["path"] for r in summary["requests"]]
    tokenizer = AutoTokenizer.from_pretrained(str(vllm_model_dir))
    expected = {tuple(tokenizer.apply_chat_template(trainer_run.tool_call_history(p), add_generation_prompt=True,
                                                    tokenize=True, return_dict=True)["input_ids"])
                for p in trainer_run.PROMPTS}
    assert '<tool_call>get_time {"city": "Paris"}</tool_call>' in tokenizer.decode(next(iter(expected))), \
        "precondition: the tiny template renders the tool call's arguments"
    for r in gens:
        assert tuple(r["first_prompt_ids"]) in expected, tokenizer.decode(r["first_prompt_ids"])
        if not vllm_backend.token_id_prompts:
            call = r["json"]["messages"]["first"][1]["tool_calls"][0]["function"]
            assert call["arguments"] == json.dumps(trainer_run.TOOL_CALL_ARGUMENTS), call
