"""One fresh interpreter for every check of the backend's import-time patches (test_patches.py,
test_patch_tripwires.py): the import order matters, so the pytest process (which has imported trl) cannot say.

The probe, in order:
  1. imports the patched vLLM modules and binds each patched name early (as `from vllm... import X` would);
  2. calls vLLM's originals: nothing has imported trl yet (recorded), so this is exactly a process that never
     imports the backend;
  3. `import trl` (applies the patches), then reads what each module attribute is now and where it is defined,
     calls the early binding and the module attribute again, and reads VLLM_LOGGING_LEVEL.
Why step 2 cannot change step 3: each call builds its own objects (a bar over range(3); a tokenizer freshly
loaded from the model directory) and leaves no module state behind; the patches are applied by `import trl`,
which step 2 never triggers. (Until this merge, steps 2 and 3 ran in two interpreters and the default-environment
and logging checks in two more, about 17 s each on these CPUs.)

The logging check needs its own process (VLLM_LOGGING_LEVEL set by the user before import): it runs the same
probe with that variable, at the same time as the default one.
"""

import textwrap
from concurrent.futures import ThreadPoolExecutor

from pytest_vllmcompat.testing import probe

PROBE = textwrap.dedent(
    """
    import importlib, json, os, sys
    MODEL = sys.argv[1]

    def outcome(fn):
        if fn is None:  # this vLLM no longer has the patched name at all
            return {"ok": None, "absent": True}
        try:
            fn()
            return {"ok": True}
        except Exception as exc:
            return {"ok": False, "type": type(exc).__name__, "message": str(exc)}

    def call_tqdm(cls):
        if cls is None:
            return None
        def run():
            bar = cls(range(3), disable=True)
            assert bar.disable is True, "DisabledTqdm must be disabled"
        return run

    def call_tokenizer(fn):
        if fn is None:
            return None
        def run():
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(MODEL)
            cached = fn(tok)
            assert cached.encode("hello world") == tok.encode("hello world")
            assert list(cached.all_special_ids) == list(tok.all_special_ids)
        return run

    def module(name):  # a later vLLM may have moved or dropped the module: then the patched name is absent too
        try:
            return importlib.import_module(name)
        except ImportError:
            return None

    CALLS = {"DisabledTqdm": ("vllm.model_executor.model_loader.weight_utils", call_tqdm),
             "get_cached_tokenizer": ("vllm.transformers_utils.tokenizer", call_tokenizer)}
    modules = {name: module(mod) for name, (mod, _) in CALLS.items()}
    early = {name: getattr(modules[name], name, None) for name in CALLS}  # as `from ... import` would bind it
    out = {"original": {name: outcome(call(early[name])) for name, (_, call) in CALLS.items()}}
    out["original"]["trl_imported"] = "trl" in sys.modules
    import trl  # applies the backend's patches
    out["import_order"] = {}
    for name, (_, call) in CALLS.items():
        late = getattr(modules[name], name, None)
        out["import_order"][name] = {
            "module_attr_replaced": late is not early[name],
            "module_attr_defined_in": getattr(late, "__module__", None),
            "early": outcome(call(early[name])),
            "after_trl": outcome(call(late)),
        }
    out["VLLM_LOGGING_LEVEL"] = os.environ.get("VLLM_LOGGING_LEVEL")
    print(json.dumps(out))
    """
)

USER_LOGGING_LEVEL = "DEBUG"  # what the user set before importing the backend, in the second probe


def run_probes(model_dir) -> dict:
    """{"default": the probe's JSON in the session-start environment, "user_level": with VLLM_LOGGING_LEVEL set}."""
    with ThreadPoolExecutor(2) as pool:
        default = pool.submit(probe.run_probe, PROBE, str(model_dir))
        user_level = pool.submit(probe.run_probe, PROBE, str(model_dir),
                                 env={"VLLM_LOGGING_LEVEL": USER_LOGGING_LEVEL})
        return {"default": default.result(), "user_level": user_level.result()}
