"""The whole-cell benchmark's breakdown: every second of the nox wall time lands in exactly one phase."""

from pytest_vllmcompat.bench.cell import breakdown


def test_phases_partition_the_wall_time_by_what_the_tests_do():
    result = {"duration": 100.0, "startup": {"server": [40.0]}, "counts": {"passed": 5}, "tests": [
        {"nodeid": "tests/compat/test_patches.py::test_logging_patch_keeps_the_users_level", "duration": 10.0},
        {"nodeid": "tests/compat/test_patch_tripwires.py::test_after_importing_the_backend_the_call_works[x]",
         "duration": 1.0},
        {"nodeid": "tests/compat/test_trainers.py::test_trainer_colocate_trains_and_the_engine_follows[grpo-plain]",
         "duration": 30.0},
        {"nodeid": "tests/compat/test_trainers.py::test_trainer_server_sends_its_settings[grpo-plain]", "duration": 20.0,
         "measured": {"trainer_child_seconds": 61.5}},
        {"nodeid": "tests/compat/test_sampling.py::test_same_request_seed_same_ids[server]", "duration": 4.0},
    ]}
    out = breakdown(result, wall=130.0)
    assert out["phases"] == {"before pytest": 30.0, "collection + rest": 35.0, "patch probes (fresh interpreters)": 11.0,
                             "colocate trainer runs (children)": 30.0, "server trainer runs (waiting on their child)": 20.0,
                             "other tests": 4.0}
    assert sum(out["phases"].values()) == 130.0
    assert out["startup"] == {"server": [40.0]} and out["pytest_seconds"] == 100.0
    assert out["background"] == {"server trainer child": 61.5}  # ran beside the tests: not in the 130 s
