"""Options, their precedence (CLI > env > ini > default), mode selection, known failures, compile caches."""

import pytest

from pytest_vllmcompat.process.compile_cache import COMPILE_CACHE_VARS, compile_cache_env

MODE_TESTS = """
import pytest

def test_each_mode(vllm_mode):
    pass

@pytest.mark.vllm_mode("server")
def test_server_only():
    pass

@pytest.mark.vllm_mode("colocate")
def test_colocate_only():
    pass

def test_mode_free():
    pass
"""

SHOW_SETTINGS = r"""
from pytest_vllmcompat.plugin import settings as config

def test_show(pytestconfig):
    print("\nMODE=" + config.resolve(pytestconfig, "vllm_mode"))
    print("TIMEOUT=" + repr(config.resolve(pytestconfig, "vllm_startup_timeout")))
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("VLLMCOMPAT_MODE", "VLLMCOMPAT_STARTUP_TIMEOUT", "VLLMCOMPAT_MODEL", "VLLMCOMPAT_LANE", "VLLMCOMPAT_MATRIX"):
        monkeypatch.delenv(name, raising=False)


def run_show(pytester, *args):
    pytester.makepyfile(test_show=SHOW_SETTINGS)
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider", *args)
    result.assert_outcomes(passed=1)
    return result


def test_help_lists_the_options_without_vllm_or_torch(pytester):
    result = pytester.runpytest_subprocess("--help")
    assert result.ret == 0
    for flag in ("--vllm-mode", "--vllm-model", "--vllm-startup-timeout", "--vllm-lane", "--vllm-target"):
        result.stdout.fnmatch_lines([f"*{flag}*"])


def test_plugin_import_pulls_in_nothing_heavy(pytester):
    pytester.makepyfile(
        """
        import sys
        def test_modules():
            heavy = [m for m in ("torch", "vllm", "transformers", "trl") if m in sys.modules]
            assert heavy == []
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_default_mode_is_all(pytester):
    run_show(pytester).stdout.fnmatch_lines(["MODE=all", "TIMEOUT=300.0"])


def test_ini_beats_default(pytester):
    pytester.makeini("[pytest]\nvllm_mode = server\nvllm_startup_timeout = 12\n")
    run_show(pytester).stdout.fnmatch_lines(["MODE=server", "TIMEOUT=12.0"])


def test_env_beats_ini(pytester, monkeypatch):
    pytester.makeini("[pytest]\nvllm_mode = server\n")
    monkeypatch.setenv("VLLMCOMPAT_MODE", "colocate")
    run_show(pytester).stdout.fnmatch_lines(["MODE=colocate"])


def test_cli_beats_env(pytester, monkeypatch):
    monkeypatch.setenv("VLLMCOMPAT_MODE", "colocate")
    run_show(pytester, "--vllm-mode=server").stdout.fnmatch_lines(["MODE=server"])


def test_invalid_cli_mode_lists_valid_modes(pytester):
    result = pytester.runpytest_subprocess("--vllm-mode=both")
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*invalid choice: 'both' (choose from *colocate*server*all*"])


@pytest.mark.parametrize("args, env, message", [
    ((), {"VLLMCOMPAT_MODE": "both"}, "*$VLLMCOMPAT_MODE: invalid value 'both' for vllm_mode; valid are colocate, server, all*"),
    (("--vllm-startup-timeout=-5",), {},
     "*--vllm-startup-timeout: vllm_startup_timeout must be a positive number of seconds, got '-5'*"),
    ((), {"VLLMCOMPAT_MODEL": "/nonexistent/model"}, "*$VLLMCOMPAT_MODEL=/nonexistent/model: no model there*"),
], ids=["env-mode", "non-positive-timeout", "model-from-env"])
def test_bad_setting_is_a_usage_error_naming_its_source(pytester, monkeypatch, args, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_non_numeric_timeout_is_refused(pytester):
    pytester.makeini("[pytest]\nvllm_startup_timeout = soon\n")
    result = pytester.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini vllm_startup_timeout: vllm_startup_timeout must be a float, got 'soon'*"])


def test_missing_model_path_says_so(pytester):
    result = pytester.runpytest_subprocess("--vllm-model", "/nonexistent/model")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--vllm-model /nonexistent/model: no model there (/nonexistent/model/config.json does not exist)*"])


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("all", {"test_each_mode[colocate]", "test_each_mode[server]", "test_server_only", "test_colocate_only", "test_mode_free"}),
        ("server", {"test_each_mode[server]", "test_server_only", "test_mode_free"}),
        ("colocate", {"test_each_mode[colocate]", "test_colocate_only", "test_mode_free"}),
    ],
)
def test_mode_selection(pytester, mode, expected):
    pytester.makepyfile(test_modes=MODE_TESTS)
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider", f"--vllm-mode={mode}")
    ran = {line.split("::")[1].split(" ")[0] for line in result.outlines if "::" in line and "PASSED" in line}
    assert ran == expected
    result.assert_outcomes(passed=len(expected), deselected=5 - len(expected))


def test_header_names_the_cell(pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--vllm-mode=server", "--vllm-lane=cpu")
    result.stdout.fnmatch_lines(["vllmcompat cell: * | lane cpu | target * | modes server", "vllmcompat versions: *torch*transformers*trl*"])


FIXTURE_MODE_TESTS = """
def test_uses_server(vllm_server):
    pass

def test_uses_client(server_client):
    pass

def test_uses_colocate(colocate_generator):
    pass

def test_uses_nothing():
    pass
"""


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("server", ["test_uses_nothing", "test_uses_server", "test_uses_client"]),  # run order: server users last
        ("colocate", ["test_uses_nothing", "test_uses_colocate"]),  # engine tests after the others
    ],
)
def test_mode_fixtures_bind_unmarked_tests_to_their_mode(pytester, mode, expected):
    pytester.makepyfile(test_fixture_modes=FIXTURE_MODE_TESTS)
    result = pytester.runpytest_subprocess("--co", "-q", "-p", "no:cacheprovider", f"--vllm-mode={mode}")
    assert [line.split("::")[1] for line in result.outlines if "::" in line] == expected


ORDER_TESTS = """
import pytest

@pytest.mark.breaks_session_server
@pytest.mark.vllm_mode("server")
def test_a_breaker():
    pass

def test_b_each_mode(vllm_mode):
    pass

@pytest.mark.vllm_mode("server")
def test_c_server():
    pass

def test_d_mode_free():
    pass

@pytest.mark.engine
def test_e_engine():
    pass
"""


def test_run_order_puts_server_users_after_the_others_and_the_breakers_last(pytester, monkeypatch):
    """Tests starting no engine run first (the session server's early start overlaps them), the server's users
    next, then the other engine tests, the tests that may break the server last; collection order within each."""
    monkeypatch.setenv("VLLMCOMPAT_PRESTART", "0")  # no server here: only the order is looked at
    pytester.makepyfile(test_order=ORDER_TESTS)
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider", "--vllm-mode=all")
    ran = [line.split("::")[1].split(" ")[0] for line in result.outlines if "::test_" in line and "PASSED" in line]
    assert ran == ["test_b_each_mode[colocate]", "test_d_mode_free", "test_b_each_mode[server]", "test_c_server",
                   "test_e_engine", "test_a_breaker"], result.outlines


def test_a_pinned_target_other_than_the_installed_release_is_refused():
    """`nox -R` reuses a cell env built for another target: the run must not record results under the wrong one."""
    from pytest_vllmcompat.plugin.context import target_mismatch

    refusal = target_mismatch("trl==0.29.1", "0.29.0")
    assert refusal is not None and refusal.startswith("target trl==0.29.1, but this environment has trl 0.29.0")
    assert "without -R" in refusal and "Nothing was run" in refusal
    assert target_mismatch("trl[peft]==0.29.1", None) is not None
    assert target_mismatch("trl==0.29.1", "0.29.1") is None
    assert target_mismatch("/path/to/trl-checkout", "1.17.0.dev0") is None  # a local checkout is not a pin


COMPILE_CACHE_CHILD = """
import os, subprocess, sys
from pytest_vllmcompat.process.childenv import child_env

def test_engines_and_children_get_the_compile_caches():
    code = "import os; print(os.environ['VLLM_CACHE_ROOT'], os.environ['TORCHINDUCTOR_CACHE_DIR'])"
    child = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, check=True)
    assert child.stdout.split() == [os.environ["VLLM_CACHE_ROOT"], os.environ["TORCHINDUCTOR_CACHE_DIR"]]
    print("IN-PROCESS", os.environ["VLLM_CACHE_ROOT"], os.environ["TORCHINDUCTOR_CACHE_DIR"])
"""


def test_compile_caches_go_under_the_cache_dir_for_the_run_and_its_children(pytester, tmp_path, monkeypatch):
    """The colocate engine (in-process) and every child (servers, probes, trainer runs) see the same compile caches
    under --vllm-cache-dir; the header says where."""
    for var in COMPILE_CACHE_VARS:
        monkeypatch.delenv(var, raising=False)
    pytester.makepyfile(COMPILE_CACHE_CHILD)
    cache = tmp_path / "cache"
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", f"--vllm-cache-dir={cache}")
    result.assert_outcomes(passed=1)
    vllm, inductor = cache / "compile" / "vllm", cache / "compile" / "torchinductor"
    result.stdout.fnmatch_lines([f"vllmcompat compile caches: VLLM_CACHE_ROOT={vllm}, TORCHINDUCTOR_CACHE_DIR={inductor}",
                                 f"*IN-PROCESS {vllm} {inductor}*"])


def test_a_compile_cache_the_user_set_wins(pytester, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    monkeypatch.delenv("VLLM_CACHE_ROOT", raising=False)
    pytester.makepyfile(COMPILE_CACHE_CHILD)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s", f"--vllm-cache-dir={tmp_path / 'c'}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*IN-PROCESS {tmp_path / 'c' / 'compile' / 'vllm'} {tmp_path / 'mine'}*"])
    assert compile_cache_env(tmp_path, {"VLLM_CACHE_ROOT": "/x"}) == {
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "compile" / "torchinductor")}
