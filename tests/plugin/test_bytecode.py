"""The bytecode install step compiles what a fresh interpreter would otherwise compile at every import."""

import subprocess
import venv

from pytest_vllmcompat.install import bytecode


def test_compiles_the_environments_sources_even_where_no_interpreter_writes_bytecode(tmp_path):
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    python = str(env / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    package = tmp_path.joinpath(purelib, "somepkg")
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 42\n")
    # The step runs with the cell's python: run the module's function in the venv's interpreter.
    call = f"import runpy; print(runpy.run_path({bytecode.__file__!r})['compile_environment']())"
    out = subprocess.run([python, "-c", call], capture_output=True, text=True, check=True,
                         env={"PYTHONDONTWRITEBYTECODE": "1"}).stdout
    assert out.startswith(f"vllmcompat bytecode: {purelib}") and " compiled in " in out, out
    assert list((package / "__pycache__").glob("__init__.*.pyc")), "no bytecode written"
